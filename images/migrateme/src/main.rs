//! The Popcorn tutorial's `migrateme`: a loop of `ITERATIONS` iterations that prints one line
//! and sleeps `SLEEP_MS` per iteration, meant to be migrated from outside while it runs.
//!
//! With `WRITE_MIB` > 0 a second thread keeps rewriting a buffer of that size, and checks
//! before every pass that the previous pass is intact word for word (a lost or stale page
//! after a migration makes it exit with status 3). At the end it prints how long the loop
//! took by the monotonic clock, and checks that the clock never went backwards.
//!
//! With `FILL_MIB` > 0 it fills a buffer of that size once before the loop (memory an idle
//! guest holds) and checks it at the end.
//!
//! With `MIGRATEME_LOG=PATH` in its environment (a file in a mounted directory) it keeps the
//! file open and appends each iteration's line to it, wherever the VM runs; at the end it
//! reads the file back through a new descriptor, finds it in its directory's listing, and
//! prints `log ok: N lines`.
//!
//! Whenever the node it runs on changes (`pop::current_nid()`), it says so on stderr
//! (`migrateme: on node N`).
//!
//! Usage: `migrateme [ITERATIONS [SLEEP_MS [WRITE_MIB [STATUS [FILL_MIB]]]]]` (defaults 30,
//! 1000, 0, 0, 0): it exits with `STATUS` when all went well.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("migrateme: bad argument {a:?}");
                std::process::exit(2)
            })
        })
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

fn fail(why: &str) -> ! {
    eprintln!("migrateme: {why}");
    std::process::exit(3)
}

/// Reads the log back and finds it in its directory.
fn check_log(path: &str, iterations: u64) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    let expected: String = (0..iterations)
        .map(|i| format!("iteration {i}\n"))
        .collect();
    if !text.ends_with(&expected) {
        fail("the log misses lines");
    }
    let path = std::path::Path::new(path);
    let listed = std::fs::read_dir(path.parent().unwrap_or(path))
        .unwrap_or_else(|e| fail(&format!("listing: {e}")))
        .any(|e| e.is_ok_and(|e| Some(e.file_name().as_os_str()) == path.file_name()));
    if !listed {
        fail("the log is not in its directory's listing");
    }
    println!("log ok: {} lines", text.lines().count());
}

fn main() {
    let iterations = arg(1, 30);
    let sleep_ms = arg(2, 1000);
    let write_mib = arg(3, 0);
    let status = arg(4, 0) as i32;
    let fill_mib = arg(5, 0);
    let fill = |i: usize| (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let held: Vec<u64> = (0..(fill_mib << 20) as usize / 8).map(fill).collect();
    let log_path = std::env::var("MIGRATEME_LOG").ok();
    let mut log = log_path.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap_or_else(|e| fail(&format!("cannot open {p}: {e}")))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let worker = (write_mib > 0).then(|| {
        let (stop, passes) = (stop.clone(), passes.clone());
        thread::spawn(move || writer((write_mib << 20) as usize / 8, stop, passes))
    });
    let start = Instant::now();
    let mut last = start;
    let mut node = None;
    for i in 0..iterations {
        let here = pop::current_nid();
        if node != Some(here) {
            eprintln!("migrateme: on node {here}");
            node = Some(here);
        }
        println!("iteration {i}");
        if let Some(log) = &mut log {
            writeln!(log, "iteration {i}").unwrap_or_else(|e| fail(&format!("log: {e}")));
        }
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
    if held.iter().enumerate().any(|(i, &w)| w != fill(i)) {
        fail("the filled buffer changed");
    }
    if let Some(path) = log_path {
        drop(log);
        check_log(&path, iterations);
    }
    println!("done");
    std::process::exit(status);
}
