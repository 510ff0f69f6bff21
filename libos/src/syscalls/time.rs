//! `clock_gettime` from the CPU counter: no exit to the VMM.

use pop_abi::Timespec;
use pop_abi::errno::EINVAL;

use super::fail;
use crate::time;

const CLOCK_REALTIME: i32 = 1;
const CLOCK_MONOTONIC: i32 = 4;

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_clock_gettime(clock: i32, tp: *mut Timespec) -> i32 {
    let ns = match clock {
        CLOCK_REALTIME => time::realtime_ns(),
        CLOCK_MONOTONIC => time::monotonic_ns(),
        _ => return fail(EINVAL) as i32,
    };
    if tp.is_null() {
        return fail(EINVAL) as i32;
    }
    // SAFETY: std passes a valid timespec.
    unsafe {
        tp.write(Timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i32,
        })
    };
    0
}
