//! The Popcorn tutorial's `migrateme`: a loop of `ITERATIONS` iterations that prints one line
//! and sleeps `SLEEP_MS` per iteration, meant to be migrated from outside while it runs.
//!
//! With `WRITE_MIB` > 0 a second thread keeps rewriting a buffer of that size, and checks
//! before every pass that the previous pass is intact word for word (a lost or stale page
//! after a migration makes it exit with status 3). At the end it prints how long the loop
//! took by the monotonic clock, and checks that the clock never went backwards.
//!
//! Usage: `migrateme [ITERATIONS [SLEEP_MS [WRITE_MIB [STATUS]]]]` (defaults 30, 1000, 0, 0):
//! it exits with `STATUS` when all went well.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .map(|a| a.parse().unwrap_or_else(|_| {
            eprintln!("migrateme: bad argument {a:?}");
            std::process::exit(2)
        }))
        .unwrap_or(default)
}

/// Rewrites `words` words pass after pass, checking the previous pass each time.
fn writer(words: usize, stop: Arc<AtomicBool>, passes: Arc<AtomicU64>) -> bool {
    let mut buf = vec![0u64; words];
    let pattern = |pass: u64, i: usize| pass.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64;
    let mut pass = 0;
    while !stop.load(Ordering::Relaxed) {
        for (i, w) in buf.iter_mut().enumerate() {
            if *w != if pass == 0 { 0 } else { pattern(pass, i) } {
                eprintln!("migrateme: word {i} of pass {pass} is wrong");
                return false;
            }
            *w = pattern(pass + 1, i);
        }
        pass += 1;
        passes.store(pass, Ordering::Relaxed);
    }
    true
}

fn main() {
    let iterations = arg(1, 30);
    let sleep_ms = arg(2, 1000);
    let write_mib = arg(3, 0);
    let status = arg(4, 0) as i32;
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let worker = (write_mib > 0).then(|| {
        let (stop, passes) = (stop.clone(), passes.clone());
        thread::spawn(move || writer((write_mib << 20) as usize / 8, stop, passes))
    });
    let start = Instant::now();
    let mut last = start;
    for i in 0..iterations {
        println!("iteration {i}");
        thread::sleep(Duration::from_millis(sleep_ms));
        let now = Instant::now();
        if now < last {
            eprintln!("migrateme: the monotonic clock went backwards");
            std::process::exit(4);
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(worker) = worker {
        if !worker.join().unwrap_or(false) {
            std::process::exit(3);
        }
        println!("writer ok after {} passes", passes.load(Ordering::Relaxed));
    }
    let floor = Duration::from_millis(iterations * sleep_ms);
    if start.elapsed() < floor {
        eprintln!("migrateme: the loop took less than its sleeps");
        std::process::exit(4);
    }
    println!("done");
    std::process::exit(status);
}
