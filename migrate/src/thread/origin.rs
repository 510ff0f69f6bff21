//! A VM spanning nodes, at its origin: the home of its shared region's directory, its one
//! futex table, where each of its threads runs, and the watch that ends it cleanly when a
//! node running some of its threads is lost (or tells the shells when it ended).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use net_msg::{Node, PeerState, Priority, Responder};
use pop_abi::errno::EAGAIN;
use pop_dsm::coherent::Coherent;
use pop_dsm::futex::{Futexes, Waited, Waiter};
use vmm::sys::FutexWait;
use vmm::vm::{Outcome, VmShared};

use crate::lock;
use crate::msg::{self, MsgType};

/// How often the origin looks at its VM and at the nodes running its threads.
const WATCH: Duration = Duration::from_millis(50);

/// A futex operation of another node, done in order by the origin's futex thread (never on
/// a connection's reader thread: reading the word may need a page from that very node).
pub(super) enum FutexJob {
    /// Queue a waiter; answer when woken (or at once if the word differs).
    Wait(msg::FutexWait, Responder),
    /// Wake waiters; answer how many.
    Wake(msg::FutexWake, Responder),
    /// A waiter gives up; answer whether it was still queued.
    Cancel(msg::FutexCancel, Responder),
}

/// A VM whose threads span nodes, at its origin.
pub struct Origin {
    /// The VM's id.
    pub vm_id: u64,
    /// The VM.
    pub vm: Weak<VmShared>,
    /// Its shared region, homed here.
    pub region: Arc<Coherent>,
    /// Its futexes.
    pub futexes: Arc<Futexes>,
    /// Where each thread that left runs (the others run here), and those on their way.
    places: Mutex<Places>,
    jobs: Mutex<Sender<FutexJob>>,
    waiter_seq: AtomicU64,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("vm", &self.vm_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Places {
    /// tid → node, for threads not here.
    away: BTreeMap<u32, u32>,
    /// Threads moving now.
    moving: BTreeSet<u32>,
    /// Nodes with a shell of the VM.
    shells: BTreeSet<u32>,
}

impl Origin {
    /// The VM `vm_id` (running here as `vm`) starts to span nodes: its shared region is
    /// kept coherent from now on, homed here.
    pub(super) fn start(
        node: &Arc<Node>,
        vm_id: u64,
        vm: &Arc<VmShared>,
        region: Arc<Coherent>,
    ) -> Arc<Origin> {
        let (tx, rx) = channel();
        let origin = Arc::new(Origin {
            vm_id,
            vm: Arc::downgrade(vm),
            region,
            futexes: Arc::new(Futexes::default()),
            places: Mutex::new(Places::default()),
            jobs: Mutex::new(tx),
            waiter_seq: AtomicU64::new(1),
        });
        let worker = origin.clone();
        let _ = std::thread::Builder::new()
            .name(format!("futex-{vm_id:x}"))
            .spawn(move || worker.serve_futexes(rx));
        let (watched, node) = (Arc::downgrade(&origin), Arc::downgrade(node));
        let _ = std::thread::Builder::new()
            .name(format!("span-{vm_id:x}"))
            .spawn(move || watch(watched, node));
        origin
    }

    /// Hands a futex operation of another node to the futex thread.
    pub(super) fn futex_job(&self, job: FutexJob) {
        let _ = lock(&self.jobs).send(job);
    }

    fn serve_futexes(&self, jobs: Receiver<FutexJob>) {
        for job in jobs {
            let Some(vm) = self.vm.upgrade() else { return };
            match job {
                FutexJob::Wait(w, responder) => {
                    let responder = Arc::new(Mutex::new(Some(responder)));
                    let answer = responder.clone();
                    let waiter = Waiter {
                        id: w.waiter,
                        woken: Box::new(move || {
                            if let Some(r) = lock(&answer).take() {
                                let _ = r.respond(&pop_wire::to_bytes(&msg::Answer { value: 0 }));
                            }
                        }),
                    };
                    let holds = || word_holds(&vm, w.addr, w.expected);
                    if self.futexes.wait(w.addr, holds, waiter) == Waited::ValueChanged
                        && let Some(r) = lock(&responder).take()
                    {
                        let value = (-i64::from(EAGAIN)) as u64;
                        let _ = r.respond(&pop_wire::to_bytes(&msg::Answer { value }));
                    }
                }
                FutexJob::Wake(w, responder) => {
                    let n = self.wake(&vm, w.addr, w.count);
                    let _ = responder.respond(&pop_wire::to_bytes(&msg::Answer { value: n }));
                }
                FutexJob::Cancel(c, responder) => {
                    let value = u64::from(self.futexes.cancel(c.waiter));
                    let _ = responder.respond(&pop_wire::to_bytes(&msg::Answer { value }));
                }
            }
        }
    }

    /// Wakes up to `count` waiters on `addr`: those queued here (from any node), and the
    /// origin's threads that began waiting on the host futex before the VM spanned nodes.
    pub(super) fn wake(&self, vm: &VmShared, addr: u64, count: u32) -> u64 {
        let n = self.futexes.wake(addr, count);
        let left = count.saturating_sub(n) as i32;
        let host = if left > 0 {
            vm.mem
                .with_atomic_u32(addr, |word| vmm::sys::futex_wake(word, left))
                .unwrap_or(0)
                .max(0)
        } else {
            0
        };
        u64::from(n) + host as u64
    }

    /// A futex wait of one of the origin's own threads.
    pub(super) fn wait_here(
        &self,
        addr: u64,
        word: &std::sync::atomic::AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> FutexWait {
        let flag = Arc::new((Mutex::new(false), Condvar::new()));
        let woken = flag.clone();
        let id = (1 << 63) | self.waiter_seq.fetch_add(1, Ordering::Relaxed);
        let waiter = Waiter {
            id,
            woken: Box::new(move || {
                *lock(&woken.0) = true;
                woken.1.notify_all();
            }),
        };
        let holds = || word.load(Ordering::SeqCst) == expected;
        if self.futexes.wait(addr, holds, waiter) == Waited::ValueChanged {
            return FutexWait::ValueChanged;
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut done = lock(&flag.0);
        loop {
            if *done {
                return FutexWait::Woken;
            }
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if expired || interrupted() {
                drop(done);
                // Still queued: it gave up. Taken meanwhile: a wake-up, not to be lost.
                return match (self.futexes.cancel(id), expired) {
                    (false, _) => FutexWait::Woken,
                    (true, true) => FutexWait::TimedOut,
                    (true, false) => FutexWait::Interrupted,
                };
            }
            let slice = deadline.map_or(WATCH, |d| {
                d.saturating_duration_since(Instant::now()).min(WATCH)
            });
            done = flag
                .1
                .wait_timeout(done, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Thread `tid` is moving to `to` (or back here).
    pub(super) fn moving(&self, tid: u32, moving: bool) {
        let mut p = lock(&self.places);
        if moving {
            p.moving.insert(tid);
        } else {
            p.moving.remove(&tid);
        }
    }

    /// Thread `tid` runs on `node` now.
    pub(super) fn thread_at(&self, tid: u32, node: u32, here: u32) {
        let mut p = lock(&self.places);
        if node == here {
            p.away.remove(&tid);
        } else {
            p.away.insert(tid, node);
            p.shells.insert(node);
        }
    }

    /// Thread `tid` ended (wherever it ran).
    pub(super) fn thread_gone(&self, tid: u32) {
        lock(&self.places).away.remove(&tid);
    }

    /// Whether node `node` has a shell of the VM.
    pub(super) fn has_shell(&self, node: u32) -> bool {
        lock(&self.places).shells.contains(&node)
    }

    /// A node made a shell of the VM.
    pub(super) fn shell_made(&self, node: u32) {
        lock(&self.places).shells.insert(node);
    }

    /// Where thread `tid` runs (here if not away).
    pub(super) fn node_of(&self, tid: u32, here: u32) -> u32 {
        lock(&self.places).away.get(&tid).copied().unwrap_or(here)
    }

    /// The threads that left, by node, and those moving now.
    pub(super) fn places(&self) -> (BTreeMap<u32, u32>, BTreeSet<u32>) {
        let p = lock(&self.places);
        (p.away.clone(), p.moving.clone())
    }
}

/// Whether the guest word at `addr` holds `expected`, read through the DSM.
fn word_holds(vm: &VmShared, addr: u64, expected: u32) -> bool {
    vm.mem
        .with_atomic_u32(addr, |w| w.load(Ordering::SeqCst) == expected)
        .unwrap_or(false)
}

/// Watches a spanning VM until it ends: a node running some of its threads that is lost
/// ends it (the VM cannot be whole again) with one line naming the node, the threads and how
/// many pages only that node held; when it ends, the nodes with a shell are told.
fn watch(origin: Weak<Origin>, node: Weak<Node>) {
    loop {
        std::thread::sleep(WATCH);
        let (Some(o), Some(node)) = (origin.upgrade(), node.upgrade()) else {
            return;
        };
        let Some(vm) = o.vm.upgrade() else { return };
        if vm.stopping() {
            let shells = lock(&o.places).shells.clone();
            let end = pop_wire::to_bytes(&msg::VmRef { vm: o.vm_id });
            for n in shells {
                let _ = node.send(n, MsgType::SpanEnd.number(), Priority::Control, &end);
            }
            o.region.fail("the VM ended");
            return;
        }
        let peers = node.peers();
        let away = lock(&o.places).away.clone();
        let lost: BTreeSet<u32> = away
            .values()
            .copied()
            .filter(|&n| {
                peers
                    .get(n as usize)
                    .is_some_and(|p| p.state == PeerState::Down)
            })
            .collect();
        if let Some(&n) = lost.first() {
            let tids: Vec<String> = away
                .iter()
                .filter(|&(_, &at)| at == n)
                .map(|(t, _)| t.to_string())
                .collect();
            let pages = o.region.held_only_by(n);
            let why = format!(
                "node {n}, which ran thread{} {} of the VM, was lost; {pages} page{} only it held {} gone",
                if tids.len() == 1 { "" } else { "s" },
                tids.join(", "),
                if pages == 1 { "" } else { "s" },
                if pages == 1 { "is" } else { "are" },
            );
            vm.finish(Outcome::Error(why.clone()));
            o.region.fail(&why);
        }
    }
}
