//! `cargo bench -p pop-migrate --bench dsm`: what a DSM fault costs between two nodes on
//! this host (net-msg over loopback TCP, authenticated, a process each side here being one
//! process with two nodes), beside its floor measured in the same run: a local userfaultfd
//! round trip through the same code (a page the home never had, zero-filled) plus a net-msg
//! 64-byte request round trip. Each access is timed by the touching thread, page by page:
//!
//! * remote read: node 1 reads a page node 0 (the home) holds Modified: `GetS`, the home
//!   recalls its own copy to Shared, `Data`;
//! * upgrade: node 1 writes a page both hold Shared: `GetM`, the home drops its copy,
//!   `Grant` (no data);
//! * read with recall: node 0 reads a page node 1 holds Modified: `Recall` to node 1,
//!   `Flush`;
//! * write with invalidation: node 0 writes a page both hold Shared: `Inv` to node 1,
//!   `InvAck`;
//!
//! and a sequential scan: node 1 reads 256 MiB that node 0 wrote (read faults asking ahead,
//! pages travelling in runs), beside raw loopback TCP moving as many bytes.

#[path = "../tests/mesh/mod.rs"]
mod mesh;
#[path = "../../popvmm/benches/shared/mod.rs"]
mod shared;

use std::sync::Arc;
use std::time::{Duration, Instant};

use net_msg::Priority;
use pop_dsm::PAGE_SIZE;
use pop_dsm::coherent::{Coherent, RegionConfig};
use pop_dsm::uffd::Staging;
use pop_migrate::msg::MsgType;

const PAGES: u64 = 2048;
const LEN: u64 = 16 << 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut us: Vec<f64>, floor: f64) -> String {
    us.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&us, 0.5), percentile(&us, 0.99));
    format!(
        "| {name} | {} | {p50:.1} | {p99:.1} | {:.2}x |",
        us.len(),
        p50 / floor
    )
}

/// Times `touch` on each of the first [`PAGES`] pages at `base`, in µs: in descending
/// order, so that no fault looks like a sequential scan (whose next pages the DSM asks for
/// ahead: what is timed here is one fault each).
fn each_page(base: u64, touch: impl Fn(*mut u64)) -> Vec<f64> {
    (0..PAGES)
        .rev()
        .map(|i| {
            let p = (base + i * PAGE_SIZE) as *mut u64;
            let t = Instant::now();
            touch(p);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn read(p: *mut u64) {
    // SAFETY: `p` is in a live mapping kept coherent by the DSM (the access faults into it).
    unsafe { p.read_volatile() };
}

fn write(p: *mut u64) {
    // SAFETY: as in `read`.
    unsafe { p.write_volatile(p.read_volatile().wrapping_add(1)) };
}

/// The regions of VM `vm` on nodes 0 (the home) and 1, over `maps`.
fn start_regions(m: &mesh::Mesh, vm: u64, maps: &mut [Staging], len: u64) -> Vec<Arc<Coherent>> {
    maps.iter_mut()
        .enumerate()
        .map(|(id, map)| {
            let cfg = RegionConfig {
                node: id as u32,
                home: 0,
                vm,
                host_base: map.bytes().as_mut_ptr() as u64,
                len,
                write_protect: true,
            };
            m.regions[id].start(&m.nodes[id], cfg).unwrap()
        })
        .collect()
}

/// Node 1 reads `len` bytes node 0 (the home) wrote, word by word; returns the seconds.
fn scan(m: &mesh::Mesh, len: u64) -> f64 {
    let mut maps: Vec<Staging> = (0..2).map(|_| Staging::new(len).unwrap()).collect();
    let words = len as usize / 8;
    for (i, w) in maps[0].bytes().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).to_ne_bytes());
    }
    let node1 = maps[1].bytes().as_mut_ptr() as u64;
    let regions = start_regions(m, 2, &mut maps, len);
    let t = Instant::now();
    let p = node1 as *const u64;
    let mut sum = 0u64;
    for i in 0..words {
        // SAFETY: inside node 1's mapping of the region, kept coherent by the DSM.
        sum = sum.wrapping_add(unsafe { p.add(i).read_volatile() });
    }
    let secs = t.elapsed().as_secs_f64();
    let n = words as u64;
    assert_eq!(sum, n.wrapping_mul(n - 1) / 2, "the scan read every word");
    for (id, r) in regions.iter().enumerate() {
        assert_eq!(r.failure(), None, "node {id}");
    }
    println!("scan, node 0: {:?}", regions[0].stats());
    println!("scan, node 1: {:?}", regions[1].stats());
    for (id, r) in regions.iter().enumerate() {
        m.regions[id].remove(2);
        r.fail("the scan is over");
    }
    drop(regions);
    drop(maps);
    secs
}

fn main() {
    let m = mesh::mesh(2);

    let mut maps: Vec<Staging> = (0..2).map(|_| Staging::new(LEN).unwrap()).collect();
    let bases: Vec<u64> = maps
        .iter_mut()
        .map(|s| s.bytes().as_mut_ptr() as u64)
        .collect();
    // The home's pages hold data (the VM ran there), except the second half.
    maps[0].bytes()[..(PAGES * PAGE_SIZE) as usize].fill(1);
    let regions = start_regions(&m, 1, &mut maps, LEN);

    // The floor: a local fault served with a zero page by the same code, and a round trip.
    let local = each_page(bases[0] + LEN / 2, read);
    let rtt: Vec<f64> = (0..PAGES)
        .map(|_| {
            let t = Instant::now();
            m.nodes[1]
                .request(
                    0,
                    MsgType::Ping.number(),
                    Priority::Page,
                    &[0u8; 64],
                    Duration::from_secs(5),
                )
                .unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let p50 = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    let floor = p50(&local) + p50(&rtt);

    let remote_read = each_page(bases[1], read);
    let upgrade = each_page(bases[1], write);
    let recall = each_page(bases[0], read);
    let invalidate = each_page(bases[0], write);
    for (id, r) in regions.iter().enumerate() {
        assert_eq!(r.failure(), None, "node {id}");
    }
    for r in &regions {
        r.fail("the faults are timed");
    }
    println!("DSM faults, 2 nodes on loopback, {PAGES} pages each (µs; x = p50 / floor)\n");
    println!("| access | n | p50 | p99 | x floor |");
    println!("|---|---|---|---|---|");
    println!("{}", summary("floor: local uffd fault", local, floor));
    println!("{}", summary("floor: net-msg 64 B round trip", rtt, floor));
    println!(
        "{}",
        summary("remote read (GetS, Data)", remote_read, floor)
    );
    println!("{}", summary("upgrade (GetM, Grant)", upgrade, floor));
    println!(
        "{}",
        summary("read with recall from the owner", recall, floor)
    );
    println!(
        "{}",
        summary("write invalidating a remote copy", invalidate, floor)
    );
    println!("\nfloor (local p50 + round trip p50): {floor:.1} µs");
    let stats: Vec<_> = regions.iter().map(|r| r.stats()).collect();
    println!("node 0: {:?}\nnode 1: {:?}", stats[0], stats[1]);
    drop(regions);
    drop(maps);

    // Each after touching and freeing 1.5 GiB, so that both get memory the host backs (see
    // `warm_up`).
    let len: u64 = 256 << 20;
    shared::warm_up(1536);
    let secs = scan(&m, len);
    shared::warm_up(1536);
    let raw = shared::raw_tcp(len, false);
    let mb = len as f64 / 1e6;
    println!(
        "\n| sequential read of 256 MiB the home wrote | time | MB/s | raw loopback TCP, same bytes | ratio |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| node 1, a host thread | {secs:.3} s | {:.0} | {raw:.3} s ({:.0} MB/s) | {:.0}% |",
        mb / secs,
        mb / raw,
        100.0 * raw / secs
    );
}
