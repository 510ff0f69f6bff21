//! Timing loops for benchmarks: CPU-bound threads, thread creation and wake-ups.

use std::hint::black_box;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

/// Loop iterations per thread of `spin` when not given.
pub const DEFAULT_SPIN_ITERS: u64 = 100_000_000;

/// Runs `threads` threads that each sum `iters` numbers; prints the total and the time.
pub fn spin(threads: u64, iters: u64) {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            thread::spawn(move || {
                let mut sum = 0u64;
                for i in 0..iters {
                    sum = sum.wrapping_add(black_box(i ^ t));
                }
                sum
            })
        })
        .collect();
    let total = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold(0u64, u64::wrapping_add);
    println!("spin: threads={threads} iters={iters} sum={total}");
    println!("spin_ns={}", start.elapsed().as_nanos());
}

/// Spawns and joins `n` empty threads one after the other; prints the mean time of one.
pub fn spawn_join(n: u64) {
    let start = Instant::now();
    for _ in 0..n {
        thread::spawn(|| black_box(())).join().unwrap();
    }
    println!(
        "spawn_join_ns={}",
        start.elapsed().as_nanos() / u128::from(n.max(1))
    );
}

/// Two threads pass a turn back and forth `n` times through a `Mutex` and a `Condvar`;
/// prints the mean time of one round trip.
pub fn pingpong(n: u64) {
    let state = Arc::new((Mutex::new(0u64), Condvar::new()));
    let partner = {
        let state = Arc::clone(&state);
        thread::spawn(move || {
            let (turn, cvar) = &*state;
            for round in 0..n {
                let mut t = cvar
                    .wait_while(turn.lock().unwrap(), |t| *t != 2 * round + 1)
                    .unwrap();
                *t += 1;
                cvar.notify_one();
            }
        })
    };
    let (turn, cvar) = &*state;
    let start = Instant::now();
    for round in 0..n {
        let mut t = turn.lock().unwrap();
        *t += 1;
        cvar.notify_one();
        let _t = cvar.wait_while(t, |t| *t != 2 * round + 2).unwrap();
    }
    let elapsed = start.elapsed();
    partner.join().unwrap();
    println!("pingpong_ns={}", elapsed.as_nanos() / u128::from(n.max(1)));
}
