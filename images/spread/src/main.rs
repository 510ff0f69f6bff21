//! std's synchronization with the threads spread over the cluster's nodes (thread `i` moves
//! itself to the `i`-th up node of the caller's ISA, round-robin, before it starts): what
//! every check prints is what it prints on one node.
//!
//! * `mutex THREADS EACH`: a `Mutex<u64>` incremented `EACH` times by each thread;
//! * `atomic THREADS EACH`: an `AtomicU64` the same way, with `fetch_add`;
//! * `condvar ROUNDS`: two threads on two nodes hand a turn back and forth (`Condvar`);
//! * `channel COUNT`: a thread on another node sends `COUNT` numbers over `mpsc`;
//! * `barrier THREADS ROUNDS`: threads on every node meet at a `Barrier` each round;
//! * `bounce MOVES WRITERS`: a thread moves there and back `MOVES` times while `WRITERS`
//!   threads (spread) write their own words of a shared buffer; then every word is checked;
//! * `dead NODE`: tries to move to `NODE` (down): prints the error and goes on;
//! * `timing N`: moves there and back `N` times, timing each round trip and each way (for
//!   the benchmarks: `moves: N p50 X us p99 Y us max Z us (there: ...; back: ...)`);
//! * `fp MOVES`: a thread sets its rounding mode (x86-64: MXCSR toward zero) and moves
//!   there and back `MOVES` times with floating-point values and vectors live across each
//!   move; the rounding mode and every value must come out as without moves, and the
//!   monotonic clock must never go back across a move
//!   (`fp: MOVES moves, rounding kept, the clock never went back`);
//! * `falseshare MS`: two threads on two nodes increment two counters in one page for `MS`
//!   milliseconds (`falseshare: A and B increments`);
//! * `scan MIB`: the main thread fills `MIB` MiB, moves to the other node and reads it all,
//!   checking every word (`scan: MIB MiB read on node N in S s`), changes every 97th word,
//!   and moves back to check every word again;
//! * `spawn`: the main thread moves to the other node and starts a thread there, which
//!   reports its node, then joins it;
//! * `wait MS`: a second thread (tid 2) waits on a `Condvar` until the main thread, after
//!   `MS` milliseconds, notifies it; it then reports its node (a test moves it meanwhile);
//! * `tmp`: a thread on the other node writes a file in `std::env::temp_dir()`, the main
//!   thread on node 0 reads it back and removes it (the VM's own `/tmp`, kept at its home).
//! * `files DIR`: a thread on the other node opens `DIR/in.txt` and hands the file to the
//!   main thread, which reads it, then creates `DIR/out.txt` and hands it over to be written
//!   and closed there (one descriptor table for the whole VM);
//! * `vmmshare ROUNDS DIR`: a thread on node 0 increments a counter while the main thread,
//!   on the other node, reads `DIR/in.txt` `ROUNDS` times into a buffer in the counter's
//!   page and appends it to `DIR/out.txt`: the VMM's own writes and reads of guest memory
//!   (a file read's data, a file write's) share a page with another node's writes; every
//!   read is checked, and no increment may be lost.
//!
//! Each prints its result and `ok`, or a reason and exits 1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, mpsc};
use std::thread;
use std::time::Instant;

fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("spread: bad argument {a:?}");
                std::process::exit(2)
            })
        })
        .unwrap_or(default)
}

fn fail(why: &str) -> ! {
    eprintln!("spread: {why}");
    std::process::exit(1)
}

/// The nodes a thread can move to (up, the caller's ISA), the caller's first.
fn nodes() -> Vec<u32> {
    pop::movable_nodes().collect()
}

/// Moves the calling thread (number `i`) to its node, round-robin over `nodes`.
fn place(i: u64, nodes: &[u32]) {
    let to = nodes[i as usize % nodes.len()];
    if let Err(e) = pop::migrate(to) {
        fail(&format!("thread {i} cannot move to node {to}: {e}"));
    }
}

/// Starts `count` threads; thread `i` moves to its node ([`place`]) before it runs
/// `work(i)`.
fn spread_threads<T: Send + 'static>(
    count: u64,
    nodes: &[u32],
    work: impl Fn(u64) -> T + Send + Sync + 'static,
) -> Vec<thread::JoinHandle<T>> {
    let work = Arc::new(work);
    (0..count)
        .map(|i| {
            let (work, nodes) = (work.clone(), nodes.to_vec());
            thread::spawn(move || {
                place(i, &nodes);
                work(i)
            })
        })
        .collect()
}

/// Joins threads that return their node; how many nodes they ran on.
fn nodes_ran(handles: Vec<thread::JoinHandle<u32>>) -> usize {
    let mut ran: Vec<u32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    ran.sort_unstable();
    ran.dedup();
    ran.len()
}

fn mutex(threads: u64, each: u64) {
    let nodes = nodes();
    let counter = Arc::new(Mutex::new(0u64));
    let shared = counter.clone();
    let handles = spread_threads(threads, &nodes, move |_| {
        for _ in 0..each {
            *shared.lock().unwrap() += 1;
        }
        pop::current_nid()
    });
    let ran = nodes_ran(handles);
    println!("mutex: {} on {ran} nodes", *counter.lock().unwrap());
}

fn atomic(threads: u64, each: u64) {
    let nodes = nodes();
    let counter = Arc::new(AtomicU64::new(0));
    let shared = counter.clone();
    let handles = spread_threads(threads, &nodes, move |_| {
        for _ in 0..each {
            shared.fetch_add(1, Ordering::SeqCst);
        }
    });
    for h in handles {
        h.join().unwrap();
    }
    println!("atomic: {}", counter.load(Ordering::SeqCst));
}

fn condvar(rounds: u64) {
    let nodes = nodes();
    // The turn: even for the main thread, odd for the other.
    let turn = Arc::new((Mutex::new(0u64), Condvar::new()));
    let other = {
        let (turn, nodes) = (turn.clone(), nodes.clone());
        thread::spawn(move || {
            place(1, &nodes);
            let (m, cv) = &*turn;
            for r in 0..rounds {
                let mut t = cv
                    .wait_while(m.lock().unwrap(), |t| *t != 2 * r + 1)
                    .unwrap();
                *t += 1;
                cv.notify_all();
            }
            pop::current_nid()
        })
    };
    let (m, cv) = &*turn;
    for r in 0..rounds {
        let mut t = cv.wait_while(m.lock().unwrap(), |t| *t != 2 * r).unwrap();
        *t += 1;
        cv.notify_all();
    }
    let there = other.join().unwrap();
    let done = *cv
        .wait_while(m.lock().unwrap(), |t| *t != 2 * rounds)
        .unwrap();
    println!(
        "condvar: {done} turns, main on node {}, the other on node {there}",
        pop::current_nid()
    );
}

fn channel(count: u64) {
    let nodes = nodes();
    let (tx, rx) = mpsc::channel();
    let sender = thread::spawn(move || {
        place(1, &nodes);
        for i in 0..count {
            tx.send(i).unwrap();
        }
        pop::current_nid()
    });
    let mut expected = 0;
    for v in rx {
        if v != expected {
            fail(&format!("channel: got {v}, expected {expected}"));
        }
        expected += 1;
    }
    let there = sender.join().unwrap();
    println!("channel: {expected} in order, sent from node {there}");
}

fn barrier(threads: u64, rounds: u64) {
    let nodes = nodes();
    let barrier = Arc::new(Barrier::new(threads as usize));
    let arrived = Arc::new(AtomicU64::new(0));
    let handles = spread_threads(threads, &nodes, move |_| {
        for r in 0..rounds {
            arrived.fetch_add(1, Ordering::SeqCst);
            barrier.wait();
            // Everybody arrived for this round before anybody goes on.
            if arrived.load(Ordering::SeqCst) < (r + 1) * threads {
                fail("a thread passed the barrier early");
            }
            barrier.wait();
        }
        pop::current_nid()
    });
    let ran = nodes_ran(handles);
    println!("barrier: {rounds} rounds of {threads} threads on {ran} nodes");
}

fn bounce(moves: u64, writers: u64) {
    const WORDS: usize = 4096;
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("bounce needs two nodes");
    }
    let buf: Arc<Vec<AtomicU64>> = Arc::new(
        (0..WORDS * writers as usize)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (shared, stopped) = (buf.clone(), stop.clone());
    let handles = spread_threads(writers, &nodes, move |w| {
        let mine = &shared[w as usize * WORDS..(w as usize + 1) * WORDS];
        let mut pass = 0u64;
        while !stopped.load(Ordering::Relaxed) {
            pass += 1;
            for (i, word) in mine.iter().enumerate() {
                word.store(pass * 1_000_000 + i as u64, Ordering::Relaxed);
            }
        }
        pass
    });
    let (home, other) = (nodes[0], nodes[1]);
    for m in 0..moves {
        let to = if m % 2 == 0 { other } else { home };
        if let Err(e) = pop::migrate(to) {
            fail(&format!("move {m} to node {to}: {e}"));
        }
        if pop::current_nid() != to {
            fail(&format!(
                "move {m}: on node {} instead of {to}",
                pop::current_nid()
            ));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let passes: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (w, &pass) in passes.iter().enumerate() {
        for i in 0..WORDS {
            let v = buf[w * WORDS + i].load(Ordering::Relaxed);
            if v != pass * 1_000_000 + i as u64 {
                fail(&format!("writer {w}, word {i}: {v}, last pass {pass}"));
            }
        }
    }
    println!(
        "bounce: {moves} moves, ended on node {}, every word intact",
        pop::current_nid()
    );
}

fn spawn_there() {
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("spawn needs two nodes");
    }
    tutorial_move(nodes[1]);
    let child = thread::spawn(pop::current_nid).join().unwrap();
    println!(
        "spawn: main on node {}, its new thread started on node {child}",
        pop::current_nid()
    );
}

/// Files handed between threads on two nodes (one descriptor table for the VM): a thread
/// on the other node opens `DIR/in.txt` and hands it to the main thread, which reads it; the
/// main thread then opens `DIR/out.txt` and hands it over, and the other thread writes it
/// and closes it there.
fn files(dir: &str) {
    use std::io::{Read, Write};
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("files needs two nodes");
    }
    let (to_main, from_there) = mpsc::channel::<std::fs::File>();
    let (to_there, from_main) = mpsc::channel::<std::fs::File>();
    let (there, d) = (nodes[1], dir.to_string());
    let worker = thread::spawn(move || {
        place(1, &[nodes[0], there]);
        let opened = std::fs::File::open(format!("{d}/in.txt"))
            .unwrap_or_else(|e| fail(&format!("open on node {there}: {e}")));
        to_main.send(opened).unwrap();
        let mut out = from_main.recv().unwrap();
        writeln!(out, "written on node {}", pop::current_nid())
            .unwrap_or_else(|e| fail(&format!("write on node {there}: {e}")));
        // Closed here, on the other node.
        drop(out);
    });
    let mut text = String::new();
    from_there
        .recv()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap_or_else(|e| fail(&format!("read on node {}: {e}", pop::current_nid())));
    println!(
        "files: node {} read {:?}, opened on node {there}",
        pop::current_nid(),
        text.trim_end()
    );
    let out = std::fs::File::create(format!("{dir}/out.txt"))
        .unwrap_or_else(|e| fail(&format!("create: {e}")));
    to_there.send(out).unwrap();
    worker.join().unwrap();
    let written = std::fs::read_to_string(format!("{dir}/out.txt"))
        .unwrap_or_else(|e| fail(&format!("read back: {e}")));
    println!("files: out.txt holds {:?}", written.trim_end());
}

fn tmp() {
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("tmp needs two nodes");
    }
    let file = std::env::temp_dir().join("made.txt");
    let (there, f) = (nodes[1], file.clone());
    thread::spawn(move || {
        place(1, &[nodes[0], there]);
        std::fs::write(&f, format!("written on node {}\n", pop::current_nid()))
            .unwrap_or_else(|e| fail(&format!("write on node {there}: {e}")));
    })
    .join()
    .unwrap();
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| fail(&format!("read: {e}")));
    println!(
        "tmp: node {} read {:?} from {}",
        pop::current_nid(),
        text.trim_end(),
        file.display()
    );
    std::fs::remove_file(&file).unwrap_or_else(|e| fail(&format!("remove: {e}")));
}

fn dead(node: u32) {
    match pop::migrate(node) {
        Ok(()) => fail(&format!("moved to node {node}, which should be down")),
        Err(e) => println!("dead: {e}; still on node {}", pop::current_nid()),
    }
}

fn wait(ms: u64) {
    let flag = Arc::new((Mutex::new(false), Condvar::new()));
    let waiter = {
        let flag = flag.clone();
        thread::spawn(move || {
            let (m, cv) = &*flag;
            drop(cv.wait_while(m.lock().unwrap(), |set| !*set).unwrap());
            pop::current_nid()
        })
    };
    thread::sleep(std::time::Duration::from_millis(ms));
    *flag.0.lock().unwrap() = true;
    flag.1.notify_all();
    println!("wait: woken on node {}", waiter.join().unwrap());
}

fn timing(n: u64) {
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("timing needs two nodes");
    }
    let (mut round, mut out, mut back) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let mut at = [Instant::now(); 3];
        for (leg, to) in [nodes[1], nodes[0]].into_iter().enumerate() {
            if let Err(e) = pop::migrate(to) {
                fail(&format!("move to node {to}: {e}"));
            }
            at[leg + 1] = Instant::now();
        }
        let us = |from: usize, to: usize| (at[to] - at[from]).as_secs_f64() * 1e6;
        round.push(us(0, 2));
        out.push(us(0, 1));
        back.push(us(1, 2));
    }
    let at = |us: &mut Vec<f64>, p: f64| {
        us.sort_by(f64::total_cmp);
        us[((us.len() - 1) as f64 * p).round() as usize]
    };
    println!(
        "moves: {n} p50 {:.1} us p99 {:.1} us max {:.1} us (there: p50 {:.1} p99 {:.1}; back: p50 {:.1} p99 {:.1})",
        at(&mut round, 0.5),
        at(&mut round, 0.99),
        at(&mut round, 1.0),
        at(&mut out, 0.5),
        at(&mut out, 0.99),
        at(&mut back, 0.5),
        at(&mut back, 0.99),
    );
}

/// Sets the calling thread's rounding mode to toward zero (x86-64; elsewhere nothing).
fn round_toward_zero() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr = 0u32;
        // SAFETY: stmxcsr/ldmxcsr read and write MXCSR through `csr`, a local; setting the
        // rounding-control bits (13-14) to toward zero changes nothing else.
        unsafe {
            std::arch::asm!("stmxcsr dword ptr [{0}]", in(reg) &raw mut csr, options(nostack));
            csr |= 0x6000;
            std::arch::asm!("ldmxcsr dword ptr [{0}]", in(reg) &raw const csr, options(nostack));
        }
    }
}

/// `1/10` in the thread's rounding mode: its last digit tells toward zero (`...9999`) from
/// to nearest (`...999a`).
fn one_tenth() -> u64 {
    (std::hint::black_box(1.0f64) / std::hint::black_box(10.0f64)).to_bits()
}

/// A step of the check's arithmetic, on values the compiler may keep in vector registers.
fn fp_step(acc: &mut [f64; 8], v: &mut [f32; 8], i: u64) {
    let x = f64::from_bits(one_tenth()) + i as f64;
    for (k, a) in acc.iter_mut().enumerate() {
        *a = (*a * 1.000_001 + x) / (k as f64 + 1.5);
    }
    for (k, w) in v.iter_mut().enumerate() {
        *w = w.mul_add(0.999, k as f32 / 7.0);
    }
}

fn fp(moves: u64) {
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("fp needs two nodes");
    }
    // The check without moves runs on a thread of its own, whose rounding mode it sets too.
    let here = nodes.clone();
    let still = thread::spawn(move || fp_run(moves, &here, false))
        .join()
        .unwrap();
    if fp_run(moves, &nodes, true) != still {
        fail("floating-point values changed across moves");
    }
    if pop::current_nid() != nodes[0] && moves.is_multiple_of(2) {
        fail("not back home");
    }
    println!("fp: {moves} moves, rounding kept, the clock never went back");
}

/// The arithmetic of [`fp`], moving between the first two of `nodes` if `moving`; the
/// results' bits.
fn fp_run(moves: u64, nodes: &[u32], moving: bool) -> ([u64; 8], [u32; 8]) {
    round_toward_zero();
    let (mut acc, mut v) = ([1.0f64; 8], [0.5f32; 8]);
    for i in 0..moves {
        fp_step(&mut acc, &mut v, i);
        if moving {
            let to = nodes[if i % 2 == 0 { 1 } else { 0 }];
            let before = Instant::now();
            if let Err(e) = pop::migrate(to) {
                fail(&format!("move to node {to}: {e}"));
            }
            if Instant::now().checked_duration_since(before).is_none() {
                fail(&format!("the clock went backwards at move {i}"));
            }
        }
        if cfg!(target_arch = "x86_64") && one_tenth() & 0xf != 0x9 {
            fail(&format!("the rounding mode was lost at move {i}"));
        }
        fp_step(&mut acc, &mut v, i);
    }
    (acc.map(f64::to_bits), v.map(f32::to_bits))
}

fn falseshare(ms: u64) {
    #[repr(align(64))]
    struct Counters([AtomicU64; 2]);
    let nodes = nodes();
    let counters = Arc::new(Counters([AtomicU64::new(0), AtomicU64::new(0)]));
    let stop = Arc::new(AtomicBool::new(false));
    let (shared, stopped) = (counters.clone(), stop.clone());
    let handles = spread_threads(2, &nodes, move |i| {
        while !stopped.load(Ordering::Relaxed) {
            shared.0[i as usize].fetch_add(1, Ordering::Relaxed);
        }
    });
    thread::sleep(std::time::Duration::from_millis(ms));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let [a, b] = [0, 1].map(|i| counters.0[i].load(Ordering::Relaxed));
    if a == 0 || b == 0 {
        fail(&format!("a thread made no progress: {a} and {b}"));
    }
    println!("falseshare: {a} and {b} increments in {ms} ms");
}

fn scan(mib: u64) {
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("scan needs two nodes");
    }
    let words = (mib << 20) as usize / 8;
    let t = Instant::now();
    let mut buf: Vec<u64> = (0..words as u64).collect();
    let wrote = t.elapsed().as_secs_f64();
    tutorial_move(nodes[1]);
    let t = Instant::now();
    let wrong = (0..words as u64).zip(&buf).filter(|(i, w)| i != *w).count();
    let secs = t.elapsed().as_secs_f64();
    if wrong != 0 {
        fail(&format!(
            "scan: {wrong} words read wrong on node {}",
            nodes[1]
        ));
    }
    println!(
        "scan: {mib} MiB read on node {} in {secs:.3} s (written on node {} in {wrote:.3} s)",
        pop::current_nid(),
        nodes[0]
    );
    // Every 97th word changed here, the rest as they came; back on node 0, every word is
    // what node 1 left.
    for w in buf.iter_mut().step_by(97) {
        *w = !*w;
    }
    tutorial_move(nodes[0]);
    let wrong = buf
        .iter()
        .enumerate()
        .filter(|&(i, &w)| w != if i % 97 == 0 { !(i as u64) } else { i as u64 })
        .count();
    if wrong != 0 {
        fail(&format!(
            "scan: {wrong} words wrong back on node {}",
            nodes[0]
        ));
    }
    println!(
        "scan: every word as node 1 left it, back on node {}",
        nodes[0]
    );
}

/// A counter and a buffer in one page of their own (`vmmshare`).
#[repr(C, align(4096))]
struct SharedPage {
    counter: AtomicU64,
    buf: std::cell::UnsafeCell<[u8; 256]>,
}

// SAFETY: only the main thread touches `buf`; `counter` is atomic.
unsafe impl Sync for SharedPage {}

/// See the module documentation (`vmmshare`).
fn vmmshare(rounds: u64, dir: &str) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let nodes = nodes();
    if nodes.len() < 2 {
        fail("vmmshare needs two nodes");
    }
    let page = Arc::new(SharedPage {
        counter: AtomicU64::new(0),
        buf: std::cell::UnsafeCell::new([0; 256]),
    });
    let stop = Arc::new(AtomicBool::new(false));
    // Started here, so it runs on node 0.
    let (p, halt) = (page.clone(), stop.clone());
    let counter = thread::spawn(move || {
        let mut n = 0u64;
        while !halt.load(Ordering::Relaxed) {
            p.counter.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        n
    });
    tutorial_move(nodes[1]);
    let open = |name: &str, create: bool| {
        let path = format!("{dir}/{name}");
        if create {
            std::fs::File::create(&path)
        } else {
            std::fs::File::open(&path)
        }
        .unwrap_or_else(|e| fail(&format!("{path}: {e}")))
    };
    let expected = std::fs::read(format!("{dir}/in.txt")).unwrap_or_else(|e| fail(&e.to_string()));
    if expected.is_empty() || expected.len() > 256 {
        fail("in.txt must hold 1 to 256 bytes");
    }
    let (mut input, mut output) = (open("in.txt", false), open("out.txt", true));
    for round in 0..rounds {
        // SAFETY: only this thread touches the buffer.
        let buf = unsafe { &mut *page.buf.get() };
        buf.fill(0);
        input.seek(SeekFrom::Start(0)).unwrap();
        let n = input.read(buf).unwrap_or_else(|e| fail(&e.to_string()));
        if buf[..n] != expected[..] {
            fail(&format!(
                "round {round}: read {:?}",
                String::from_utf8_lossy(&buf[..n])
            ));
        }
        output
            .write_all(&buf[..n])
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    drop(output);
    stop.store(true, Ordering::Relaxed);
    let done = counter.join().unwrap();
    let seen = page.counter.load(Ordering::Relaxed);
    if seen != done || done == 0 {
        fail(&format!("{done} increments made, {seen} seen"));
    }
    let written = std::fs::read(format!("{dir}/out.txt")).unwrap_or_else(|e| fail(&e.to_string()));
    if written != expected.repeat(rounds as usize) {
        fail("out.txt does not hold what was read");
    }
    println!(
        "vmmshare: {rounds} file reads into and writes from a page node {} writes, on node {}: every byte and every increment there",
        nodes[0],
        pop::current_nid()
    );
}

fn tutorial_move(to: u32) {
    if let Err(e) = pop::migrate(to) {
        fail(&format!("move to node {to}: {e}"));
    }
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    match what.as_str() {
        "mutex" => mutex(arg(2, 6), arg(3, 100_000)),
        "atomic" => atomic(arg(2, 6), arg(3, 100_000)),
        "condvar" => condvar(arg(2, 100)),
        "channel" => channel(arg(2, 1000)),
        "barrier" => barrier(arg(2, 6), arg(3, 20)),
        "bounce" => bounce(arg(2, 1000), arg(3, 2)),
        "dead" => dead(arg(2, 2) as u32),
        "wait" => wait(arg(2, 3000)),
        "spawn" => spawn_there(),
        "timing" => timing(arg(2, 1000)),
        "falseshare" => falseshare(arg(2, 1000)),
        "fp" => fp(arg(2, 200)),
        "scan" => scan(arg(2, 256)),
        "tmp" => tmp(),
        "files" => files(&std::env::args().nth(2).unwrap_or_else(|| "/data".into())),
        "vmmshare" => vmmshare(
            arg(2, 200),
            &std::env::args().nth(3).unwrap_or_else(|| "/data".into()),
        ),
        _ => fail(
            "usage: spread mutex|atomic|condvar|channel|barrier|bounce|dead|wait|spawn|timing|falseshare|scan|files|vmmshare [ARGS]",
        ),
    }
    println!("ok");
}
