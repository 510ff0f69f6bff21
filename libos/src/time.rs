//! Clocks from the CPU's counter, anchored to the host clocks the VMM sampled at boot.

use crate::{arch, boot_info};

/// Nanoseconds elapsed since the VMM's reference instant.
pub fn since_boot_ns() -> u64 {
    let info = boot_info::info();
    let ticks = arch::counter().wrapping_sub(info.boot_counter);
    (u128::from(ticks) * 1_000_000 / u128::from(info.counter_khz.max(1))) as u64
}

/// `CLOCK_MONOTONIC` in nanoseconds (the host's monotonic clock at boot, plus the counter).
pub fn monotonic_ns() -> u64 {
    boot_info::info().boot_monotonic_ns + since_boot_ns()
}

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    boot_info::info().boot_realtime_ns + since_boot_ns()
}
