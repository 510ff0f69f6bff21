//! The Popcorn tutorial's `hello`: prints which node of the cluster it runs on.
//!
//! It demonstrates the smallest use of the app-facing crate `pop`; natively it runs on
//! node 0.

fn main() {
    println!("hello, world (node {})", pop::current_nid());
}
