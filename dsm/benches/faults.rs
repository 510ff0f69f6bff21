//! `cargo bench -p pop-dsm --bench faults`: what a userfaultfd fault costs on this host, the
//! floor of every DSM fault (a remote one adds a network round trip): a read of a missing
//! page answered with a write-protected copy (`UFFDIO_COPY` + `MODE_WP`), and a write to
//! such a page answered by lifting the protection (`UFFDIO_WRITEPROTECT`), each timed by the
//! touching thread (a host thread: through KVM a guest access adds its exit) from its access
//! to its return; beside them, a write to a present page.

use std::sync::Arc;
use std::time::Instant;

use pop_dsm::uffd::{HUGE_PAGE, Staging, Uffd};

const PAGES: u64 = 512;
const ROUNDS: usize = 8;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut missing = Vec::new();
    let mut protected = Vec::new();
    let mut present = Vec::new();
    for _ in 0..ROUNDS {
        let mut target = Staging::new(HUGE_PAGE).unwrap();
        let base = target.bytes().as_mut_ptr() as u64;
        let uffd = Arc::new(Uffd::register_coherent(base, HUGE_PAGE).unwrap());
        let server = {
            let uffd = uffd.clone();
            std::thread::spawn(move || {
                let page = vec![7u8; 4096];
                let mut served = 0;
                while served < 2 * PAGES {
                    let Some(f) = uffd.next_event(1000).unwrap() else {
                        continue;
                    };
                    let addr = f.addr & !4095;
                    if f.protected {
                        uffd.write_protect(addr, 4096, false).unwrap();
                    } else {
                        uffd.copy_protected(addr, &page).unwrap();
                    }
                    served += 1;
                }
            })
        };
        for i in 0..PAGES {
            let p = (base + i * 4096) as *mut u8;
            // SAFETY: `target` is mapped for the whole round; each access faults into the
            // server thread above, which answers it.
            unsafe {
                let t = Instant::now();
                let v = p.read_volatile();
                missing.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                p.write_volatile(v.wrapping_add(1));
                protected.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                p.write_volatile(v.wrapping_add(2));
                present.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        server.join().unwrap();
        uffd.unregister().unwrap();
    }
    println!("| fault ({} each) | p50 | p99 |", missing.len());
    println!("|---|---|---|");
    for (name, mut v) in [
        (
            "read of a missing page, answered with a write-protected copy",
            missing,
        ),
        (
            "write to a write-protected page, protection lifted",
            protected,
        ),
        ("write to a present writable page (no fault)", present),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.2} µs | {:.2} µs |",
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
}
