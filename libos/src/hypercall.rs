//! The hypercalls that do not return, over the architecture's [`call`].

use core::sync::atomic::AtomicU32;

use pop_abi::Hypercall;

pub use crate::arch::hypercall::call;
use crate::arch::hypercall::{FaultFrame, unreachable_after_hypercall};

/// Ends the whole VM with `status`.
pub fn exit(status: i32) -> ! {
    call(Hypercall::Exit, status as u64, 0, 0, 0, 0);
    unreachable_after_hypercall()
}

/// Ends the whole VM as aborted.
pub fn abort() -> ! {
    call(Hypercall::Abort, 0, 0, 0, 0, 0);
    unreachable_after_hypercall()
}

/// Ends the calling thread; its vCPU returns to the VMM's pool, and the VMM then sets `done`
/// to 1 and wakes its waiters.
pub fn thread_exit(done: &AtomicU32) -> ! {
    call(Hypercall::ThreadExit, done.as_ptr() as u64, 0, 0, 0, 0);
    unreachable_after_hypercall()
}

/// Reports an unrecoverable exception with the saved register frame.
pub fn fault(frame: *const FaultFrame) -> ! {
    call(Hypercall::Fault, frame as u64, 0, 0, 0, 0);
    unreachable_after_hypercall()
}
