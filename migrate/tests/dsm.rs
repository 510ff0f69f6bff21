//! The DSM over the real messaging layer: nodes on loopback TCP with authenticated
//! connections, each holding a copy of one region, host threads on every node updating
//! shared words.

mod mesh;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pop_dsm::PAGE_SIZE;
use pop_dsm::coherent::{Coherent, RegionConfig};
use pop_dsm::uffd::{HUGE_PAGE, Staging};

/// One node's mapping of the region and its coherent copy.
struct Copy {
    region: Arc<Coherent>,
    base: u64,
    len: u64,
    _map: Staging,
}

impl Drop for Copy {
    fn drop(&mut self) {
        // Before the mapping goes: messages still on their way are dropped, not acted on
        // (the mesh, and so the region, outlive this copy).
        self.region.fail("the test is over");
    }
}

impl Copy {
    fn word(&self, page: u64, word: u64) -> &AtomicU64 {
        assert!(page * PAGE_SIZE + word * 8 < self.len);
        // SAFETY: inside this copy's live mapping, aligned to 8, only accessed atomically.
        unsafe { &*((self.base + page * PAGE_SIZE + word * 8) as *const AtomicU64) }
    }
}

fn copies(m: &mesh::Mesh, vm: u64) -> Vec<Copy> {
    copies_of(m, vm, HUGE_PAGE, |_| {})
}

/// Copies of a region of `len` bytes, the home's mapping first given `init`.
fn copies_of(m: &mesh::Mesh, vm: u64, len: u64, init: impl Fn(&mut [u8])) -> Vec<Copy> {
    (0..m.nodes.len())
        .map(|id| {
            let mut map = Staging::new(len).unwrap();
            if id == 0 {
                init(map.bytes());
            }
            let base = map.bytes().as_mut_ptr() as u64;
            let cfg = RegionConfig {
                node: id as u32,
                home: 0,
                vm,
                host_base: base,
                len,
                write_protect: true,
            };
            let region = m.regions[id].start(&m.nodes[id], cfg).unwrap();
            Copy {
                region,
                base,
                len,
                _map: map,
            }
        })
        .collect()
}

#[test]
fn counters_updated_from_three_nodes_over_the_mesh_end_exact() {
    const THREADS: u64 = 6;
    const EACH: u64 = 3_000;
    let m = mesh::mesh(3);
    let c = Arc::new(copies(&m, 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let here = &c[(t % 3) as usize];
                for i in 0..EACH {
                    here.word(0, 0).fetch_add(1, Ordering::SeqCst);
                    here.word(1, t).fetch_add(1, Ordering::SeqCst);
                    if i % 32 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for here in c.iter() {
        assert_eq!(here.word(0, 0).load(Ordering::SeqCst), THREADS * EACH);
        for t in 0..THREADS {
            assert_eq!(here.word(1, t).load(Ordering::SeqCst), EACH);
        }
        assert_eq!(here.region.failure(), None);
    }
    assert!(c.iter().all(|here| here.region.stats().fetched > 0));
}

#[test]
fn a_page_message_for_a_vm_without_a_region_is_refused() {
    let m = mesh::mesh(2);
    let _c = copies(&m, 5);
    let msg = pop_dsm::message::PageMsg::one(6, 0, pop_dsm::protocol::Msg::GetS);
    let e = m.regions[0].deliver(1, &msg.encode(None)).unwrap_err();
    assert!(e.to_string().contains("no shared region"), "{e}");
    assert!(m.regions[0].deliver(1, b"short").is_err());
}

/// Node 1 scans a region of 64 MiB node 0 wrote, a huge page at a time with pauses between
/// (time for its page stream to open), until some huge pages came streamed (or the region
/// ends), then the rest; every word is checked. Returns node 0's count of streamed runs.
fn scan_over_the_mesh(streams: bool) -> u64 {
    const LEN: u64 = 64 << 20;
    let m = mesh::mesh_with(2, streams);
    let word = |i: u64| i ^ 0x5555_aaaa_0000_ffff;
    let c = copies_of(&m, 9, LEN, |bytes| {
        for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word(i as u64).to_ne_bytes());
        }
    });
    let per_huge = HUGE_PAGE / 8;
    for i in 0..LEN / 8 {
        let page = i * 8 / PAGE_SIZE;
        let got = c[1].word(page, i % 512).load(Ordering::Relaxed);
        assert_eq!(got, word(i), "word {i} on node 1");
        if i % per_huge == per_huge - 1 && c[0].region.stats().streamed == 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    for here in &c {
        assert_eq!(here.region.failure(), None);
    }
    c[0].region.stats().streamed
}

#[test]
fn a_scan_over_the_mesh_streams_whole_huge_pages_once_its_page_stream_is_open() {
    assert!(scan_over_the_mesh(true) > 0);
}

#[test]
fn a_scan_to_a_node_that_refuses_page_streams_gets_every_page_inline() {
    assert_eq!(scan_over_the_mesh(false), 0);
}
