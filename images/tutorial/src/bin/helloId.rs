//! The Popcorn tutorial's `helloId`: prints its process id, thread id and node before and
//! after moving to the other node (the ids do not change: it is the same thread).
#![allow(non_snake_case)]

fn report() {
    println!(
        "pid {} tid {:?} node {}",
        pop::process_id(),
        std::thread::current().id(),
        pop::current_nid()
    );
}

fn main() {
    report();
    tutorial::migrate_or_exit(tutorial::other_node_or_exit());
    report();
}
