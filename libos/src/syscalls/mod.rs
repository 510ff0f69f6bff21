//! The `sys_*` functions of `hermit-abi` 0.5 that std for the hermit targets calls.
//!
//! Every function declared by `hermit-abi` is defined here, so any std feature links. The
//! ones this libos cannot provide (networking, the legacy HermitCore task API, ...) are in
//! [`unsupported`] and fail with `-ENOSYS`; none pretends to succeed.
//!
//! Conventions (those of `hermit-abi`): failures return a negated errno; the thread's last
//! errno is also kept for `sys_get_errno`.

use core::cell::Cell;

use pop_abi::Hypercall;

use crate::hypercall;

mod fs;
mod io;
mod memory;
mod process;
mod sync;
mod threads;
mod time;
mod unsupported;

/// The calling thread's last error number.
#[thread_local]
static ERRNO: Cell<i32> = Cell::new(0);

/// Issues a hypercall and records a failure in the thread's errno.
fn hc(nr: Hypercall, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    check(hypercall::call(nr, a0, a1, a2, a3, a4))
}

/// Records `ret` in the thread's errno if it is a negated errno; returns it unchanged.
fn check(ret: i64) -> i64 {
    if ret < 0 {
        ERRNO.set((-ret) as i32);
    }
    ret
}

/// Fails with `errno`: records it and returns it negated.
fn fail(errno: i32) -> i64 {
    check(-i64::from(errno))
}
