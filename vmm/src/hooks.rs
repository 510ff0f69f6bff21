//! Where the distributed crates plug into one VM: where a new guest thread runs, how a futex
//! wait or wake is carried out, which nodes the guest sees, and, for a VM whose threads span
//! nodes, moving a thread away and what happens where the VM's thread table is not (a
//! thread's exit, the application's exit, a join). [`LocalHooks`] is a VM on one host: every
//! thread runs here, a futex is the host futex on the host address of the guest word (so a
//! wake from any vCPU, or a store followed by a wake, behaves as between host threads), and
//! threads do not move. The distributed crates replace them to run threads on other nodes and
//! to make futexes work across nodes.

use std::fmt;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use pop_abi::errno::ENOSYS;

use crate::moving::ThreadState;
use pop_abi::{Isa, NodeEntry};

use crate::arch::ThreadStart;
use crate::sys::{self, FutexWait};

/// Where a new guest thread is to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On a vCPU of this VM, on this host.
    Here,
    /// Made here (its tid and vCPU given out by this VM's table), then moved to node `n`
    /// before its first instruction.
    MoveTo(u32),
    /// Asked of node `n`, which has the VM's thread table ([`Hooks::start_remote`]).
    Node(u32),
}

/// The decisions a VM leaves to whoever runs it.
pub trait Hooks: Send + Sync + fmt::Debug {
    /// Where the new thread `start` (its tid not assigned yet) runs.
    fn place_thread(&self, _start: &ThreadStart) -> Placement {
        Placement::Here
    }

    /// Starts `start` on node `node` (after [`Hooks::place_thread`] said so), giving it a
    /// tid of the VM's thread table; returns the tid, or an errno for the guest.
    fn start_remote(&self, _node: u32, _start: ThreadStart) -> Result<u32, i32> {
        Err(ENOSYS)
    }

    /// The cluster's nodes as the guest sees them (`pop::nodes()`); `here` is the node the VM
    /// runs on. A VM alone: only itself, up.
    fn nodes(&self, here: u32) -> Vec<NodeEntry> {
        vec![NodeEntry {
            id: here,
            isa: Isa::NATIVE.abi(),
            up: 1,
        }]
    }

    /// Moves the thread of `thread` (its vCPU stopped and saved, its hypercall answered) to
    /// node `to`, not this one. `Ok`: it runs there now, and its vCPU here waits until the
    /// thread comes back. `Err(errno)` (see [`pop_abi::Hypercall::Migrate`]): nothing moved,
    /// it goes on here.
    fn move_thread(&self, _thread: &ThreadState, _to: u32) -> Result<(), i32> {
        Err(ENOSYS)
    }

    /// Thread `tid` ended on this node, on vCPU `index` (its completion word signalled).
    /// `true` if the VM's thread table is on another node and was told: the VM then does not
    /// end here when no thread is left, its origin decides.
    fn thread_exited(&self, _tid: u32, _index: u32) -> bool {
        false
    }

    /// The application exited with `status` on this node. `true` if the VM's origin is
    /// another node and was told (the VM ends there, then here).
    fn exit_elsewhere(&self, _status: i32) -> bool {
        false
    }

    /// Thread `caller` joins thread `tid`: `Some(result)` when the VM's thread table is on
    /// another node and answered there (`interrupted()` turning true makes it give up with
    /// `-EINTR`); `None` to join here.
    fn join_elsewhere(
        &self,
        _tid: u32,
        _caller: u32,
        _interrupted: &dyn Fn() -> bool,
    ) -> Option<i64> {
        None
    }

    /// Blocks while the guest word at `addr` (mapped here at `word`) holds `expected`, until
    /// a wake, `timeout`, or a signal (the VM kicks its vCPU threads to pause or stop them);
    /// a wait that cannot be interrupted by a signal gives up when `interrupted()` turns true.
    fn futex_wait(
        &self,
        _addr: u64,
        word: &AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
        _interrupted: &dyn Fn() -> bool,
    ) -> FutexWait {
        sys::futex_wait(word, expected, timeout)
    }

    /// Wakes up to `count` threads waiting on the guest word at `addr` (mapped at `word`);
    /// returns how many woke (or a negated errno).
    fn futex_wake(&self, _addr: u64, word: &AtomicU32, count: i32) -> i64 {
        sys::futex_wake(word, count)
    }
}

/// A VM on one host: threads run here, futexes are host futexes.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalHooks;

impl Hooks for LocalHooks {}
