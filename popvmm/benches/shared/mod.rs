//! What the benchmarks that run clusters share: free loopback ports, medians, and the raw
//! TCP copy that node-to-node transfers are measured against.

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
