//! The guest clock across a migration. The libos converts its counter with the `BootInfo`
//! clock reference (counter, frequency, host realtime and monotonic at that counter). On the
//! destination the reference is re-anchored: the guest counter continues from the source's
//! (plus the time the VM was stopped), CLOCK_MONOTONIC continues from the value it had, and
//! CLOCK_REALTIME follows the destination host's clock.

use std::mem::offset_of;

use pop_abi::BootInfo;
use pop_abi::layout::BOOT_INFO_ADDR;

use vmm::memory::GuestMem;

/// Longest stop accounted for (a larger difference of host clocks is taken as skew).
const MAX_STOP_NS: u64 = 60_000_000_000;

fn field(mem: &GuestMem, offset: usize) -> u64 {
    mem.read_u64(BOOT_INFO_ADDR + offset as u64).unwrap_or(0)
}

/// Re-anchors the clock reference in `mem` (a migrated VM's memory, all vCPUs stopped): the
/// guest counter read `counter` on the source when the VM stopped at host realtime
/// `paused_realtime_ns` there; the destination's counter runs at `dest_khz`. Returns the value
/// to give every vCPU's counter now.
pub fn carry(mem: &GuestMem, counter: u64, paused_realtime_ns: u64, dest_khz: u64) -> u64 {
    let src_khz = field(mem, offset_of!(BootInfo, counter_khz)).max(1);
    let ref_counter = field(mem, offset_of!(BootInfo, boot_counter));
    let ref_monotonic = field(mem, offset_of!(BootInfo, boot_monotonic_ns));
    let now_realtime = vmm::sys::realtime_ns();
    let stopped_ns = now_realtime
        .saturating_sub(paused_realtime_ns)
        .min(MAX_STOP_NS);
    let to_ns = |ticks: u64, khz: u64| (u128::from(ticks) * 1_000_000 / u128::from(khz)) as u64;
    let stopped_ticks = (u128::from(stopped_ns) * u128::from(src_khz) / 1_000_000) as u64;
    let new_counter = counter.wrapping_add(stopped_ticks);
    let monotonic = ref_monotonic + to_ns(new_counter.wrapping_sub(ref_counter), src_khz);
    let dest_khz = if dest_khz == 0 { src_khz } else { dest_khz };
    vmm::boot::write_clock_reference(mem, new_counter, now_realtime, monotonic);
    let _ = mem.write_u64(
        BOOT_INFO_ADDR + offset_of!(BootInfo, counter_khz) as u64,
        dest_khz,
    );
    new_counter
}
