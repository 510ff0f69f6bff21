//! Futexes of a VM whose threads span nodes, kept in one place (the VM's origin): a wait on
//! one node must be woken by a wake on any other, with no wake-up lost. Every wait and wake of
//! the VM comes here, from the origin's own vCPUs or from other nodes' messages. A wait checks
//! the guest word (through the DSM, so it reads the word's last write) and queues its waiter
//! under the table's lock; a wake takes waiters under the same lock. A waker's store precedes
//! its wake, so a wait that read the old value was queued before the wake looks: the wake
//! finds it. A waiter that gives up (a timeout, a pause) cancels, and learns whether a wake
//! took it meanwhile (then it reports a wake-up, so that none is lost).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Who waits: an id unique in the table (the caller chooses it: node, vCPU, sequence) and
/// what to do when woken (called once, outside the lock).
pub struct Waiter {
    /// Its id.
    pub id: u64,
    /// Runs when a wake takes it.
    pub woken: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("id", &self.id).finish()
    }
}

/// What a wait did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// Queued: a wake (or a cancel) ends it.
    Queued,
    /// The word did not hold the expected value: not queued.
    ValueChanged,
}

/// The futex table of one VM: waiters by guest address, in arrival order.
#[derive(Debug, Default)]
pub struct Futexes {
    queues: Mutex<HashMap<u64, VecDeque<Waiter>>>,
}

impl Futexes {
    /// Queues `waiter` on the word at guest address `addr` if `holds()` (run under the
    /// table's lock: it reads the word) says it still holds the expected value.
    pub fn wait(&self, addr: u64, holds: impl FnOnce() -> bool, waiter: Waiter) -> Waited {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if !holds() {
            return Waited::ValueChanged;
        }
        q.entry(addr).or_default().push_back(waiter);
        Waited::Queued
    }

    /// Wakes up to `count` waiters on `addr`, oldest first; returns how many.
    pub fn wake(&self, addr: u64, count: u32) -> u32 {
        let taken: Vec<Waiter> = {
            let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let Some(queue) = q.get_mut(&addr) else {
                return 0;
            };
            let n = (count as usize).min(queue.len());
            let taken = queue.drain(..n).collect();
            if queue.is_empty() {
                q.remove(&addr);
            }
            taken
        };
        let n = taken.len() as u32;
        for w in taken {
            (w.woken)();
        }
        n
    }

    /// Takes waiter `id` off its queue: `true` if it was still waiting, `false` if a wake
    /// took it (or there is no such waiter).
    pub fn cancel(&self, id: u64) -> bool {
        let mut q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for (&addr, queue) in q.iter_mut() {
            if let Some(at) = queue.iter().position(|w| w.id == id) {
                queue.remove(at);
                found = Some((addr, queue.is_empty()));
                break;
            }
        }
        match found {
            Some((addr, true)) => {
                q.remove(&addr);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// How many waiters wait, on every address.
    pub fn waiting(&self) -> usize {
        let q = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        q.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn waiter(id: u64, woken: &Arc<AtomicU32>) -> Waiter {
        let woken = woken.clone();
        Waiter {
            id,
            woken: Box::new(move || {
                woken.fetch_add(1, Ordering::SeqCst);
            }),
        }
    }

    #[test]
    fn waits_queue_in_order_and_wakes_take_them() {
        let f = Futexes::default();
        let woken = Arc::new(AtomicU32::new(0));
        assert_eq!(f.wait(8, || true, waiter(1, &woken)), Waited::Queued);
        assert_eq!(f.wait(8, || true, waiter(2, &woken)), Waited::Queued);
        assert_eq!(f.wait(16, || true, waiter(3, &woken)), Waited::Queued);
        assert_eq!(f.wait(8, || false, waiter(4, &woken)), Waited::ValueChanged);
        assert_eq!(f.waiting(), 3);
        assert_eq!(f.wake(8, 1), 1);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        // Waiter 1 was taken (oldest first): cancelling it says so; 2 is still there.
        assert!(!f.cancel(1));
        assert!(f.cancel(2));
        assert_eq!(f.wake(8, u32::MAX), 0);
        assert_eq!(f.wake(16, u32::MAX), 1);
        assert_eq!(f.waiting(), 0);
    }

    #[test]
    fn no_wake_is_lost_between_a_store_and_a_wait() {
        // A "lock word" and threads that wait while it is 1; a waker stores 0, then wakes:
        // every waiter that queued is woken, every other saw 0.
        for round in 0..200 {
            let f = Arc::new(Futexes::default());
            let word = Arc::new(AtomicU32::new(1));
            let woken = Arc::new(AtomicU32::new(0));
            let waiters: Vec<_> = (0..4u64)
                .map(|i| {
                    let (f, word, woken) = (f.clone(), word.clone(), woken.clone());
                    std::thread::spawn(move || {
                        let w = waiter(round * 10 + i, &woken);
                        f.wait(0, || word.load(Ordering::SeqCst) == 1, w) == Waited::Queued
                    })
                })
                .collect();
            word.store(0, Ordering::SeqCst);
            let woke = f.wake(0, u32::MAX);
            let queued = waiters
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|&q| q)
                .count() as u32;
            // A waiter that queued after the wake would have missed it: none can (it sees 0).
            assert_eq!(f.wake(0, u32::MAX), 0, "round {round}: a wake-up was lost");
            assert_eq!(woke, queued, "round {round}");
            assert_eq!(f.waiting(), 0);
        }
    }
}
