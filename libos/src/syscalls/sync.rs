//! Futexes (blocking in the VMM on a host futex over the same memory) and the semaphores
//! built on them.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU32, Ordering};

use pop_abi::Timespec;
use pop_abi::errno::{EAGAIN, EINVAL, ETIMEDOUT};
use pop_abi::hypercall::NO_TIMEOUT;

use super::{check, fail};
use crate::{sync, time};

/// `flags` bit: the timeout is relative (otherwise absolute on the monotonic clock).
const FUTEX_RELATIVE_TIMEOUT: u32 = 1;

fn timespec_ns(ts: &Timespec) -> Option<u64> {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return None;
    }
    Some(
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64),
    )
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_futex_wait(
    address: *mut u32,
    expected: u32,
    timeout: *const Timespec,
    flags: u32,
) -> i32 {
    if address.is_null() || !address.is_aligned() {
        return fail(EINVAL) as i32;
    }
    let timeout_ns = if timeout.is_null() {
        NO_TIMEOUT
    } else {
        // SAFETY: the caller passes a valid timespec or null.
        let Some(ns) = timespec_ns(unsafe { &*timeout }) else {
            return fail(EINVAL) as i32;
        };
        if flags & FUTEX_RELATIVE_TIMEOUT != 0 {
            ns
        } else {
            ns.saturating_sub(time::monotonic_ns())
        }
    };
    // SAFETY: a valid, aligned futex word (checked above; the VMM checks it again).
    let word = unsafe { AtomicU32::from_ptr(address) };
    check(sync::futex_wait(word, expected, timeout_ns)) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_futex_wake(address: *mut u32, count: i32) -> i32 {
    if address.is_null() || !address.is_aligned() {
        return fail(EINVAL) as i32;
    }
    // SAFETY: a valid, aligned futex word.
    let word = unsafe { AtomicU32::from_ptr(address) };
    check(sync::futex_wake(word, count)) as i32
}

/// A counting semaphore: the count, waited on through the futex.
type Semaphore = AtomicU32;

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_sem_init(sem: *mut *const Semaphore, _pshared: i32, value: u32) -> i32 {
    if sem.is_null() {
        return fail(EINVAL) as i32;
    }
    // SAFETY: the caller passes a valid sem_t to initialise.
    unsafe { sem.write(Box::into_raw(Box::new(Semaphore::new(value)))) };
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_sem_destroy(sem: *mut *const Semaphore) -> i32 {
    // SAFETY: a sem_t initialised by sys_sem_init.
    unsafe {
        if sem.is_null() || (*sem).is_null() {
            return fail(EINVAL) as i32;
        }
        drop(Box::from_raw((*sem).cast_mut()));
        sem.write(core::ptr::null());
    }
    0
}

/// The semaphore behind a `sem_t`, if initialised.
unsafe fn semaphore<'a>(sem: *mut *const Semaphore) -> Option<&'a Semaphore> {
    // SAFETY: the caller passes a sem_t initialised by sys_sem_init (or null).
    unsafe { sem.as_ref().and_then(|s| s.as_ref()) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_sem_post(sem: *mut *const Semaphore) -> i32 {
    // SAFETY: see `semaphore`.
    let Some(s) = (unsafe { semaphore(sem) }) else {
        return fail(EINVAL) as i32;
    };
    s.fetch_add(1, Ordering::Release);
    sync::futex_wake(s, 1);
    0
}

fn try_down(s: &Semaphore) -> bool {
    s.fetch_update(Ordering::Acquire, Ordering::Relaxed, |v| v.checked_sub(1))
        .is_ok()
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_sem_trywait(sem: *mut *const Semaphore) -> i32 {
    // SAFETY: see `semaphore`.
    let Some(s) = (unsafe { semaphore(sem) }) else {
        return fail(EINVAL) as i32;
    };
    if try_down(s) { 0 } else { fail(EAGAIN) as i32 }
}

/// Waits until the semaphore can be decremented, at most until `abs_timeout` (realtime) if
/// it is not null.
#[unsafe(no_mangle)]
unsafe extern "C" fn sys_sem_timedwait(
    sem: *mut *const Semaphore,
    abs_timeout: *const Timespec,
) -> i32 {
    // SAFETY: see `semaphore`.
    let Some(s) = (unsafe { semaphore(sem) }) else {
        return fail(EINVAL) as i32;
    };
    // SAFETY: the caller passes a valid timespec or null.
    let deadline = match unsafe { abs_timeout.as_ref() } {
        None => None,
        Some(ts) => match timespec_ns(ts) {
            Some(ns) => Some(ns),
            None => return fail(EINVAL) as i32,
        },
    };
    loop {
        if try_down(s) {
            return 0;
        }
        let timeout = match deadline {
            None => NO_TIMEOUT,
            Some(d) => match d.checked_sub(time::realtime_ns()) {
                Some(left) if left > 0 => left,
                _ => return fail(ETIMEDOUT) as i32,
            },
        };
        sync::futex_wait(s, 0, timeout);
    }
}
