//! The coherence runtime on real memory and real userfaultfd: several "nodes" in one process,
//! each with its own mapping of one region and a thread receiving its messages, carried over
//! channels (FIFO per pair of nodes, as net-msg's page class is). Host threads stand in for
//! vCPUs: their loads and stores fault exactly as a guest's do through KVM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use pop_dsm::PAGE_SIZE;
use pop_dsm::coherent::{CoherenceError, Coherent, Link, RegionConfig};
use pop_dsm::message::PageMsg;
use pop_dsm::protocol::{NodeId, State};
use pop_dsm::uffd::{HUGE_PAGE, Staging};

/// A message as it travels: its sender and its bytes.
type Carried = (NodeId, Vec<u8>);
type Wire = Sender<Carried>;
/// A page-stream record: its head and its pages.
type Record = (Vec<u8>, Vec<u8>);

/// A node's ends of the page streams: to each node, and from each node.
struct PageStreams {
    out: Vec<Sender<Record>>,
    incoming: Vec<Mutex<Receiver<Record>>>,
}

struct ChannelLink {
    from: NodeId,
    to: Vec<Wire>,
    /// Messages sent.
    sent: Arc<AtomicU64>,
    /// Page streams, if the link has them.
    streams: Option<PageStreams>,
    /// Page-stream records sent.
    streamed: Arc<AtomicU64>,
}

impl Link for ChannelLink {
    fn send(&self, to: NodeId, message: Vec<u8>) -> Result<(), String> {
        self.sent.fetch_add(1, Ordering::SeqCst);
        self.to[to as usize]
            .send((self.from, message))
            .map_err(|_| "gone".to_string())
    }

    fn has_stream_to(&self, _to: NodeId) -> bool {
        self.streams.is_some()
    }

    fn send_pages(&self, to: NodeId, head: &[u8], pages: &[u8]) -> Result<(), String> {
        let streams = self.streams.as_ref().ok_or("no page streams")?;
        self.streamed.fetch_add(1, Ordering::SeqCst);
        streams.out[to as usize]
            .send((head.to_vec(), pages.to_vec()))
            .map_err(|_| "gone".to_string())
    }

    fn recv_pages(&self, from: NodeId, into: &mut [u8]) -> Result<Vec<u8>, String> {
        let streams = self.streams.as_ref().ok_or("no page streams")?;
        let (head, pages) = streams.incoming[from as usize]
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        if pages.len() != into.len() {
            return Err(format!("a record of {} bytes", pages.len()));
        }
        into.copy_from_slice(&pages);
        Ok(head)
    }
}

/// A node: its mapping of the region, and its copy.
struct TestNode {
    region: Arc<Coherent>,
    base: u64,
    len: u64,
    /// Messages this node has sent.
    sent: Arc<AtomicU64>,
    /// Page-stream records this node has sent.
    streamed: Arc<AtomicU64>,
    /// Dropped after the region (fields drop in order).
    _map: Staging,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Before the mapping goes: a message still being delivered is dropped, not acted on.
        self.region.fail("the test is over");
    }
}

impl TestNode {
    /// The 64-bit word `word` of page `page`, through this node's mapping.
    fn word(&self, page: u64, word: u64) -> &AtomicU64 {
        assert!(page * PAGE_SIZE + word * 8 < self.len);
        // SAFETY: the address is inside this node's live mapping (checked above), aligned to 8;
        // every access to it goes through atomics.
        unsafe { &*((self.base + page * PAGE_SIZE + word * 8) as *const AtomicU64) }
    }
}

thread_local! {
    /// Whether the clusters this test thread makes use write-protect (see
    /// [`without_write_protect`]).
    static PROTECT: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Runs `test` with clusters whose nodes never write-protect pages, as on a kernel without
/// userfaultfd write-protect: every fault takes the page, recalls take pages out.
fn without_write_protect(test: impl FnOnce()) {
    PROTECT.with(|p| p.set(false));
    test();
    PROTECT.with(|p| p.set(true));
}

/// `n` nodes sharing one 2 MiB region whose home (and first holder) is node 0; node 0's
/// mapping starts with `init` applied to it.
fn cluster(n: usize, init: impl FnOnce(&mut [u8])) -> Vec<TestNode> {
    cluster_of(n, HUGE_PAGE, init)
}

/// [`cluster`] with a region of `len` bytes (a multiple of [`HUGE_PAGE`]).
fn cluster_of(n: usize, len: u64, init: impl FnOnce(&mut [u8])) -> Vec<TestNode> {
    cluster_with(n, len, true, init)
}

/// [`cluster_of`], its links with page streams or without.
fn cluster_with(n: usize, len: u64, streams: bool, init: impl FnOnce(&mut [u8])) -> Vec<TestNode> {
    let (txs, rxs): (Vec<Wire>, Vec<Receiver<Carried>>) = (0..n).map(|_| channel()).unzip();
    // The page stream from node `from` to node `to`: a channel, its sender in `from`'s
    // ends, its receiver in `to`'s.
    let mut ends: Vec<PageStreams> = (0..n)
        .map(|_| PageStreams {
            out: Vec::new(),
            incoming: Vec::new(),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            let (tx, rx) = channel();
            ends[from].out.push(tx);
            ends[to].incoming.push(Mutex::new(rx));
        }
    }
    let mut ends: Vec<Option<PageStreams>> = ends.into_iter().map(Some).collect();
    let mut init = Some(init);
    let mut nodes = Vec::new();
    for (id, rx) in rxs.into_iter().enumerate() {
        let mut map = Staging::new(len).unwrap();
        if id == 0 {
            (init.take().unwrap())(map.bytes());
        }
        let base = map.bytes().as_ptr() as u64;
        let sent = Arc::new(AtomicU64::new(0));
        let streamed = Arc::new(AtomicU64::new(0));
        let link = Arc::new(ChannelLink {
            from: id as NodeId,
            to: txs.clone(),
            sent: sent.clone(),
            streams: ends[id].take().filter(|_| streams),
            streamed: streamed.clone(),
        });
        let cfg = RegionConfig {
            node: id as NodeId,
            home: 0,
            vm: 42,
            host_base: base,
            len,
            write_protect: PROTECT.with(|p| p.get()),
        };
        let region = Arc::new(Coherent::start(cfg, link).unwrap());
        let serving = Arc::downgrade(&region);
        std::thread::spawn(move || {
            for (from, bytes) in rx {
                let Some(region) = serving.upgrade() else {
                    return;
                };
                if let Err(e) = region.deliver(from, &bytes) {
                    eprintln!("node {id}: {e}");
                }
            }
        });
        nodes.push(TestNode {
            region,
            base,
            len,
            sent,
            streamed,
            _map: map,
        });
    }
    nodes
}

#[test]
fn atomic_counters_on_three_nodes_end_exact() {
    atomic_counters_on_three_nodes_end_exact_body();
}

#[test]
fn atomic_counters_on_three_nodes_end_exact_without_write_protect() {
    without_write_protect(atomic_counters_on_three_nodes_end_exact_body);
}

fn atomic_counters_on_three_nodes_end_exact_body() {
    const THREADS: u64 = 6;
    const EACH: u64 = 5_000;
    let nodes = Arc::new(cluster(3, |_| {}));
    let start = Arc::new(Barrier::new(THREADS as usize));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (nodes, start) = (nodes.clone(), start.clone());
            std::thread::spawn(move || {
                let node = &nodes[(t % 3) as usize];
                start.wait();
                for i in 0..EACH {
                    // One word everybody increments; one word per thread beside the others'
                    // (false sharing); and now and then a read of the third page.
                    node.word(0, 0).fetch_add(1, Ordering::SeqCst);
                    node.word(1, t).fetch_add(1, Ordering::SeqCst);
                    // Now and then a read of a third page, written by one of the threads (read
                    // copies, invalidated), and a yield so the threads interleave.
                    if i % 64 == 0 {
                        node.word(2, 0).load(Ordering::SeqCst);
                    }
                    if t == 0 && i % 256 == 0 {
                        node.word(2, 1).fetch_add(1, Ordering::SeqCst);
                    }
                    if i % 16 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for node in nodes.iter() {
        assert_eq!(node.word(0, 0).load(Ordering::SeqCst), THREADS * EACH);
        for t in 0..THREADS {
            assert_eq!(node.word(1, t).load(Ordering::SeqCst), EACH);
        }
    }
    let stats: Vec<_> = nodes.iter().map(|n| n.region.stats()).collect();
    eprintln!("{stats:#?}");
    assert!(stats.iter().all(|s| s.fetched > 0), "pages did not move");
    assert!(
        stats
            .iter()
            .map(|s| s.invalidated + s.recalled)
            .sum::<u64>()
            > 0,
        "no copy taken back"
    );
    assert_eq!(nodes[0].region.failure(), None);
}

#[test]
fn a_reader_sees_every_write_before_the_flag_it_read() {
    a_reader_sees_every_write_before_the_flag_it_read_body();
}

#[test]
fn a_reader_sees_every_write_before_the_flag_it_read_without_write_protect() {
    without_write_protect(a_reader_sees_every_write_before_the_flag_it_read_body);
}

fn a_reader_sees_every_write_before_the_flag_it_read_body() {
    // Message passing across pages: node 1 fills page 4 with n, then sets page 5's flag to
    // n; node 2 reads the flag, then the page: no word may be older than the flag.
    const ROUNDS: u64 = 300;
    let nodes = Arc::new(cluster(3, |_| {}));
    let writer = {
        let nodes = nodes.clone();
        std::thread::spawn(move || {
            let w = &nodes[1];
            for n in 1..=ROUNDS {
                for i in 0..512 {
                    w.word(4, i).store(n, Ordering::Release);
                }
                w.word(5, 0).store(n, Ordering::Release);
            }
        })
    };
    let r = &nodes[2];
    let mut last = 0;
    while last < ROUNDS {
        let flag = r.word(5, 0).load(Ordering::Acquire);
        assert!(flag >= last, "the flag went back from {last} to {flag}");
        for i in 0..512 {
            let v = r.word(4, i).load(Ordering::Acquire);
            assert!(v >= flag, "word {i} is {v}, older than the flag {flag}");
        }
        last = flag;
    }
    writer.join().unwrap();
    // What node 0 (the home) reads at the end is the last round, word for word.
    for i in 0..512 {
        assert_eq!(nodes[0].word(4, i).load(Ordering::SeqCst), ROUNDS);
    }
}

#[test]
fn pages_the_home_had_go_to_the_others_and_come_back() {
    pages_the_home_had_go_to_the_others_and_come_back_body();
}

#[test]
fn without_write_protect_pages_move_whole_between_the_home_and_a_node() {
    without_write_protect(|| {
        // Node 1 reads the home's data: each page comes whole, none is left at the home.
        let (nodes, expect) = two_nodes_reading_the_home_s_pattern();
        for page in 0..8 {
            assert_eq!(nodes[1].region.state(page), Some(State::Modified));
            assert_eq!(nodes[0].region.state(page), Some(State::Invalid));
        }
        // The home reads one back, node 1 writes it again: the data goes with the page.
        let word = nodes[0].word(3, 7).load(Ordering::SeqCst);
        assert_eq!(word.to_ne_bytes()[0], expect(3 * 4096 + 7 * 8));
        assert_eq!(nodes[1].region.state(3), Some(State::Invalid));
        nodes[1].word(3, 7).store(0xfeed, Ordering::SeqCst);
        assert_eq!(nodes[0].word(3, 7).load(Ordering::SeqCst), 0xfeed);
        assert_eq!(nodes[1].word(200, 0).load(Ordering::SeqCst), 0);
        for n in &nodes {
            let stats = n.region.stats();
            assert_eq!(stats.read_faults, 0, "no read copies: {stats:?}");
            assert_eq!(stats.upgrades, 0, "{stats:?}");
        }
    });
}

/// Two nodes whose home's first 8 pages hold a pattern, which node 1 has read in order
/// (checking every byte); the pattern's byte at an offset.
fn two_nodes_reading_the_home_s_pattern() -> (Vec<TestNode>, fn(usize) -> u8) {
    fn expect(i: usize) -> u8 {
        (i % 251) as u8
    }
    let nodes = cluster(2, |bytes| {
        for (i, b) in bytes[..8 * PAGE_SIZE as usize].iter_mut().enumerate() {
            *b = expect(i);
        }
    });
    // SAFETY: 8 pages of node 1's mapping, read through the DSM (they fault in).
    let seen = unsafe { std::slice::from_raw_parts(nodes[1].base as *const u8, 8 * 4096) };
    for (i, &b) in seen.iter().enumerate() {
        assert_eq!(b, expect(i), "byte {i}");
    }
    (nodes, expect)
}

fn pages_the_home_had_go_to_the_others_and_come_back_body() {
    // Node 1 reads the home's data in order: the first page as a read copy (node 0 keeps
    // one too), the next ones as a scan, which takes the pages no one else shares...
    let (nodes, expect) = two_nodes_reading_the_home_s_pattern();
    assert_eq!(nodes[1].region.state(0), Some(State::Shared));
    assert_eq!(nodes[0].region.state(0), Some(State::Shared));
    assert_eq!(nodes[1].region.state(3), Some(State::Modified));
    assert_eq!(nodes[0].region.state(3), Some(State::Invalid));
    // ... node 0 reads one of those back (both keep read copies)...
    assert_eq!(nodes[0].word(3, 7).load(Ordering::SeqCst), {
        let mut w = [0u8; 8];
        for (k, b) in w.iter_mut().enumerate() {
            *b = expect(3 * 4096 + 7 * 8 + k);
        }
        u64::from_ne_bytes(w)
    });
    assert_eq!(nodes[1].region.state(3), Some(State::Shared));
    assert_eq!(nodes[0].region.state(3), Some(State::Shared));
    // ... then node 1 writes it: node 0's copy is invalidated, and it reads the new bytes.
    nodes[1].word(3, 7).store(0xfeed, Ordering::SeqCst);
    assert_eq!(nodes[0].region.state(3), Some(State::Invalid));
    assert_eq!(nodes[1].region.state(3), Some(State::Modified));
    assert_eq!(
        nodes[1].region.stats().upgrades,
        1,
        "a read copy upgraded moves no data"
    );
    assert_eq!(nodes[0].word(3, 7).load(Ordering::SeqCst), 0xfeed);
    assert_eq!(
        nodes[0].word(3, 6).load(Ordering::SeqCst),
        nodes[1].word(3, 6).load(Ordering::SeqCst)
    );
    // A page no one ever wrote reads as zeros everywhere.
    assert_eq!(nodes[1].word(200, 0).load(Ordering::SeqCst), 0);
    // The pages the scan took (and asked for ahead) only node 1 holds, and one it writes.
    let taken = nodes[0].region.held_only_by(1);
    assert!(taken >= 6, "{taken}");
    nodes[1].word(0, 0).store(1, Ordering::SeqCst);
    assert_eq!(nodes[0].region.held_only_by(1), taken + 1);
}

#[test]
fn pages_asked_for_ahead_in_two_places_travel_in_one_message_each_way() {
    // What a thread arriving on a node asks for: its stack top and its thread-locals.
    let nodes = cluster(2, |bytes| {
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
    });
    let (stack, tls) = (300u64, 2u64);
    let ranges = [
        (stack * PAGE_SIZE, 2 * PAGE_SIZE),
        (tls * PAGE_SIZE, 2 * PAGE_SIZE),
    ];
    nodes[1].region.request_ahead(&ranges, true).unwrap();
    let pages = [stack, stack + 1, tls, tls + 1];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pages
        .iter()
        .all(|&p| nodes[1].region.state(p as u32) == Some(State::Modified))
    {
        assert!(std::time::Instant::now() < deadline, "the pages never came");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        nodes[1].sent.load(Ordering::SeqCst),
        1,
        "one frame of requests"
    );
    assert_eq!(
        nodes[0].sent.load(Ordering::SeqCst),
        1,
        "one frame of pages"
    );
    for &p in &pages {
        assert_eq!(nodes[0].region.state(p as u32), Some(State::Invalid));
        for w in [0, 511] {
            let at = (p * PAGE_SIZE + w * 8) as usize;
            let expect = u64::from_ne_bytes(std::array::from_fn(|k| ((at + k) % 253) as u8));
            assert_eq!(
                nodes[1].word(p, w).load(Ordering::SeqCst),
                expect,
                "page {p}"
            );
        }
    }
    // The home writes them again (each recalled), and node 1 sees those writes.
    let before: Vec<u64> = pages
        .iter()
        .map(|&p| nodes[1].word(p, 1).load(Ordering::SeqCst))
        .collect();
    for &p in &pages {
        nodes[0].word(p, 1).fetch_add(1, Ordering::SeqCst);
    }
    for (&p, b) in pages.iter().zip(before) {
        assert_eq!(
            nodes[1].word(p, 1).load(Ordering::SeqCst),
            b.wrapping_add(1)
        );
    }
}

#[test]
fn pages_given_back_go_to_the_next_node_from_the_home_without_a_recall() {
    let nodes = cluster(3, |_| {});
    // Node 1 writes two pages (a thread's stack top, say), then gives them back as its
    // thread leaves: one message, and the home holds them again.
    for p in [40, 41] {
        nodes[1].word(p, 3).store(1000 + p, Ordering::SeqCst);
    }
    let sent = nodes[1].sent.load(Ordering::SeqCst);
    let range = [(40 * PAGE_SIZE, 2 * PAGE_SIZE)];
    assert_eq!(nodes[1].region.give_back(&range).unwrap(), 2);
    assert_eq!(nodes[1].sent.load(Ordering::SeqCst), sent + 1);
    assert_eq!(nodes[1].region.state(40), Some(State::Invalid));
    assert_eq!(nodes[1].region.stats().given_back, 2);
    // Nothing to give back now, and the home never gives back.
    assert_eq!(nodes[1].region.give_back(&range).unwrap(), 0);
    assert_eq!(nodes[0].region.give_back(&range).unwrap(), 0);
    // Node 2 writes them next: the home hands them over with no recall from node 1.
    for p in [40, 41] {
        assert_eq!(nodes[2].word(p, 3).fetch_add(1, Ordering::SeqCst), 1000 + p);
    }
    assert_eq!(nodes[1].region.stats().recalled, 0);
    assert_eq!(nodes[0].word(41, 3).load(Ordering::SeqCst), 1042);
}

/// Rounds each of three nodes runs in [`racing_increments`].
const RACING_ROUNDS: u64 = 1500;

/// Three nodes (home: node 0) each incrementing `words` (page, word) [`RACING_ROUNDS`]
/// times, running `between(nodes, node, round)` after each round; checks that every node
/// ends seeing every increment, and returns the nodes.
fn racing_increments(
    words: [(u64, u64); 2],
    between: fn(&[TestNode], usize, u64),
) -> Arc<Vec<TestNode>> {
    let nodes = Arc::new(cluster(3, |_| {}));
    let workers: Vec<_> = (0..3)
        .map(|n| {
            let nodes = nodes.clone();
            std::thread::spawn(move || {
                for i in 0..RACING_ROUNDS {
                    for (page, word) in words {
                        nodes[n].word(page, word).fetch_add(1, Ordering::SeqCst);
                    }
                    between(&nodes, n, i);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    for n in 0..3 {
        for (page, word) in words {
            assert_eq!(
                nodes[n].word(page, word).load(Ordering::SeqCst),
                3 * RACING_ROUNDS
            );
        }
    }
    nodes
}

#[test]
fn give_backs_racing_recalls_lose_no_increment() {
    give_backs_racing_recalls_lose_no_increment_body();
}

#[test]
fn give_backs_racing_recalls_lose_no_increment_without_write_protect() {
    without_write_protect(give_backs_racing_recalls_lose_no_increment_body);
}

fn give_backs_racing_recalls_lose_no_increment_body() {
    // A node that keeps writing a page and giving it back while the home and another node
    // write it too: give-backs cross recalls; every increment counts.
    let nodes = racing_increments([(7, 0), (8, 0)], |nodes, n, _| {
        if n != 0 {
            nodes[n]
                .region
                .give_back(&[(7 * PAGE_SIZE, 2 * PAGE_SIZE)])
                .unwrap();
        }
    });
    assert!(nodes[1].region.stats().given_back > 0);
}

#[test]
fn the_home_keeps_no_copy_of_pages_a_node_owns() {
    let nodes = cluster(3, |bytes| bytes.fill(7));
    // Node 1 takes 40 pages to write them: their only copy is there.
    for p in 100..140 {
        nodes[1].word(p, 0).fetch_add(1, Ordering::SeqCst);
    }
    assert_eq!(nodes[0].region.copies_kept(), 0);
    // Node 2 reads them (backwards: not a scan, which would take them): node 1 keeps a read
    // copy, and the directory one for the next reader.
    for p in (100..140).rev() {
        assert_eq!(
            nodes[2].word(p, 0).load(Ordering::SeqCst),
            0x0707_0707_0707_0708
        );
    }
    assert_eq!(nodes[0].region.copies_kept(), 40);
    // Node 2 writes them: the copies go again.
    for p in 100..140 {
        nodes[2].word(p, 1).store(1, Ordering::SeqCst);
    }
    assert_eq!(nodes[0].region.copies_kept(), 0);
}

#[test]
fn pages_pushed_to_a_node_are_there_before_it_touches_them() {
    let nodes = cluster(3, |_| {});
    for p in [40, 41] {
        nodes[0].word(p, 3).store(2000 + p, Ordering::SeqCst);
    }
    // The home hands the two pages (a thread's stack top, say) to node 1 as its thread
    // leaves for it: one message.
    let sent = nodes[0].sent.load(Ordering::SeqCst);
    let range = [(40 * PAGE_SIZE, 2 * PAGE_SIZE)];
    assert_eq!(nodes[0].region.push(&range, 1).unwrap(), 2);
    assert_eq!(nodes[0].sent.load(Ordering::SeqCst), sent + 1);
    assert_eq!(nodes[0].region.state(40), Some(State::Invalid));
    let t0 = std::time::Instant::now();
    while nodes[1].region.state(41) != Some(State::Modified) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the push did not arrive"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Node 1 reads and writes them without a fault.
    for p in [40, 41] {
        assert_eq!(nodes[1].word(p, 3).fetch_add(1, Ordering::SeqCst), 2000 + p);
    }
    let stats = nodes[1].region.stats();
    assert_eq!((stats.read_faults, stats.write_faults), (0, 0));
    assert_eq!(nodes[0].region.stats().pushed, 2);
    // Nothing to push to the owner; only the home pushes.
    assert_eq!(nodes[0].region.push(&range, 1).unwrap(), 0);
    assert_eq!(nodes[1].region.push(&range, 2).unwrap(), 0);
    assert_eq!(nodes[0].word(41, 3).load(Ordering::SeqCst), 2042);
}

#[test]
fn pushes_racing_faults_and_recalls_lose_no_increment() {
    pushes_racing_faults_and_recalls_lose_no_increment_body();
}

#[test]
fn pushes_racing_faults_and_recalls_lose_no_increment_without_write_protect() {
    without_write_protect(pushes_racing_faults_and_recalls_lose_no_increment_body);
}

fn pushes_racing_faults_and_recalls_lose_no_increment_body() {
    // The home keeps pushing two pages to nodes 1 and 2 in turn while all three nodes
    // increment words of them: pushes cross the nodes' own requests and recalls.
    let nodes = racing_increments([(7, 0), (8, 1)], |nodes, n, i| {
        if n == 0 {
            let to = 1 + (i % 2) as NodeId;
            nodes[0]
                .region
                .push(&[(7 * PAGE_SIZE, 2 * PAGE_SIZE)], to)
                .unwrap();
        }
    });
    assert!(nodes[0].region.stats().pushed > 0);
}

#[test]
fn a_scan_takes_whole_huge_pages_and_gives_every_byte_back() {
    scan_takes_whole_huge_pages(false);
}

#[test]
fn a_scan_over_page_streams_takes_whole_huge_pages_and_gives_every_byte_back() {
    scan_takes_whole_huge_pages(true);
}

/// Node 1 scans a region node 0 wrote, writes some of it, and node 0 reads it all back:
/// every byte as it should be, with the huge pages given whole (streamed if `streams`).
fn scan_takes_whole_huge_pages(streams: bool) {
    const LEN: u64 = 4 * HUGE_PAGE;
    let word = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let nodes = cluster_with(2, LEN, streams, |bytes| {
        for (i, w) in bytes.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&word(i as u64).to_ne_bytes());
        }
    });
    let words = LEN / 8;
    let at = |n: usize, i: u64| nodes[n].word(i / 512, i % 512);
    // Node 1 reads it all in order (its scan takes the pages, huge pages gathered whole)...
    for i in 0..words {
        assert_eq!(
            at(1, i).load(Ordering::Relaxed),
            word(i),
            "word {i} on node 1"
        );
    }
    let pages = LEN / PAGE_SIZE;
    assert!(nodes[0].region.held_only_by(1) > pages / 2);
    let mut probe = Staging::new(HUGE_PAGE).unwrap();
    let base = probe.bytes().as_ptr() as u64;
    if pop_dsm::uffd::Uffd::register(base, HUGE_PAGE)
        .unwrap()
        .can_move()
    {
        // The scan starts in the first huge page: the other three come whole.
        assert!(
            nodes[1].region.stats().huge_pages >= 2,
            "{:?}",
            nodes[1].region.stats()
        );
    }
    // Streamed: the home wrote each of those huge pages as one record (the first is asked
    // for by pages, so not whole); without streams, none.
    let records = nodes[0].streamed.load(Ordering::SeqCst);
    match streams {
        true => assert!(records >= 2, "{records} records"),
        false => assert_eq!(records, 0),
    }
    // The home's own huge pages (written there, never elsewhere) are moved out of its
    // mapping into the record, not copied, where the kernel can move pages.
    let home = nodes[0].region.stats();
    assert_eq!(home.streamed, records);
    if streams && nodes[1].region.stats().huge_pages >= 2 {
        assert!(home.moved_out >= 2, "{home:?}");
    }
    // ... writes every 97th word (its own pages: no fault but on read copies)...
    for i in (0..words).step_by(97) {
        at(1, i).store(!word(i), Ordering::Relaxed);
    }
    // ... and node 0 reads back every word, as node 1 left it.
    for i in 0..words {
        let expect = if i % 97 == 0 { !word(i) } else { word(i) };
        assert_eq!(
            at(0, i).load(Ordering::Relaxed),
            expect,
            "word {i} on node 0"
        );
    }
    for n in &nodes {
        assert_eq!(n.region.failure(), None);
    }
}

#[test]
fn scans_writes_and_reads_on_three_nodes_never_see_a_counter_go_back() {
    // Each thread, on its node, now scans pages 0..16 in order (its reads ask ahead and take
    // pages no one shares), now increments the counter of one page: no thread ever sees a
    // page's counter smaller than it saw before, and the counters end exact.
    const PAGES: u64 = 16;
    const ROUNDS: u64 = 300;
    let nodes = Arc::new(cluster(3, |_| {}));
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let nodes = nodes.clone();
            std::thread::spawn(move || {
                let node = &nodes[(t % 3) as usize];
                let mut seen = [0u64; PAGES as usize];
                for r in 0..ROUNDS {
                    for p in 0..PAGES {
                        let v = node.word(p, 0).load(Ordering::SeqCst);
                        assert!(
                            v >= seen[p as usize],
                            "thread {t}: page {p} went back from {} to {v}",
                            seen[p as usize]
                        );
                        seen[p as usize] = v;
                    }
                    node.word((r * 7 + t) % PAGES, 0)
                        .fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total: u64 = (0..PAGES)
        .map(|p| nodes[0].word(p, 0).load(Ordering::SeqCst))
        .sum();
    assert_eq!(total, 6 * ROUNDS);
    for n in nodes.iter() {
        assert_eq!(n.region.failure(), None);
    }
}

#[test]
fn a_spin_barrier_of_threads_changing_nodes_is_never_passed_early() {
    // Six threads, each on another node every round, scan pages, bump one, then meet at a
    // barrier spun on one word (everybody's increments land before anybody reads past it)
    // and at a second one.
    const T: u64 = 6;
    const ROUNDS: u64 = 200;
    let nodes = Arc::new(cluster(3, |_| {}));
    let threads: Vec<_> = (0..T)
        .map(|t| {
            let nodes = nodes.clone();
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let node = &nodes[((t + r) % 3) as usize];
                    for p in 4..20 {
                        node.word(p, 1).load(Ordering::SeqCst);
                    }
                    node.word(4 + (t + r) % 16, 2)
                        .fetch_add(1, Ordering::SeqCst);
                    node.word(0, 0).fetch_add(1, Ordering::SeqCst);
                    let mut spins = 0u64;
                    loop {
                        let v = node.word(0, 0).load(Ordering::SeqCst);
                        assert!(v <= (r + 1) * T + T, "thread {t} round {r}: {v}");
                        if v >= (r + 1) * T {
                            break;
                        }
                        spins += 1;
                        if spins.is_multiple_of(64) {
                            std::thread::yield_now();
                        }
                    }
                    // Everybody arrived: the count is at least this round's.
                    let node = &nodes[((t + r + 1) % 3) as usize];
                    let v = node.word(0, 0).load(Ordering::SeqCst);
                    assert!(v >= (r + 1) * T, "thread {t} round {r}: early, {v}");
                    // Second barrier on word 1.
                    node.word(0, 1).fetch_add(1, Ordering::SeqCst);
                    while node.word(0, 1).load(Ordering::SeqCst) < (r + 1) * T {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let sum: u64 = (4..20)
        .map(|p| nodes[0].word(p, 2).load(Ordering::SeqCst))
        .sum();
    assert_eq!(sum, T * ROUNDS);
}

#[test]
fn a_pinned_page_is_not_taken_away_until_the_pin_ends() {
    let nodes = Arc::new(cluster(3, |_| {}));
    let pin = nodes[1].region.acquire(6 * PAGE_SIZE, 16, true).unwrap();
    nodes[1].word(6, 0).store(1, Ordering::SeqCst);
    let reader = {
        let nodes = nodes.clone();
        std::thread::spawn(move || nodes[2].word(6, 0).load(Ordering::SeqCst))
    };
    std::thread::sleep(Duration::from_millis(200));
    // Still ours: the reader's fetch waits for the pin.
    assert_eq!(nodes[1].region.state(6), Some(State::Modified));
    nodes[1].word(6, 0).store(2, Ordering::SeqCst);
    drop(pin);
    assert_eq!(
        reader.join().unwrap(),
        2,
        "the reader saw a value the pin held"
    );
    // acquire outside the region is refused.
    assert!(nodes[1].region.acquire(HUGE_PAGE - 8, 16, false).is_err());
}

#[test]
fn malformed_and_misdirected_messages_are_refused() {
    let nodes = cluster(2, |_| {});
    let r = &nodes[1].region;
    let bad = |e: CoherenceError| e.to_string();
    assert!(bad(r.deliver(0, b"garbage").unwrap_err()).contains("bad page message"));
    let other_vm = PageMsg::one(7, 0, pop_dsm::protocol::Msg::Inv);
    assert!(r.deliver(0, &other_vm.encode(None)).is_err());
    let beyond = PageMsg::one(42, 1 << 20, pop_dsm::protocol::Msg::Inv);
    assert!(r.deliver(0, &beyond.encode(None)).is_err());
    // An invalidation of a page node 1 does not hold breaks the protocol: refused, and the
    // region is failed from then on (its VM must end).
    let inv = PageMsg::one(42, 0, pop_dsm::protocol::Msg::Inv);
    let e = r.deliver(0, &inv.encode(None)).unwrap_err();
    assert!(matches!(e, CoherenceError::Protocol(_)), "{e}");
    assert!(r.failure().is_some());
    assert!(matches!(
        r.acquire(0, 8, false),
        Err(CoherenceError::Failed(_))
    ));
}
