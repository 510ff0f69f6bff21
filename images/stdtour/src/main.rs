//! A deterministic tour of the Rust standard library, for differential tests: the output is
//! the same natively on Linux and under popvmm (no paths, pids, times or addresses).
//!
//! It demonstrates that an unmodified std program works on the libos: collections, float
//! math and formatting, threads, channels, locks, time, environment and files.
//!
//! Usage: `stdtour [DIR]`. With `DIR`, the file tour works in a new directory inside it;
//! without, it prints `files: skipped`. The variable `POP_TOUR` is echoed if set.

mod collections;
mod files;
mod numbers;
mod sync;
mod threads;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    collections::tour();
    numbers::tour();
    threads::tour();
    sync::tour();
    time_tour();
    env_tour();
    match std::env::args_os().nth(1) {
        Some(dir) => files::tour(std::path::Path::new(&dir)),
        None => println!("files: skipped"),
    }
    println!("tour done");
}

/// Monotonic and wall-clock time.
fn time_tour() {
    let nap = Duration::from_millis(20);
    let start = Instant::now();
    std::thread::sleep(nap);
    println!("time: slept at least 20ms: {}", start.elapsed() >= nap);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // 2020-01-01T00:00:00Z
    println!("time: now after 2020: {}", now.as_secs() >= 1_577_836_800);
}

/// Arguments and environment variables.
fn env_tour() {
    let args: Vec<String> = std::env::args().collect();
    println!("env: args: {}", args.len());
    println!(
        "env: argv[0] is set: {}",
        args.first().is_some_and(|a| !a.is_empty())
    );
    match std::env::var("POP_TOUR") {
        Ok(value) => println!("env: POP_TOUR={value}"),
        Err(e) => println!("env: POP_TOUR: {e}"),
    }
}
