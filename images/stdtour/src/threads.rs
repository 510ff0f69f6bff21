//! Threads: spawn and join, and scoped threads.

use std::thread;

/// Spawns threads that return values, and scoped threads borrowing local data.
pub fn tour() {
    let handles: Vec<_> = (1..=4u64)
        .map(|i| thread::spawn(move || (1..=i * 1000).sum::<u64>()))
        .collect();
    let sums: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    println!("threads: spawned sums: {sums:?}");

    let named = thread::Builder::new()
        .name("tour-worker".into())
        .spawn(|| thread::current().name().map(str::to_owned))
        .unwrap();
    println!("threads: name: {:?}", named.join().unwrap());

    let data: Vec<u32> = (1..=100).collect();
    let partial: Vec<u32> = thread::scope(|s| {
        let workers: Vec<_> = data
            .chunks(25)
            .map(|chunk| s.spawn(move || chunk.iter().sum::<u32>()))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    println!("threads: scoped chunk sums: {partial:?}");

    let result = thread::spawn(|| -> Result<u8, String> { Err("nope".into()) }).join();
    println!("threads: result passed back: {result:?}");
}
