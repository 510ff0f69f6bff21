//! Threads, sleeping and yielding. Each thread is a vCPU; blocking happens in the VMM.

use pop_abi::Hypercall;
use pop_abi::Timespec;
use pop_abi::errno::EINVAL;

use super::{check, fail, hc};
use crate::thread;

/// The only priority there is: vCPUs are scheduled by the host.
const NORMAL_PRIO: u8 = 2;

#[unsafe(no_mangle)]
extern "C" fn sys_spawn2(
    func: extern "C" fn(usize),
    arg: usize,
    _prio: u8,
    stack_size: usize,
    _core_id: isize,
) -> u32 {
    match thread::spawn(func, arg, stack_size) {
        Ok(tid) => tid,
        Err(errno) => {
            fail(errno);
            0
        }
    }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_spawn(
    id: *mut u32,
    func: extern "C" fn(usize),
    arg: usize,
    _prio: u8,
    _core_id: isize,
) -> i32 {
    match thread::spawn(func, arg, 0) {
        Ok(tid) => {
            if !id.is_null() {
                // SAFETY: the caller passes a valid out pointer or null.
                unsafe { id.write(tid) };
            }
            0
        }
        Err(errno) => fail(errno) as i32,
    }
}

#[unsafe(no_mangle)]
extern "C" fn sys_join(tid: u32) -> i32 {
    check(i64::from(thread::join(tid))) as i32
}

#[unsafe(no_mangle)]
extern "C" fn sys_yield() {
    hc(Hypercall::Yield, 0, 0, 0, 0, 0);
}

#[unsafe(no_mangle)]
extern "C" fn sys_usleep(usecs: u64) {
    hc(Hypercall::Sleep, usecs.saturating_mul(1000), 0, 0, 0, 0);
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_nanosleep(req: *const Timespec) -> i32 {
    if req.is_null() {
        return fail(EINVAL) as i32;
    }
    // SAFETY: the caller passes a valid timespec.
    let req = unsafe { req.read() };
    if req.tv_sec < 0 || !(0..1_000_000_000).contains(&req.tv_nsec) {
        return fail(EINVAL) as i32;
    }
    let ns = (req.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(req.tv_nsec as u64);
    hc(Hypercall::Sleep, ns, 0, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
extern "C" fn sys_get_priority() -> u8 {
    NORMAL_PRIO
}

/// Priorities do not exist (the host schedules vCPUs); setting one changes nothing.
#[unsafe(no_mangle)]
extern "C" fn sys_set_priority(_tid: u32, _prio: u8) {}
