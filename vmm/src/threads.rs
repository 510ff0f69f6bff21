//! Guest threads on vCPUs (design decision 2): thread ids, the pool of idle vCPUs whose host
//! threads wait for a new guest thread, and joining.

use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

use crate::persist::Persist;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use pop_abi::errno::{EAGAIN, EINTR, ESRCH};

use crate::arch::ThreadStart;
use crate::moving::ThreadState;

/// Thread id of the main thread.
pub const MAIN_TID: u32 = 1;

/// Told, once, on the vCPU thread, whether an arriving thread was restored (just before it
/// runs) or why not.
pub type Restored = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What a waiting vCPU thread is given to run.
pub enum Next {
    /// A new guest thread.
    Start(ThreadStart),
    /// A guest thread of this vCPU's index coming back from another node, and who is told
    /// how restoring it went.
    Arrive(Box<ThreadState>, Restored),
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Next::Start(s) => f.debug_tuple("Start").field(s).finish(),
            Next::Arrive(t, _) => f.debug_tuple("Arrive").field(&t.vcpu.tid).finish(),
        }
    }
}

/// Where a parked vCPU thread waits for its next guest thread.
#[derive(Debug, Default)]
pub struct Mailbox {
    next: Mutex<Option<Next>>,
    ready: Condvar,
    /// Its vCPU thread has ended ([`Mailbox::close`]): nothing posted here would be taken.
    closed: std::sync::atomic::AtomicBool,
}

impl Mailbox {
    fn post(&self, start: ThreadStart) {
        // (An idle mailbox's thread waits in the pool: it is open.)
        let _ = self.post_next(Next::Start(start));
    }

    /// Hands the waiting vCPU thread a guest thread (arriving from another node); gives it
    /// back if that thread has ended or has one not yet taken.
    pub fn post_next(&self, next: Next) -> Result<(), Next> {
        let mut slot = crate::sync::lock(&self.next);
        if slot.is_some() || self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(next);
        }
        *slot = Some(next);
        self.ready.notify_one();
        Ok(())
    }

    /// Its vCPU thread ends: from now on nothing is posted here; returns what was posted
    /// and not taken.
    pub fn close(&self) -> Option<Next> {
        let mut slot = crate::sync::lock(&self.next);
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        slot.take()
    }

    fn wake(&self) {
        let _guard = crate::sync::lock(&self.next);
        self.ready.notify_one();
    }

    /// Blocks until a guest thread is posted (`Some`) or `stopping()` holds (`None`).
    pub fn wait(&self, stopping: impl Fn() -> bool) -> Option<Next> {
        let mut next = crate::sync::lock(&self.next);
        loop {
            if let Some(start) = next.take() {
                return Some(start);
            }
            if stopping() {
                return None;
            }
            next = crate::sync::wait(&self.ready, next);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Exited,
}

#[derive(Debug, Default)]
struct Table {
    last_tid: u32,
    states: HashMap<u32, State>,
    running: u32,
    vcpus: u32,
    idle: Vec<Arc<Mailbox>>,
    /// Every vCPU on this node, by index.
    mailboxes: HashMap<u32, Arc<Mailbox>>,
    handles: Vec<JoinHandle<()>>,
    closed: bool,
    /// A shell of a VM whose thread table is on its origin: `states` holds the threads here.
    shell: bool,
}

/// All guest threads of a VM.
#[derive(Debug, Default)]
pub struct Threads {
    table: Mutex<Table>,
    exited: Condvar,
    max_vcpus: u32,
}

impl Threads {
    /// No threads yet; at most `max_vcpus` may exist at once.
    pub fn new(max_vcpus: u32) -> Threads {
        Threads {
            max_vcpus,
            ..Default::default()
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        crate::sync::lock(&self.table)
    }

    /// Registers a new thread and places it on a vCPU; `start` is completed with the new tid.
    /// `-EAGAIN` when every vCPU is busy and no more may be created, or the VM is stopping.
    pub fn spawn(
        &self,
        mut start: ThreadStart,
        add_vcpu: impl FnOnce(u32, ThreadStart, Arc<Mailbox>) -> Result<JoinHandle<()>, ()>,
    ) -> Result<u32, i32> {
        let mut t = self.table();
        if t.closed {
            return Err(EAGAIN);
        }
        let tid = t.last_tid.checked_add(1).ok_or(EAGAIN)?;
        start.tid = tid;
        if let Some(mailbox) = t.idle.pop() {
            mailbox.post(start);
        } else if t.vcpus < self.max_vcpus {
            let mailbox = Arc::new(Mailbox::default());
            let index = t.vcpus;
            let handle = add_vcpu(index, start, mailbox.clone()).map_err(|()| EAGAIN)?;
            t.vcpus += 1;
            t.mailboxes.insert(index, mailbox);
            t.handles.push(handle);
        } else {
            return Err(EAGAIN);
        }
        t.last_tid = tid;
        t.states.insert(tid, State::Running);
        t.running += 1;
        Ok(tid)
    }

    /// Records that `tid` ended and its vCPU (with `mailbox`) is idle. Returns whether no
    /// thread is left running.
    pub fn exited(&self, tid: u32, mailbox: &Arc<Mailbox>) -> bool {
        let mut t = self.table();
        if t.states.insert(tid, State::Exited) == Some(State::Running) {
            t.running -= 1;
        }
        t.idle.push(mailbox.clone());
        self.exited.notify_all();
        t.running == 0
    }

    /// Blocks until `tid` has exited: 0, `-ESRCH` if there is no such thread (or it was
    /// joined already), `-EINTR` if the VM stops meanwhile.
    pub fn join(&self, tid: u32, caller: u32, stopping: impl Fn() -> bool) -> i64 {
        let mut t = self.table();
        loop {
            match t.states.get(&tid) {
                None => return -i64::from(ESRCH),
                Some(State::Exited) => {
                    t.states.remove(&tid);
                    return 0;
                }
                Some(State::Running) if tid == caller => return -i64::from(libc::EDEADLK),
                Some(State::Running) => {}
            }
            if stopping() {
                return -i64::from(EINTR);
            }
            t = crate::sync::wait(&self.exited, t);
        }
    }

    /// Refuses new threads from now on, wakes every waiter (parked vCPUs and joins), and
    /// hands over the host threads for the caller to stop and reap.
    pub fn close(&self) -> Vec<JoinHandle<()>> {
        let mut t = self.table();
        t.closed = true;
        for mailbox in t.mailboxes.values() {
            mailbox.wake();
        }
        self.exited.notify_all();
        std::mem::take(&mut t.handles)
    }

    /// Number of vCPUs created so far.
    pub fn vcpu_count(&self) -> u32 {
        self.table().vcpus
    }

    /// Number of guest threads running (not exited).
    pub fn running(&self) -> u32 {
        self.table().running
    }

    /// Whether guest thread `tid` exists and has not exited.
    pub fn is_running(&self, tid: u32) -> bool {
        self.table().states.get(&tid) == Some(&State::Running)
    }

    /// Interrupts every vCPU host thread (out of `KVM_RUN` or a blocking host call), and
    /// wakes the joins waiting here.
    pub fn kick_all(&self) {
        use std::os::unix::thread::JoinHandleExt;
        let t = self.table();
        for handle in &t.handles {
            if !handle.is_finished() {
                crate::sys::kick(handle.as_pthread_t());
            }
        }
        self.exited.notify_all();
    }

    /// Adds a re-created vCPU's host thread (the next index); `idle` if no guest thread runs
    /// on it.
    pub fn add_restored(&self, mailbox: Arc<Mailbox>, handle: JoinHandle<()>, idle: bool) {
        let mut t = self.table();
        let index = t.vcpus;
        t.vcpus += 1;
        if idle {
            t.idle.push(mailbox.clone());
        }
        t.mailboxes.insert(index, mailbox);
        t.handles.push(handle);
    }

    /// Makes this the table of a shell (a VM's copy on a node other than its origin, whose
    /// thread table is there): it lists only the threads that run here.
    pub fn mark_shell(&self) {
        self.table().shell = true;
    }

    /// Thread `tid` came to this node (`here`) or left it. Only a shell's table changes:
    /// the origin's keeps every thread of the VM wherever it runs.
    pub fn visiting(&self, tid: u32, here: bool) {
        let mut t = self.table();
        if !t.shell {
            return;
        }
        if here {
            if t.states.insert(tid, State::Running) != Some(State::Running) {
                t.running += 1;
            }
        } else if t.states.remove(&tid) == Some(State::Running) {
            t.running -= 1;
        }
    }

    /// The vCPU of index `index` on this node, if it has one.
    pub fn mailbox(&self, index: u32) -> Option<Arc<Mailbox>> {
        self.table().mailboxes.get(&index).cloned()
    }

    /// Adds the host thread of vCPU `index`, made here for a thread that arrived from another
    /// node (a VM spanning nodes has its vCPU indices given out by its origin). `false` if
    /// the table is closed (the VM is stopping).
    pub fn add_arrived(&self, index: u32, mailbox: Arc<Mailbox>, handle: JoinHandle<()>) -> bool {
        let mut t = self.table();
        if t.closed {
            return false;
        }
        t.vcpus = t.vcpus.max(index + 1);
        t.mailboxes.insert(index, mailbox);
        t.handles.push(handle);
        true
    }

    /// Records that `tid`, whose vCPU here is `index` but which ran on another node, ended
    /// there: its vCPU here is idle again. Returns whether no thread is left running.
    pub fn exited_elsewhere(&self, tid: u32, index: u32) -> bool {
        let mut t = self.table();
        if t.states.insert(tid, State::Exited) == Some(State::Running) {
            t.running -= 1;
        }
        if let Some(mailbox) = t.mailboxes.get(&index).cloned()
            && !t.idle.iter().any(|m| Arc::ptr_eq(m, &mailbox))
        {
            t.idle.push(mailbox);
        }
        self.exited.notify_all();
        t.running == 0
    }
}

impl Persist for Threads {
    type State = ThreadTable;
    /// The most vCPUs of the VM.
    type Args<'a> = u32;
    type Error = std::convert::Infallible;

    /// The table as it migrates: the last tid given out, every known thread with whether it
    /// has exited (and not been joined yet), and the number of vCPUs.
    fn save(&self) -> Result<ThreadTable, Self::Error> {
        let t = self.table();
        let mut threads: Vec<(u32, bool)> = t
            .states
            .iter()
            .map(|(&tid, &state)| (tid, state == State::Exited))
            .collect();
        threads.sort_unstable();
        Ok(ThreadTable {
            last_tid: t.last_tid,
            threads,
            vcpus: t.vcpus,
        })
    }

    /// A table continuing `table` (on the destination of a migration); the vCPUs are added
    /// with [`Threads::add_restored`].
    fn restore(max_vcpus: u32, table: &ThreadTable) -> Result<Threads, Self::Error> {
        let threads = Threads::new(max_vcpus);
        {
            let mut t = threads.table();
            t.last_tid = table.last_tid;
            for &(tid, exited) in &table.threads {
                let state = if exited {
                    State::Exited
                } else {
                    State::Running
                };
                t.states.insert(tid, state);
                if !exited {
                    t.running += 1;
                }
            }
        }
        Ok(threads)
    }
}

/// Most entries of a [`ThreadTable`] from the network.
pub const MAX_TABLE_THREADS: usize = 1 << 16;

/// The thread table of a migrating VM (see [`Threads`]' [`Persist`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ThreadTable {
    /// The last thread id given out.
    pub last_tid: u32,
    /// Every thread not yet joined: (tid, exited).
    pub threads: Vec<(u32, bool)>,
    /// vCPUs created (indices `0..vcpus`).
    pub vcpus: u32,
}

impl Encode for ThreadTable {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.last_tid).u32(self.threads.len() as u32);
        for &(tid, exited) in &self.threads {
            e.u32(tid);
            exited.encode(e);
        }
        e.u32(self.vcpus);
    }
}

impl Decode for ThreadTable {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let last_tid = d.u32()?;
        let n = d.u32()? as usize;
        if n > MAX_TABLE_THREADS {
            return Err(WireError("thread table too long"));
        }
        let mut threads = Vec::with_capacity(n.min(d.rest().len() / 5));
        for _ in 0..n {
            threads.push((d.u32()?, bool::decode(d)?));
        }
        Ok(ThreadTable {
            last_tid,
            threads,
            vcpus: d.u32()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> ThreadStart {
        ThreadStart {
            tid: 0,
            entry: 0,
            func: 0,
            arg: 0,
            stack_top: 0,
            thread_pointer: 0,
            node: None,
        }
    }

    #[test]
    fn tids_increase_and_vcpus_are_reused() {
        let threads = Threads::new(2);
        let spawned = Mutex::new(Vec::new());
        let add = |i: u32, s: ThreadStart, m: Arc<Mailbox>| {
            spawned.lock().unwrap().push((i, s.tid, m));
            Ok(std::thread::spawn(|| {}))
        };
        assert_eq!(threads.spawn(start(), add), Ok(1));
        assert_eq!(threads.spawn(start(), add), Ok(2));
        assert_eq!(threads.spawn(start(), add), Err(EAGAIN));
        assert_eq!(threads.vcpu_count(), 2);
        let mailbox = spawned.lock().unwrap()[1].2.clone();
        assert!(!threads.exited(2, &mailbox));
        assert_eq!(threads.spawn(start(), add), Ok(3));
        match mailbox.wait(|| false) {
            Some(Next::Start(s)) => assert_eq!(s.tid, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(threads.vcpu_count(), 2);
        assert_eq!(threads.join(2, 1, || false), 0);
        assert_eq!(threads.join(2, 1, || false), -i64::from(ESRCH));
        assert_eq!(threads.join(99, 1, || false), -i64::from(ESRCH));
        assert_eq!(threads.join(1, 1, || false), -i64::from(libc::EDEADLK));
        assert_eq!(threads.join(3, 1, || true), -i64::from(EINTR));
        for h in threads.close() {
            h.join().unwrap();
        }
        assert_eq!(threads.spawn(start(), add), Err(EAGAIN));
    }

    #[test]
    fn join_waits_for_exit() {
        let threads = Arc::new(Threads::new(4));
        let mailbox = Arc::new(Mailbox::default());
        let add = |_: u32, _: ThreadStart, _: Arc<Mailbox>| Ok(std::thread::spawn(|| {}));
        let tid = threads.spawn(start(), add).unwrap();
        let t2 = threads.clone();
        let m2 = mailbox.clone();
        let exiter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            t2.exited(tid, &m2)
        });
        assert_eq!(threads.join(tid, 99, || false), 0);
        assert!(exiter.join().unwrap(), "no thread left running");
    }
}
