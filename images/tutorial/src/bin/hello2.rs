//! The Popcorn tutorial's `hello2`: says hello on its node, moves to the other node, and says
//! hello there.

fn main() {
    println!("hello, world (node {})", pop::current_nid());
    tutorial::migrate_or_exit(tutorial::other_node_or_exit());
    println!("hello, world (node {})", pop::current_nid());
}
