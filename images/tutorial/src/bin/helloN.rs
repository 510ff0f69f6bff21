//! The Popcorn tutorial's `helloN`: moves back and forth between its node and the other one
//! `N` times (default 4: nodes 0 1 0 1 0 when launched on node 0), saying hello on each.
//!
//! Usage: `helloN [N]`.
#![allow(non_snake_case)]

fn main() {
    let count = tutorial::arg(1, 4);
    let home = pop::current_nid();
    let other = tutorial::other_node_or_exit();
    println!("hello, world (node {})", pop::current_nid());
    for i in 0..count {
        tutorial::migrate_or_exit(if i % 2 == 0 { other } else { home });
        println!("hello, world (node {})", pop::current_nid());
    }
}
