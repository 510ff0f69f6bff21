//! The protocol explored on a simulated cluster: vCPUs on the nodes run scripts of reads,
//! writes, scan reads (`GetE`, which may take the page), give-backs (`PutM`) and pushes (the
//! home handing a page to a node unasked) on shared pages (two vCPUs of one node fault on a
//! page together, so their faults coalesce, and a write can join a read already asked for);
//! messages travel on FIFO channels, one per ordered pair of nodes (as on one net-msg
//! connection's page class), and any channel's next message, or any node's next access, may
//! come next. Checked after every step:
//!
//! * single writer or readers only: at most one node holds a page Modified, and then no node
//!   holds it Shared;
//! * every copy is current: a node holding a page (Shared or Modified) holds its last write,
//!   so every read sees the last write;
//! * no deadlock, every fault served: when nothing can happen any more, every script ran to
//!   its end, no message is in flight and no home has a transaction left;
//! * no message arrives that its receiver's state cannot take (a `ProtocolError` fails).
//!
//! Small clusters are explored exhaustively (every interleaving); larger ones by seeded random
//! schedules. Both start from either of the two ways a cluster starts: no node holding any
//! page (homes spread over the nodes), or one node holding every page Modified and being the
//! home of all (a VM that ran on its origin until its threads spread).

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::*;

/// What an access does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    /// A read (`GetS` if it faults).
    Read,
    /// A write (`GetM`).
    Write,
    /// A read of a sequential scan (`GetE`).
    Scan,
    /// The node gives the page back to its home if it holds it Modified (`PutM`: a thread
    /// leaving the node); nothing otherwise. Never waits.
    GiveBack,
    /// The page's home, if it is this vCPU's node, pushes the page to this node (a thread
    /// leaving the home for it): [`Home::push`]. Never waits.
    Push(NodeId),
}

use Op::{GiveBack, Push, Read, Scan, Write};

impl Op {
    fn write(self) -> bool {
        self == Write
    }
}

/// One access of a script: (page, what).
type Access = (u32, Op);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    /// Per node: a cache per page.
    caches: Vec<Vec<Cache>>,
    /// Per node: its home side.
    homes: Vec<Home>,
    /// Messages in flight, per (from, to).
    channels: BTreeMap<(NodeId, NodeId), VecDeque<Envelope>>,
    /// Per vCPU: its node, its accesses, and how many are done.
    scripts: Vec<(usize, Vec<Access>, usize)>,
    /// Per page: the last value written (writes count up from 0).
    latest: Vec<Contents>,
}

/// Something that can happen next.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// vCPU `v` tries its next access.
    Access(usize),
    /// The next message on this channel arrives.
    Deliver(NodeId, NodeId),
}

fn home_of(page: u32, nodes: usize) -> NodeId {
    page % nodes as u32
}

/// How a cluster starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// No node holds a page; page `p`'s home is node `p % nodes`.
    Spread,
    /// Node 0 holds every page Modified and is the home of all.
    Origin,
}

impl World {
    /// A cluster of `nodes` nodes starting as `start`; `scripts` are the vCPUs' (node,
    /// accesses).
    fn starting(
        start: Start,
        nodes: usize,
        scripts: Vec<(usize, Vec<Access>)>,
        pages: usize,
    ) -> World {
        let cache = |n: u32, p: u32| match start {
            Start::Spread => Cache::new(n, home_of(p, nodes), p),
            Start::Origin if n == 0 => Cache::owned(0, p),
            Start::Origin => Cache::new(n, 0, p),
        };
        let home = |n: u32| match start {
            Start::Origin if n == 0 => Home::owning(0, pages),
            _ => Home::new(n, pages),
        };
        World {
            caches: (0..nodes as u32)
                .map(|n| (0..pages as u32).map(|p| cache(n, p)).collect())
                .collect(),
            homes: (0..nodes as u32).map(home).collect(),
            channels: BTreeMap::new(),
            scripts: scripts.into_iter().map(|(n, s)| (n, s, 0)).collect(),
            latest: vec![0; pages],
        }
    }

    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        for (v, (n, script, done)) in self.scripts.iter().enumerate() {
            let Some(&(page, op)) = script.get(*done) else {
                continue;
            };
            let write = op.write();
            // Only steps that change something: the access goes ahead, asks for the page, or
            // turns a read already asked for into a write.
            let c = &self.caches[*n][page as usize];
            if matches!(op, GiveBack | Push(_))
                || c.allows(write)
                || c.waiting.is_none()
                || (write && c.waiting == Some(false))
            {
                steps.push(Step::Access(v));
            }
        }
        for (&(from, to), queue) in &self.channels {
            if !queue.is_empty() {
                steps.push(Step::Deliver(from, to));
            }
        }
        steps
    }

    fn send(&mut self, out: Vec<Envelope>) {
        for e in out {
            self.channels
                .entry((e.from, e.to))
                .or_default()
                .push_back(e);
        }
    }

    fn apply(&mut self, step: Step) -> Result<(), String> {
        match step {
            Step::Access(v) => {
                let (n, ref script, done) = self.scripts[v];
                let (page, op) = script[done];
                let write = op.write();
                let latest = self.latest[page as usize];
                let cache = &mut self.caches[n][page as usize];
                if op == GiveBack {
                    let put = cache.give_back();
                    self.send(put.into_iter().collect());
                    self.scripts[v].2 += 1;
                } else if let Push(to) = op {
                    if cache.home == n as NodeId {
                        let pushed = self.homes[n].push(page, to).map_err(|e| e.to_string())?;
                        self.send(pushed);
                    }
                    self.scripts[v].2 += 1;
                } else if cache.allows(write) {
                    if write {
                        cache.contents = latest + 1;
                        self.latest[page as usize] = latest + 1;
                    } else if cache.contents != latest {
                        return Err(format!(
                            "node {n} read {} of page {page}, the last write was {latest}",
                            cache.contents
                        ));
                    }
                    self.scripts[v].2 += 1;
                } else if let Some(request) = match op {
                    Scan => cache.fault_scan(),
                    _ => cache.fault(write),
                } {
                    self.send(vec![request]);
                }
            }
            Step::Deliver(from, to) => {
                let e = self
                    .channels
                    .get_mut(&(from, to))
                    .and_then(VecDeque::pop_front)
                    .expect("a message");
                let out = if e.msg.to_home() {
                    self.homes[to as usize].handle(from, e.page, e.msg)
                } else {
                    self.caches[to as usize][e.page as usize].handle(e.msg)
                }
                .map_err(|err| err.to_string())?;
                self.send(out);
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), String> {
        for (p, &latest) in self.latest.iter().enumerate() {
            let states: Vec<State> = self.caches.iter().map(|c| c[p].state).collect();
            let m = states.iter().filter(|&&s| s == State::Modified).count();
            let s = states.iter().filter(|&&s| s == State::Shared).count();
            if m > 1 || (m == 1 && s > 0) {
                return Err(format!("page {p}: {states:?}"));
            }
            for (n, c) in self.caches.iter().enumerate() {
                if c[p].state != State::Invalid && c[p].contents != latest {
                    return Err(format!(
                        "page {p}: node {n} holds {} ({:?}), the last write was {latest}",
                        c[p].contents, c[p].state
                    ));
                }
            }
        }
        Ok(())
    }

    fn finished(&self) -> Result<(), String> {
        let scripts_done = self.scripts.iter().all(|(_, s, d)| *d == s.len());
        let quiet = self.channels.values().all(VecDeque::is_empty);
        let homes_idle = self.homes.iter().all(Home::is_idle);
        let no_waits = self.caches.iter().flatten().all(|c| c.waiting.is_none());
        if scripts_done && quiet && homes_idle && no_waits {
            Ok(())
        } else {
            Err(format!("stuck: {self:#?}"))
        }
    }
}

/// Every interleaving of `scripts` ((node, accesses) per vCPU) on `nodes` nodes, from both
/// starts; returns how many states it saw.
fn explore(nodes: usize, scripts: Vec<(usize, Vec<Access>)>, pages: usize) -> usize {
    explore_checking(nodes, scripts, pages, |_| Ok(()))
}

/// [`explore`], checking `also` of every state besides the invariants.
fn explore_checking(
    nodes: usize,
    scripts: Vec<(usize, Vec<Access>)>,
    pages: usize,
    also: fn(&World) -> Result<(), String>,
) -> usize {
    explore_from(Start::Spread, nodes, scripts.clone(), pages, also)
        + explore_from(Start::Origin, nodes, scripts, pages, also)
}

fn explore_from(
    start: Start,
    nodes: usize,
    scripts: Vec<(usize, Vec<Access>)>,
    pages: usize,
    also: fn(&World) -> Result<(), String>,
) -> usize {
    let start = World::starting(start, nodes, scripts, pages);
    let mut seen = HashSet::new();
    let mut todo = vec![start];
    while let Some(w) = todo.pop() {
        if !seen.insert(w.clone()) {
            continue;
        }
        if let Err(e) = also(&w) {
            panic!("{e} in {w:#?}");
        }
        let steps = w.steps();
        if steps.is_empty() {
            w.finished().unwrap();
        }
        for step in steps {
            let mut next = w.clone();
            if let Err(e) = next.apply(step) {
                panic!("{e} after {step:?} from {w:#?}");
            }
            todo.push(next);
        }
        assert!(seen.len() < 3_000_000, "state space too large");
    }
    eprintln!("explored {} states", seen.len());
    seen.len()
}

/// Where pages cannot be write-protected (arm64 before Linux 6.10) a node asks for every page
/// it touches as a writer, and gives back and pushes as elsewhere: no other request is made.
/// Every interleaving keeps the invariants, ends, and no node ever holds a read copy (which
/// such a node could not keep read-only).
#[test]
fn without_write_protect_pages_only_move_whole_every_interleaving() {
    let no_read_copies =
        |w: &World| match w.caches.iter().flatten().find(|c| c.state == State::Shared) {
            Some(c) => Err(format!("a read copy: {c:?}")),
            None => Ok(()),
        };
    let n = explore_checking(
        3,
        vec![
            (1, vec![(0, Write), (1, Write), (0, GiveBack)]),
            (2, vec![(1, Write), (0, Write)]),
            (0, vec![(0, Write), (1, Push(2)), (1, Write)]),
        ],
        2,
        no_read_copies,
    );
    assert!(n > 1000, "{n} states");
}

#[test]
fn two_nodes_one_page_every_interleaving() {
    let n = explore(
        2,
        vec![
            (0, vec![(0, Write), (0, Read)]),
            (1, vec![(0, Write), (0, Read)]),
        ],
        1,
    );
    assert!(n > 10, "{n}");
}

#[test]
fn three_nodes_two_pages_every_interleaving() {
    // Each node writes one page and reads the other, in opposite orders; homes on nodes 0, 1.
    let n = explore(
        3,
        vec![
            (0, vec![(0, Write), (1, Read)]),
            (1, vec![(1, Write), (0, Read)]),
            (2, vec![(0, Read), (1, Write)]),
        ],
        2,
    );
    assert!(n > 100, "{n}");
}

#[test]
fn read_upgrades_and_contention_every_interleaving() {
    // On node 1 a read then a write (its copy upgraded) and, beside it, a second vCPU
    // writing (faults coalescing, a write joining a read); writers on nodes 0 and 2.
    explore(
        3,
        vec![
            (1, vec![(0, Read), (0, Write)]),
            (1, vec![(0, Write)]),
            (0, vec![(0, Write)]),
            (2, vec![(0, Write), (0, Read)]),
        ],
        1,
    );
}

#[test]
fn scans_taking_pages_beside_readers_and_writers_every_interleaving() {
    // Node 1 scans both pages (taking those no one shares) while a second vCPU there
    // writes one (a write joining a scan's read), node 2 reads and scans, node 0 writes.
    let n = explore(
        3,
        vec![
            (1, vec![(0, Scan), (1, Scan)]),
            (1, vec![(1, Write)]),
            (2, vec![(0, Read), (1, Scan)]),
            (0, vec![(1, Write), (0, Read)]),
        ],
        2,
    );
    assert!(n > 1000, "{n}");
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_schedules_of_longer_scripts() {
    for seed in 1..=400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let (nodes, pages) = (3 + rng.below(2), 2 + rng.below(2));
        let vcpus = nodes + rng.below(3);
        let scripts: Vec<(usize, Vec<Access>)> = (0..vcpus)
            .map(|v| {
                let accesses = (0..1 + rng.below(8))
                    .map(|_| {
                        let to = rng.below(nodes) as NodeId;
                        let op = [Read, Write, Scan, GiveBack, Push(to)][rng.below(5)];
                        (rng.below(pages) as u32, op)
                    })
                    .collect();
                (v % nodes, accesses)
            })
            .collect();
        let start = if seed % 2 == 0 {
            Start::Origin
        } else {
            Start::Spread
        };
        let mut w = World::starting(start, nodes, scripts, pages);
        let mut steps = 0;
        loop {
            let choices = w.steps();
            if choices.is_empty() {
                w.finished().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
                break;
            }
            let step = choices[rng.below(choices.len())];
            w.apply(step)
                .unwrap_or_else(|e| panic!("seed {seed}, step {steps} ({step:?}): {e}"));
            steps += 1;
            assert!(steps < 100_000, "seed {seed}: no end");
        }
    }
}

#[test]
fn scans_writes_and_reads_of_one_page_on_three_nodes_every_interleaving() {
    // Scans on every node taking the page from each other (or getting read copies once a
    // scan took it), with writes between.
    explore(
        3,
        vec![
            (0, vec![(0, Scan), (0, Write), (0, Scan)]),
            (1, vec![(0, Scan), (0, Write), (0, Read)]),
            (2, vec![(0, Scan), (0, Scan), (0, Write)]),
        ],
        1,
    );
    explore(
        3,
        vec![
            (0, vec![(0, Write), (0, Scan)]),
            (1, vec![(0, Scan), (0, Write)]),
            (1, vec![(0, Scan)]),
            (2, vec![(0, Scan), (0, Read), (0, Write)]),
        ],
        1,
    );
}

#[test]
fn pages_given_back_beside_recalls_reads_and_writes_every_interleaving() {
    // A thread moving between nodes 1 and 2 writes its page and gives it back as it leaves
    // each, while node 0 reads and writes it (recalls crossing the give-backs).
    let n = explore(
        3,
        vec![
            (1, vec![(0, Write), (0, GiveBack), (0, Read)]),
            (2, vec![(0, Write), (0, GiveBack)]),
            (0, vec![(0, Read), (0, Write)]),
        ],
        1,
    );
    assert!(n > 1000, "{n}");
    explore(
        3,
        vec![
            (1, vec![(0, Write), (1, Scan), (0, GiveBack), (1, GiveBack)]),
            (2, vec![(1, Write), (0, Scan), (1, GiveBack), (0, Write)]),
            (0, vec![(1, Read), (0, Write)]),
        ],
        2,
    );
}

#[test]
fn a_give_back_that_crosses_a_recall_answers_it() {
    // Node 1 owns the page; node 2 asks for it and the home recalls it just as node 1 gives
    // it back: the give-back is the recall's answer, and node 1 ignores the recall.
    let mut home = Home::owning(0, 1);
    let mut cache = Cache::new(1, 0, 0);
    assert_eq!(cache.fault(true).unwrap().msg, Msg::GetM);
    let out = home.handle(1, 0, Msg::GetM).unwrap();
    assert_eq!(out[0].msg, Msg::Recall { keep: false });
    let out = home.handle(0, 0, Msg::Flush(3)).unwrap();
    cache.handle(out[0].msg).unwrap();
    cache.contents = 4;
    let out = home.handle(2, 0, Msg::GetS).unwrap();
    assert_eq!((out[0].to, out[0].msg), (1, Msg::Recall { keep: true }));
    let put = cache.give_back().unwrap();
    assert_eq!((put.to, put.msg), (0, Msg::PutM(4)));
    assert_eq!(cache.state, State::Invalid);
    assert_eq!(cache.handle(Msg::Recall { keep: true }).unwrap(), vec![]);
    let out = home.handle(1, 0, put.msg).unwrap();
    assert_eq!((out[0].to, out[0].msg), (2, Msg::Data(4)));
    let (owner, sharers) = home.holders(0).unwrap();
    assert_eq!(owner, None);
    assert_eq!(sharers.iter().copied().collect::<Vec<_>>(), vec![2]);
    // A recall that finds a node holding nothing it gave back is still an error.
    assert!(
        Cache::new(2, 0, 0)
            .handle(Msg::Recall { keep: false })
            .is_err()
    );
}

#[test]
fn a_page_two_nodes_scan_settles_as_read_copies() {
    // Node 0 (the home) holds the page; node 1's scan takes it; node 2's scan then gets a
    // read copy (node 1 keeps one), so the page does not go back and forth between readers.
    let mut home = Home::owning(0, 1);
    let out = home.handle(1, 0, Msg::GetE).unwrap();
    assert_eq!(out[0].msg, Msg::Recall { keep: false });
    let out = home.handle(0, 0, Msg::Flush(5)).unwrap();
    assert_eq!((out[0].to, out[0].msg), (1, Msg::DataM(5)));
    let out = home.handle(2, 0, Msg::GetE).unwrap();
    assert_eq!((out[0].to, out[0].msg), (1, Msg::Recall { keep: true }));
    let out = home.handle(1, 0, Msg::Flush(5)).unwrap();
    assert_eq!((out[0].to, out[0].msg), (2, Msg::Data(5)));
    let (owner, sharers) = home.holders(0).unwrap();
    assert_eq!(owner, None);
    assert_eq!(sharers.iter().copied().collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn pages_pushed_beside_requests_recalls_and_give_backs_every_interleaving() {
    // The home (node 0) pushes the page to node 1 as a thread leaves for it, while node 1's
    // own faults on it are on their way (a push answers them), node 2 writes it (recalling
    // it from node 1) and node 1 gives it back.
    let n = explore(
        3,
        vec![
            (0, vec![(0, Write), (0, Push(1)), (0, Read)]),
            (1, vec![(0, Read), (0, Write), (0, GiveBack)]),
            (2, vec![(0, Write)]),
        ],
        1,
    );
    assert!(n > 1000, "{n}");
    // Pushes of two pages to two nodes, with scans and read copies (a push to a node
    // holding a read copy upgrades it); page 1's home is node 1 when the homes are spread.
    explore(
        3,
        vec![
            (
                0,
                vec![(0, Push(1)), (1, Push(2)), (0, Write), (1, Push(1))],
            ),
            (1, vec![(0, Scan), (1, Read), (1, Write), (1, Push(2))]),
            (2, vec![(1, Write), (0, Read)]),
        ],
        2,
    );
}

#[test]
fn a_request_that_crosses_a_push_is_answered_by_it() {
    // Node 1 asks for the page just as the home pushes it there: node 1 takes the push,
    // and the home drops the request (node 1 owns the page already).
    let mut home = Home::owning(0, 1);
    let mut home_cache = Cache::owned(0, 0);
    let mut cache = Cache::new(1, 0, 0);
    let request = cache.fault(false).unwrap();
    let out = home.push(0, 1).unwrap();
    assert_eq!((out[0].to, out[0].msg), (0, Msg::Recall { keep: false }));
    let flush = home_cache.handle(out[0].msg).unwrap();
    let out = home.handle(0, 0, flush[0].msg).unwrap();
    assert_eq!((out[0].to, out[0].msg), (1, Msg::DataM(0)));
    cache.handle(out[0].msg).unwrap();
    assert_eq!((cache.state, cache.waiting), (State::Modified, None));
    assert_eq!(home.handle(1, 0, request.msg).unwrap(), vec![]);
    assert!(home.is_idle());
    // Nothing is pushed to the owner, nor while a transaction runs.
    assert_eq!(home.push(0, 1).unwrap(), vec![]);
    let out = home.handle(2, 0, Msg::GetS).unwrap();
    assert_eq!(out[0].msg, Msg::Recall { keep: true });
    assert_eq!(home.push(0, 2).unwrap(), vec![]);
}
