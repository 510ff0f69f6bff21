//! The Popcorn tutorial's `helloS`: `helloN` with a sleep between the migrations.
//!
//! Usage: `helloS [N [SLEEP_MS]]` (defaults 4 and 1000).
#![allow(non_snake_case)]

use std::time::{Duration, Instant};

fn main() {
    let count = tutorial::arg(1, 4);
    let sleep = Duration::from_millis(tutorial::arg(2, 1000));
    let home = pop::current_nid();
    let other = tutorial::other_node_or_exit();
    println!("hello, world (node {})", pop::current_nid());
    for i in 0..count {
        let before = Instant::now();
        std::thread::sleep(sleep);
        if before.elapsed() < sleep {
            eprintln!("slept less than asked");
            std::process::exit(4);
        }
        tutorial::migrate_or_exit(if i % 2 == 0 { other } else { home });
        println!("hello, world (node {})", pop::current_nid());
    }
}
