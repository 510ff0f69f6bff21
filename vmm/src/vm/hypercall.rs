//! Serving hypercalls (see [`pop_abi::hypercall`] for the calling convention). Each handler
//! checks every guest pointer through [`crate::memory::GuestMem`] and answers with a value or
//! a negated errno.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use pop_abi::Hypercall;
use pop_abi::errno::{EAGAIN, EFAULT, ENOSYS, ETIMEDOUT};
use pop_abi::hypercall::NO_TIMEOUT;

use super::{Outcome, VmShared};
use crate::arch::{HypercallRequest, ThreadStart};
use crate::fs::IO_CHUNK;
use crate::sys::{self, FutexWait};

/// What the vCPU does after a hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Resume the guest with this result.
    Return(i64),
    /// The calling thread ended; its vCPU is free. Then signal the guest word at this
    /// address (0: none).
    ThreadExit(u64),
    /// The VM is over.
    Stop,
    /// The guest reported a fatal exception, with its frame at this address.
    Fault(u64),
    /// The guest aborted (a panic, `std::process::abort`): end the VM.
    Abort,
    /// Set the calling vCPU's thread pointer, then resume with 0.
    SetThreadPointer(u64),
    /// The VM is pausing (to migrate) while this blocking call was in progress: it is to be
    /// issued again, as given here (a sleep with the time left), wherever the VM resumes.
    Pending(HypercallRequest),
    /// Move the calling thread to this node (`pop::migrate`); with the counter it read if it
    /// asks from a call boundary ([`pop_abi::hypercall::MIGRATE_AT_CALL`]).
    Migrate(u32, Option<u64>),
}

/// Serves `request` made by guest thread `tid`.
pub fn handle(vm: &Arc<VmShared>, request: HypercallRequest, tid: u32) -> Flow {
    let [a0, a1, a2, a3, a4] = request.args;
    let Some(call) = Hypercall::from_number(request.nr) else {
        return Flow::Return(-i64::from(ENOSYS));
    };
    let mem = &vm.mem;
    let result = match call {
        Hypercall::Exit => {
            if !vm.hooks.exit_elsewhere(a0 as i32) {
                vm.finish(Outcome::Exit(a0 as i32));
            }
            return Flow::Stop;
        }
        Hypercall::Migrate => {
            let at_call = (a1 & pop_abi::hypercall::MIGRATE_AT_CALL != 0).then_some(a2);
            return Flow::Migrate(a0 as u32, at_call);
        }
        Hypercall::Abort => return Flow::Abort,
        Hypercall::ThreadExit => return Flow::ThreadExit(a0),
        Hypercall::Fault => return Flow::Fault(a0),
        Hypercall::SetThreadPointer => return Flow::SetThreadPointer(a0),
        Hypercall::Write => vm.fs.write(mem, a0, a1, a2),
        Hypercall::Read => vm.fs.read(mem, a0, a1, a2),
        Hypercall::Open => vm.fs.open(mem, a0, a1, a2),
        Hypercall::Close => vm.fs.close(a0),
        Hypercall::Lseek => vm.fs.lseek(a0, a1, a2),
        Hypercall::Fstat => vm.fs.fstat(mem, a0, a1),
        Hypercall::Stat => vm.fs.stat(mem, a0, a1, true),
        Hypercall::Lstat => vm.fs.stat(mem, a0, a1, false),
        Hypercall::Getdents64 => vm.fs.getdents64(mem, a0, a1, a2),
        Hypercall::Mkdir => vm.fs.mkdir(mem, a0, a1),
        Hypercall::Unlink => vm.fs.remove(mem, a0, false),
        Hypercall::Rmdir => vm.fs.remove(mem, a0, true),
        Hypercall::Dup => vm.fs.dup(a0),
        Hypercall::FutexWait => vm.blocking(tid, || futex_wait(vm, tid, a0, a1 as u32, a2)),
        Hypercall::FutexWake => {
            mem.with_atomic_u32(a0, |word| vm.hooks.futex_wake(a0, word, a1 as i32))
        }
        Hypercall::Sleep => match vm.blocking(tid, || sleep(vm, tid, a0)) {
            0 => Ok(0),
            left => {
                return Flow::Pending(HypercallRequest {
                    args: [left, a1, a2, a3, a4],
                    ..request
                });
            }
        },
        Hypercall::Yield => {
            std::thread::yield_now();
            Ok(0)
        }
        Hypercall::Spawn => {
            let start = ThreadStart {
                tid: 0,
                entry: a0,
                func: a1,
                arg: a2,
                stack_top: a3,
                thread_pointer: a4,
                node: None,
            };
            vm.spawn(start).map(i64::from)
        }
        Hypercall::Join => {
            let interrupted = || vm.stopping() || vm.park_requested(tid);
            let result = vm.blocking(tid, || {
                match vm.hooks.join_elsewhere(a0 as u32, tid, &interrupted) {
                    Some(result) => result,
                    None => vm.threads.join(a0 as u32, tid, interrupted),
                }
            });
            if result == -i64::from(pop_abi::errno::EINTR) && vm.park_requested(tid) {
                return Flow::Pending(request);
            }
            Ok(result)
        }
        Hypercall::Entropy => entropy(vm, a0, a1),
        Hypercall::Nodes => nodes(vm, a0, a1),
    };
    Flow::Return(result.unwrap_or_else(|errno| -i64::from(errno)))
}

/// `futex_wait(addr, expected, timeout_ns)` on the host address of the guest word.
fn futex_wait(
    vm: &VmShared,
    tid: u32,
    addr: u64,
    expected: u32,
    timeout_ns: u64,
) -> Result<i64, i32> {
    let timeout = (timeout_ns != NO_TIMEOUT).then(|| Duration::from_nanos(timeout_ns));
    let interrupted = || vm.stopping() || vm.park_requested(tid);
    let outcome = vm.mem.with_atomic_u32(addr, |word| {
        vm.hooks
            .futex_wait(addr, word, expected, timeout, &interrupted)
    })?;
    match outcome {
        FutexWait::Woken | FutexWait::Interrupted => Ok(0),
        FutexWait::ValueChanged => Err(EAGAIN),
        FutexWait::TimedOut => Err(ETIMEDOUT),
    }
}

/// `sleep(ns)`: sleeps on a private futex word, so that a stopping VM can interrupt it.
/// Returns 0 when done, or the nanoseconds left (at least 1) when a pause interrupted it.
fn sleep(vm: &VmShared, tid: u32, ns: u64) -> u64 {
    let deadline = Instant::now().checked_add(Duration::from_nanos(ns));
    let word = AtomicU32::new(0);
    loop {
        let remaining = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        };
        if remaining.is_zero() || vm.stopping() {
            return 0;
        }
        if vm.park_requested(tid) {
            return (remaining.as_nanos().min(u128::from(u64::MAX)) as u64).max(1);
        }
        let timeout = (remaining != Duration::MAX).then_some(remaining);
        sys::futex_wait(&word, 0, timeout);
    }
}

/// `entropy(buf, len)`: random bytes from the host.
fn entropy(vm: &VmShared, buf: u64, len: u64) -> Result<i64, i32> {
    let len = (len as usize).min(IO_CHUNK);
    if !vm.mem.contains(buf, len as u64) {
        return Err(EFAULT);
    }
    let mut bytes = vec![0; len];
    let n = sys::getrandom(&mut bytes).map_err(|e| crate::fs::path::errno(&e))?;
    vm.mem.write(buf, &bytes[..n])?;
    Ok(n as i64)
}

/// `nodes(buf, max)`: the cluster's nodes, as the hooks know them.
fn nodes(vm: &VmShared, buf: u64, max: u64) -> Result<i64, i32> {
    let here = crate::boot::node_id(&vm.mem);
    let nodes = vm.hooks.nodes(here);
    let size = size_of::<pop_abi::NodeEntry>();
    let n = nodes.len().min(max.min(pop_abi::MAX_NODES as u64) as usize);
    let mut bytes = Vec::with_capacity(n * size);
    for e in &nodes[..n] {
        for word in [e.id, e.isa, e.up] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
    }
    if n > 0 {
        vm.mem.write(buf, &bytes)?;
    }
    Ok(nodes.len() as i64)
}
