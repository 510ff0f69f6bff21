//! net-msg against raw sockets, in one run, with the same payloads:
//! small-message round trips (64 bytes each way) and one-way 4 KiB page throughput,
//! over loopback TCP and Unix sockets, with and without per-frame tags.
//!
//! `cargo bench -p net-msg --bench messaging` prints a Markdown table.
//! `NET_MSG_BENCH_SCALE=0.1` shortens the run.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use net_msg::transport::Listener;
use net_msg::{Address, ClusterConfig, Incoming, Node, NodeOptions, Priority, Secret};

const SMALL: usize = 64;
const PAGE: usize = 4096;
const ECHO: u16 = 1;
const PAGE_MSG: u16 = 2;

fn scale() -> f64 {
    std::env::var("NET_MSG_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

#[derive(Clone, Copy, PartialEq)]
enum T {
    Tcp,
    Unix,
}

trait Duplex: Read + Write + Send + 'static {}
impl Duplex for TcpStream {}
impl Duplex for UnixStream {}

/// A connected pair of raw sockets.
fn raw_pair(t: T, dir: &std::path::Path) -> (Box<dyn Duplex>, Box<dyn Duplex>) {
    match t {
        T::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let s = l.accept().unwrap().0;
            c.set_nodelay(true).unwrap();
            s.set_nodelay(true).unwrap();
            (Box::new(c), Box::new(s))
        }
        T::Unix => {
            let p = dir.join("raw.sock");
            let _ = std::fs::remove_file(&p);
            let l = UnixListener::bind(&p).unwrap();
            let c = UnixStream::connect(&p).unwrap();
            let s = l.accept().unwrap().0;
            (Box::new(c), Box::new(s))
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Raw round trips: the server reads 64 bytes and writes them back. Median in µs.
fn raw_rtt(t: T, dir: &std::path::Path, iters: usize) -> f64 {
    let (mut c, mut s) = raw_pair(t, dir);
    let server = std::thread::spawn(move || {
        let mut b = [0u8; SMALL];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut b = [7u8; SMALL];
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + iters / 10 {
        let t0 = Instant::now();
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
        if i >= iters / 10 {
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(c);
    server.join().unwrap();
    median(&mut times)
}

/// Raw throughput: 4 KiB writes, the reader counts bytes. MB/s.
fn raw_throughput(t: T, dir: &std::path::Path, pages: usize) -> f64 {
    let (mut c, s) = raw_pair(t, dir);
    let (done_tx, done_rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(64 * 1024, s);
        let mut page = vec![0u8; PAGE];
        for _ in 0..pages {
            r.read_exact(&mut page).unwrap();
        }
        done_tx.send(Instant::now()).unwrap();
    });
    let page = vec![5u8; PAGE];
    let t0 = Instant::now();
    for _ in 0..pages {
        c.write_all(&page).unwrap();
    }
    let end = done_rx.recv().unwrap();
    server.join().unwrap();
    (pages * PAGE) as f64 / 1e6 / (end - t0).as_secs_f64()
}

/// Bytes per record or write in the bulk rows.
const BULK: usize = 2 << 20;

/// Raw bulk throughput: `total` bytes in 2 MiB writes into a 2 MiB buffer. MB/s.
fn raw_bulk(t: T, dir: &std::path::Path, total: usize) -> f64 {
    let (mut c, mut s) = raw_pair(t, dir);
    let server = std::thread::spawn(move || {
        let mut buf = vec![0u8; BULK];
        let mut n = 0;
        while n < total {
            n += s.read(&mut buf).unwrap();
        }
        s.write_all(b"k").unwrap();
    });
    let body = vec![5u8; BULK];
    let t0 = Instant::now();
    for _ in 0..total / BULK {
        c.write_all(&body).unwrap();
    }
    let mut ack = [0u8];
    c.read_exact(&mut ack).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    server.join().unwrap();
    total as f64 / 1e6 / secs
}

/// Bulk stream throughput: `total` bytes in 2 MiB records, then an empty record that the
/// peer answers once it read (and checked) everything. MB/s.
fn stream_bulk(p: &Pair, total: usize) -> f64 {
    let mut s = p.b.open_stream(0, 7).unwrap();
    let body = vec![5u8; BULK];
    let t0 = Instant::now();
    for _ in 0..total / BULK {
        s.send(&[1], &body).unwrap();
    }
    s.send(&[2], &[]).unwrap();
    let (head, _) = s.recv().unwrap().unwrap();
    assert_eq!(head, b"ok");
    total as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

/// A 2-node cluster: node 0 echoes requests and counts pages.
struct Pair {
    _a: Node,
    b: Node,
    pages: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

fn cluster(t: T, mac: bool) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("frame_mac = {mac}\n");
    let mut listeners = Vec::new();
    for id in 0..2 {
        let addr = match t {
            T::Tcp => Address::Tcp("127.0.0.1:0".parse().unwrap()),
            T::Unix => Address::Unix(dir.path().join(format!("n{id}.sock"))),
        };
        let l = Listener::bind(&addr).unwrap();
        text += &format!(
            "[[node]]\nid = {id}\naddress = \"{}\"\nisa = \"x86_64\"\n",
            l.local_address().unwrap()
        );
        listeners.push(l);
    }
    let config = ClusterConfig::parse(&text, dir.path()).unwrap();
    let secret = Secret::new(&b"benchmark secret 0123456789"[..]).unwrap();
    let pages = Arc::new(AtomicU64::new(0));
    let p = pages.clone();
    let handler = move |m: Incoming| {
        if m.msg_type == PAGE_MSG {
            p.fetch_add(1, Ordering::Release);
        } else {
            let payload = m.payload.clone();
            let _ = m.respond(&payload);
        }
    };
    let mut ls = listeners.into_iter();
    let a = Node::start_on(
        NodeOptions::with_secret(config.clone(), 0, secret.clone()).unwrap(),
        ls.next().unwrap(),
        handler,
    )
    .unwrap();
    let b = Node::start_on(
        NodeOptions::with_secret(config, 1, secret).unwrap(),
        ls.next().unwrap(),
        |_m: Incoming| {},
    )
    .unwrap();
    assert!(a.wait_all_up(Duration::from_secs(10)) && b.wait_all_up(Duration::from_secs(10)));
    // Bulk streams: read every record into one buffer; answer an empty one.
    a.serve_streams(|mut s| {
        let mut buf = vec![0u8; BULK];
        loop {
            let h = match s.recv_head() {
                Ok(Some(h)) => h,
                Ok(None) => return,
                Err(e) => panic!("bulk stream: {e}"),
            };
            if let Err(e) = s.recv_body(&mut [&mut buf[..h.body_len]]) {
                panic!("bulk stream: {e}");
            }
            if h.body_len == 0 {
                let _ = s.send(b"ok", &[]);
            }
        }
    });
    Pair {
        _a: a,
        b,
        pages,
        _dir: dir,
    }
}

fn msg_rtt(p: &Pair, iters: usize) -> f64 {
    let payload = [7u8; SMALL];
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + iters / 10 {
        let t0 = Instant::now();
        let r =
            p.b.request(0, ECHO, Priority::Page, &payload, Duration::from_secs(10))
                .unwrap();
        if i >= iters / 10 {
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        assert_eq!(r.len(), SMALL);
    }
    median(&mut times)
}

fn msg_throughput(p: &Pair, pages: usize) -> f64 {
    let page = vec![5u8; PAGE];
    let start = p.pages.load(Ordering::Acquire);
    let t0 = Instant::now();
    for _ in 0..pages {
        p.b.send(0, PAGE_MSG, Priority::Page, &page).unwrap();
    }
    while p.pages.load(Ordering::Acquire) < start + pages as u64 {
        std::thread::sleep(Duration::from_micros(50));
    }
    (pages * PAGE) as f64 / 1e6 / t0.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("NET_MSG_BENCH_TAGS").is_some() {
        tag_costs();
        return;
    }
    let s = scale();
    let iters = ((5000.0 * s) as usize).max(100);
    let pages = ((32768.0 * s) as usize).max(1000);
    let rounds = 5;
    let dir = tempfile::tempdir().unwrap();
    println!(
        "round trips: {iters} x {SMALL} B each way (median); throughput: {pages} x 4 KiB one-way (median of {rounds} runs)\n"
    );
    println!(
        "| transport | what | raw socket | net-msg, frame tags on | ratio | net-msg, tags off | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for t in [T::Tcp, T::Unix] {
        let name = if t == T::Tcp {
            "TCP (loopback)"
        } else {
            "Unix socket"
        };
        let on = cluster(t, true);
        let off = cluster(t, false);
        // Interleave the contenders so that machine noise hits them alike.
        let (mut r_raw, mut r_on, mut r_off) = (vec![], vec![], vec![]);
        let (mut g_raw, mut g_on, mut g_off) = (vec![], vec![], vec![]);
        let (mut b_raw, mut b_on, mut b_off) = (vec![], vec![], vec![]);
        let bulk = (pages * PAGE * 8).next_multiple_of(BULK);
        for _ in 0..rounds {
            b_raw.push(raw_bulk(t, dir.path(), bulk));
            b_on.push(stream_bulk(&on, bulk));
            b_off.push(stream_bulk(&off, bulk));
            r_raw.push(raw_rtt(t, dir.path(), iters / rounds));
            r_on.push(msg_rtt(&on, iters / rounds));
            r_off.push(msg_rtt(&off, iters / rounds));
            g_raw.push(raw_throughput(t, dir.path(), pages));
            g_on.push(msg_throughput(&on, pages));
            g_off.push(msg_throughput(&off, pages));
        }
        let (rr, ro, rf) = (median(&mut r_raw), median(&mut r_on), median(&mut r_off));
        println!(
            "| {name} | 64 B round trip | {rr:.1} µs | {ro:.1} µs | {:.2}x | {rf:.1} µs | {:.2}x |",
            ro / rr,
            rf / rr
        );
        let (gr, go, gf) = (median(&mut g_raw), median(&mut g_on), median(&mut g_off));
        println!(
            "| {name} | 4 KiB page throughput | {gr:.0} MB/s | {go:.0} MB/s | {:.0}% | {gf:.0} MB/s | {:.0}% |",
            go / gr * 100.0,
            gf / gr * 100.0
        );
        let (br, bo, bf) = (median(&mut b_raw), median(&mut b_on), median(&mut b_off));
        println!(
            "| {name} | bulk stream, 2 MiB records | {br:.0} MB/s | {bo:.0} MB/s | {:.0}% | {bf:.0} MB/s | {:.0}% |",
            bo / br * 100.0,
            bf / br * 100.0
        );
        drop(on);
        drop(off);
    }
}

/// Per-frame tag cost on a 4 KiB payload, for a few ways of feeding the hash.
fn tag_costs() {
    let key = [7u8; 32];
    let page = vec![3u8; PAGE];
    let hdr = [1u8; 24];
    let n = 20000;
    let time = |name: &str, f: &dyn Fn(u64) -> u8| {
        let t0 = Instant::now();
        let mut x = 0u8;
        for i in 0..n {
            x ^= f(i);
        }
        println!(
            "{name}: {:.2} us ({x})",
            t0.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    };
    {
        // The frame tag in use (AEGIS-128X2 MAC, sequence number as nonce).
        let mac = std::cell::RefCell::new(net_msg::frame::FrameMac::new(key));
        time("frame tag (AEGIS-128X2) payload|hdr", &|_| {
            mac.borrow_mut().tag(&hdr, &page)[0]
        });
    }
    time("blake3 seq|hdr|payload", &|i| {
        let mut h = blake3::Hasher::new_keyed(&key);
        h.update(&i.to_le_bytes());
        h.update(&hdr);
        h.update(&page);
        h.finalize().as_bytes()[0]
    });
    time("blake3 payload|hdr|seq", &|i| {
        let mut h = blake3::Hasher::new_keyed(&key);
        h.update(&page);
        h.update(&hdr);
        h.update(&i.to_le_bytes());
        h.finalize().as_bytes()[0]
    });
    time("blake3 one-shot payload", &|_| {
        blake3::keyed_hash(&key, &page).as_bytes()[0]
    });
    {
        use hmac::Mac;
        time("hmac-sha256 payload|hdr|seq", &|i| {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
            m.update(&page);
            m.update(&hdr);
            m.update(&i.to_le_bytes());
            m.finalize().into_bytes()[0]
        });
    }
    time("copy 4 KiB", &|i| {
        let mut v = Vec::with_capacity(PAGE);
        v.extend_from_slice(&page);
        v[(i % 4096) as usize]
    });
}
