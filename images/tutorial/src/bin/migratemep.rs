//! The Popcorn tutorial's `migratemep`: `migrateme` with its loop in a second thread, which
//! is moved from outside (`popvmm migrate VM --thread TID --to NODE`) while the main thread
//! waits for it. The loop prints one line per iteration and says on stderr whenever its node
//! changes (`migratemep: on node N`); the main thread prints its own node before and after.
//!
//! Usage: `migratemep [ITERATIONS [SLEEP_MS]]` (defaults 30 and 1000).

use std::time::Duration;

fn main() {
    let iterations = tutorial::arg(1, 30);
    let sleep = Duration::from_millis(tutorial::arg(2, 1000));
    println!("main on node {}", pop::current_nid());
    let worker = std::thread::spawn(move || {
        let mut node = None;
        for i in 0..iterations {
            let here = pop::current_nid();
            if node != Some(here) {
                eprintln!("migratemep: on node {here}");
                node = Some(here);
            }
            println!("iteration {i}");
            std::thread::sleep(sleep);
        }
        pop::current_nid()
    });
    let last = worker.join().expect("the loop thread");
    println!("loop ended on node {last}");
    println!("main on node {}", pop::current_nid());
}
