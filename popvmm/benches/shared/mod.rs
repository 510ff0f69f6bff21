//! What the benchmarks that run clusters share: free loopback ports, medians, numbers read
//! from programs' output, and the raw TCP copy that node-to-node transfers are measured
//! against.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

/// A loopback address with a port nothing listens on.
pub fn free_port() -> String {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// Seconds to copy `bytes` from one process's memory into another's over a fresh loopback
/// TCP connection: from a buffer of that size, touched beforehand (as a source's guest
/// memory), in 256 KiB writes, into a fresh buffer of that size (as a destination's new guest
/// memory, whose pages are first touched by the copy, with the same huge-page hint).
pub fn raw_tcp(bytes: u64, pin: bool) -> f64 {
    let bytes = bytes as usize;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        if pin {
            vmm::sys::run_on_cpus(&[1]).unwrap();
        }
        let mut memory = vec![0u8; bytes];
        // The same hint as an arriving VM's memory gets (transparent huge pages).
        let start = (memory.as_ptr() as u64).next_multiple_of(4096);
        let end = (memory.as_ptr() as u64 + bytes as u64) & !4095;
        vmm::sys::advise_huge_pages(start, end.saturating_sub(start));
        let (mut s, _) = l.accept().unwrap();
        let mut n = 0;
        while n < bytes {
            let k = s.read(&mut memory[n..(n + (1 << 20)).min(bytes)]).unwrap();
            assert!(k > 0);
            n += k;
        }
        s.write_all(&[memory[bytes - 1]]).unwrap();
    });
    let writer = std::thread::spawn(move || {
        if pin {
            vmm::sys::run_on_cpus(&[0]).unwrap();
        }
        let memory = vec![0x5au8; bytes];
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        for chunk in memory.chunks(256 << 10) {
            s.write_all(chunk).unwrap();
        }
        let mut ack = [0u8];
        s.read_exact(&mut ack).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(ack[0], 0x5a);
        secs
    });
    reader.join().unwrap();
    writer.join().unwrap()
}

/// The number in `text` right after `key` (a trailing comma dropped).
pub fn number_after(text: &str, key: &str) -> f64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key:?} in {text:?}"))
        + key.len();
    text[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches(',')
        .parse()
        .unwrap()
}

/// The median (of an even count: the mean of the middle two).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Seconds to copy `bytes` (a multiple of 2 MiB) from one net-msg node to another over a bulk
/// stream of theirs on loopback TCP (authenticated, as the mesh's frames are), in 2 MiB
/// records received straight into a fresh buffer of that size with the huge-page hint, as
/// [`raw_tcp`] does; the receiving node on CPU 1 and the sender on CPU 0 if `pin`.
pub fn bulk_stream(bytes: u64, pin: bool) -> f64 {
    use net_msg::transport::Listener;
    use net_msg::{Address, ClusterConfig, Incoming, Node, NodeOptions, Secret};
    const RECORD: usize = 2 << 20;
    let bytes = bytes as usize;
    let listeners: Vec<Listener> = (0..2)
        .map(|_| Listener::bind(&Address::Tcp("127.0.0.1:0".parse().unwrap())).unwrap())
        .collect();
    let mut text = String::new();
    for (id, l) in listeners.iter().enumerate() {
        text += &format!(
            "[[node]]\nid = {id}\naddress = \"{}\"\nisa = \"x86_64\"\n",
            l.local_address().unwrap()
        );
    }
    // No file is named in it (the secret is given here).
    let config = ClusterConfig::parse(&text, &std::env::temp_dir()).unwrap();
    let secret = Secret::new(&b"the bulk stream baseline's secret"[..]).unwrap();
    let mut ls = listeners.into_iter();
    let (l0, l1) = (ls.next().unwrap(), ls.next().unwrap());
    // Each node's threads run where the thread that starts it does.
    let (c, s) = (config.clone(), secret.clone());
    let receiver = std::thread::spawn(move || {
        if pin {
            vmm::sys::run_on_cpus(&[1]).unwrap();
        }
        let opts = NodeOptions::with_secret(c, 1, s).unwrap();
        let node = Node::start_on(opts, l1, |_m: Incoming| {}).unwrap();
        node.serve_streams(move |mut stream| {
            let mut memory = vec![0u8; bytes];
            let start = (memory.as_ptr() as u64).next_multiple_of(4096);
            let end = (memory.as_ptr() as u64 + bytes as u64) & !4095;
            vmm::sys::advise_huge_pages(start, end.saturating_sub(start));
            let mut n = 0;
            while let Ok(Some(h)) = stream.recv_head() {
                if h.body_len == 0 {
                    let _ = stream.send(b"ok", &[]);
                    continue;
                }
                let into = &mut memory[n..n + h.body_len];
                stream.recv_body(&mut [into]).unwrap();
                n += h.body_len;
            }
        });
        node
    });
    let sender = std::thread::spawn(move || {
        if pin {
            vmm::sys::run_on_cpus(&[0]).unwrap();
        }
        let opts = NodeOptions::with_secret(config, 0, secret).unwrap();
        let node = Node::start_on(opts, l0, |_m: Incoming| {}).unwrap();
        let memory = vec![0x5au8; bytes];
        assert!(node.wait_all_up(std::time::Duration::from_secs(10)));
        let mut s = node.open_stream(1, 7).unwrap();
        let t = Instant::now();
        for record in memory.chunks(RECORD) {
            s.send(&[1], record).unwrap();
        }
        s.send(&[2], &[]).unwrap();
        let (head, _) = s.recv().unwrap().unwrap();
        assert_eq!(head, b"ok");
        t.elapsed().as_secs_f64()
    });
    let secs = sender.join().unwrap();
    drop(receiver.join().unwrap());
    secs
}

/// Touches `mib` MiB of fresh memory, one byte a page, and frees it: on this machine the
/// host takes memory the guest kernel freed back after a few seconds, and the next first
/// touch of it costs several times more (see BENCHMARKS.md), so a run that follows this
/// gets memory the host backs, whatever ran before it.
pub fn warm_up(mib: usize) {
    let mut memory = vec![0u8; mib << 20];
    for at in (0..memory.len()).step_by(4096) {
        // SAFETY: `at` is inside `memory`; a volatile write, so the touch is not elided.
        unsafe { std::ptr::write_volatile(memory.as_mut_ptr().add(at), 1) };
    }
    drop(memory);
}
