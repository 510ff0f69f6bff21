//! Channels and locks, with results that do not depend on scheduling.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Condvar, Mutex, RwLock};
use std::thread;

/// Prints what channels, `Mutex`, `Condvar`, `RwLock` and `Barrier` compute.
pub fn tour() {
    channels();
    mutex_counter();
    condvar_handshake();
    rwlock_readers();
    barrier_leader();
}

fn channels() {
    let (tx, rx) = mpsc::channel();
    for id in 0..3u32 {
        let tx = tx.clone();
        thread::spawn(move || {
            for i in 0..3 {
                tx.send(id * 10 + i).unwrap();
            }
        });
    }
    drop(tx);
    let mut got: Vec<u32> = rx.iter().collect();
    got.sort();
    println!("mpsc: received {got:?}");

    let (tx, rx) = mpsc::sync_channel::<String>(0);
    let echo = thread::spawn(move || rx.iter().map(|s| s.len()).sum::<usize>());
    for word in ["rendez", "vous"] {
        tx.send(word.to_owned()).unwrap();
    }
    drop(tx);
    println!("mpsc: rendezvous bytes: {}", echo.join().unwrap());
}

fn mutex_counter() {
    let counter = Arc::new(Mutex::new(0u64));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let counter = Arc::clone(&counter);
            thread::spawn(move || {
                for _ in 0..1000 {
                    *counter.lock().unwrap() += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    println!("mutex: counter = {}", *counter.lock().unwrap());
}

fn condvar_handshake() {
    let pair = Arc::new((Mutex::new(0u32), Condvar::new()));
    let worker = {
        let pair = Arc::clone(&pair);
        thread::spawn(move || {
            let (lock, cvar) = &*pair;
            for _ in 0..5 {
                let mut turn = cvar
                    .wait_while(lock.lock().unwrap(), |t| *t % 2 == 0)
                    .unwrap();
                *turn += 1;
                cvar.notify_all();
            }
        })
    };
    let (lock, cvar) = &*pair;
    for _ in 0..5 {
        let mut turn = cvar
            .wait_while(lock.lock().unwrap(), |t| *t % 2 == 1)
            .unwrap();
        *turn += 1;
        cvar.notify_all();
    }
    worker.join().unwrap();
    println!("condvar: turns taken = {}", *lock.lock().unwrap());
}

fn rwlock_readers() {
    let table = Arc::new(RwLock::new(vec![1u32, 2, 3]));
    table.write().unwrap().push(4);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let table = Arc::clone(&table);
            thread::spawn(move || table.read().unwrap().iter().sum::<u32>())
        })
        .collect();
    let sums: Vec<u32> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    println!("rwlock: reader sums = {sums:?}");
}

fn barrier_leader() {
    let barrier = Arc::new(Barrier::new(4));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || barrier.wait().is_leader())
        })
        .collect();
    let leaders = workers.into_iter().map(|w| w.join().unwrap());
    println!("barrier: leaders = {}", leaders.filter(|&l| l).count());
}
