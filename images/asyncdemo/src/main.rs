//! Async tasks on pop's executor that hold what application state is made of (`Vec`,
//! `String`, `BTreeMap`, `Box<dyn Trait>`, `Arc<Mutex<_>>`, a channel) across migration
//! points, computing something whose result says whether any of it went wrong. It prints the
//! same lines wherever it runs and however often it is moved: the cross-ISA demo.
//!
//! `asyncdemo [TASKS] [ROUNDS] [points|nopoints]` (default 4 tasks, 2000 rounds, a
//! migration point each round; `nopoints` leaves them out, to measure what they cost). With
//! `POP_DEMO_TIME` set it also prints `compute_ns N` (the run's time) on stderr.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Something with a vtable.
trait Shape: Send {
    /// An integer "area", so that sums are exact.
    fn area(&self) -> u64;
    /// What it is.
    fn name(&self) -> String;
}

struct Square(u64);
struct Rect(u64, u64);

impl Shape for Square {
    fn area(&self) -> u64 {
        self.0 * self.0
    }
    fn name(&self) -> String {
        format!("square {}", self.0)
    }
}

impl Shape for Rect {
    fn area(&self) -> u64 {
        self.0 * self.1
    }
    fn name(&self) -> String {
        format!("rect {}x{}", self.0, self.1)
    }
}

/// A step of deterministic work (xorshift).
fn step(x: u64) -> u64 {
    let mut x = x ^ (x << 13);
    x ^= x >> 7;
    x ^ (x << 17)
}

/// One task: `rounds` rounds of work over its own shapes, a migration point each round.
async fn worker(
    id: u64,
    rounds: u64,
    table: Arc<Mutex<BTreeMap<u64, String>>>,
    tx: mpsc::Sender<(u64, u64)>,
    points: bool,
) -> u64 {
    let mut shapes: Vec<Box<dyn Shape>> = Vec::new();
    let mut log = String::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15 ^ id;
    let mut sum = 0u64;
    for round in 0..rounds {
        seed = step(seed);
        let side = seed % 17 + 1;
        if round % 2 == 0 {
            shapes.push(Box::new(Square(side)));
        } else {
            shapes.push(Box::new(Rect(side, id + 1)));
        }
        if shapes.len() > 64 {
            let gone = shapes.remove(0);
            let _ = write!(log, "{};", gone.name().len());
        }
        sum = sum.wrapping_add(shapes.iter().map(|s| s.area()).sum::<u64>());
        if round % 97 == 0 {
            table.lock().unwrap().insert(
                id * 1_000_000 + round,
                format!("task {id} round {round}: {sum}"),
            );
        }
        if points {
            pop::migration_point().await;
        }
    }
    let digest = log.bytes().fold(0u64, |h, b| step(h ^ u64::from(b)));
    tx.send((id, digest)).unwrap();
    sum
}

fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let points = args.next().is_none_or(|a| a != "nopoints");
    let timed = std::env::var_os("POP_DEMO_TIME").is_some();
    pop::run(async move {
        let start = std::time::Instant::now();
        let table = Arc::new(Mutex::new(BTreeMap::new()));
        let (tx, rx) = mpsc::channel();
        let handles: Vec<_> = (0..tasks)
            .map(|id| pop::spawn(worker(id, rounds, Arc::clone(&table), tx.clone(), points)))
            .collect();
        drop(tx);
        let mut total = 0u64;
        for (id, h) in handles.into_iter().enumerate() {
            let sum = h.await;
            println!("task {id}: sum {sum}");
            total = total.wrapping_add(sum);
        }
        let mut digests: Vec<(u64, u64)> = rx.try_iter().collect();
        digests.sort();
        for (id, d) in &digests {
            println!("task {id}: log digest {d:016x}");
        }
        let table = table.lock().unwrap();
        let last = table.values().last().cloned().unwrap_or_default();
        println!("table: {} entries, last {last}", table.len());
        println!("total {total}");
        if timed {
            eprintln!("compute_ns {}", start.elapsed().as_nanos());
        }
        0
    })
}
