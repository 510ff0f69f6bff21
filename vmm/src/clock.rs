//! The guest clock as a component that migrates. The libos converts its counter with the
//! `BootInfo` clock reference (counter, frequency, host realtime and monotonic at that
//! counter). On the destination the reference is re-anchored: the guest counter continues
//! from the source's (plus the time the VM was stopped), CLOCK_MONOTONIC continues from the
//! value it had, and CLOCK_REALTIME follows the destination host's clock.

use std::mem::offset_of;

use pop_abi::BootInfo;
use pop_abi::layout::BOOT_INFO_ADDR;
use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

use crate::memory::GuestMem;
use crate::persist::Persist;

/// Longest stop accounted for (a larger difference of host clocks is taken as skew).
const MAX_STOP_NS: u64 = 60_000_000_000;

/// The saved clock: the guest counter when the VM stopped, and the host's realtime then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockState {
    /// The guest counter (the largest of its vCPUs') when the VM stopped.
    pub counter: u64,
    /// The host's CLOCK_REALTIME then, in nanoseconds.
    pub paused_realtime_ns: u64,
}

impl ClockState {
    /// Where a counter saved in this state goes on from now, on a host whose counter runs at
    /// `khz` (0: unknown; the stop is then not counted): the saved value plus the time since
    /// (by the host clocks, at most a minute).
    pub fn resumed_counter(&self, khz: u64) -> u64 {
        let stopped_ns = crate::sys::realtime_ns()
            .saturating_sub(self.paused_realtime_ns)
            .min(MAX_STOP_NS);
        let ticks = (u128::from(stopped_ns) * u128::from(khz) / 1_000_000) as u64;
        self.counter.wrapping_add(ticks)
    }
}

impl Encode for ClockState {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.counter).u64(self.paused_realtime_ns);
    }
}

impl Decode for ClockState {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(ClockState {
            counter: d.u64()?,
            paused_realtime_ns: d.u64()?,
        })
    }
}

/// The clock of a stopped VM: the counter its vCPUs run from, and the host's realtime when
/// it stopped or was restored (the reference itself is in guest memory, which moves with the
/// pages).
#[derive(Clone, Copy, Debug)]
pub struct GuestClock {
    counter: u64,
    realtime_ns: u64,
}

/// What restoring a clock needs on this host.
#[derive(Debug)]
pub struct ClockArgs<'a> {
    /// The VM's memory (all of it arrived, vCPUs not running).
    pub mem: &'a GuestMem,
    /// This host's counter frequency in kHz (0: unknown, keep the source's).
    pub counter_khz: u64,
}

impl GuestClock {
    /// The clock of a VM that stopped now, whose vCPUs' counters read at most `counter`.
    pub fn paused(counter: u64) -> GuestClock {
        GuestClock {
            counter,
            realtime_ns: crate::sys::realtime_ns(),
        }
    }

    /// The value every vCPU's counter continues from.
    pub fn counter(&self) -> u64 {
        self.counter
    }
}

impl Persist for GuestClock {
    type State = ClockState;
    type Args<'a> = ClockArgs<'a>;
    type Error = std::convert::Infallible;

    fn save(&self) -> Result<ClockState, Self::Error> {
        Ok(ClockState {
            counter: self.counter,
            paused_realtime_ns: self.realtime_ns,
        })
    }

    /// Re-anchors the clock reference in `args.mem`: the counter goes on from the saved one
    /// plus the time the VM was stopped (by the host clocks, at most a minute: a larger
    /// difference is taken as skew), at this host's frequency from now on.
    fn restore(args: ClockArgs<'_>, state: &ClockState) -> Result<GuestClock, Self::Error> {
        let mem = args.mem;
        let field = |offset: usize| mem.read_u64(BOOT_INFO_ADDR + offset as u64).unwrap_or(0);
        let src_khz = field(offset_of!(BootInfo, counter_khz)).max(1);
        let ref_counter = field(offset_of!(BootInfo, boot_counter));
        let ref_monotonic = field(offset_of!(BootInfo, boot_monotonic_ns));
        let now_realtime = crate::sys::realtime_ns();
        let stopped_ns = now_realtime
            .saturating_sub(state.paused_realtime_ns)
            .min(MAX_STOP_NS);
        let to_ns = |ticks: u64, khz: u64| (u128::from(ticks) * 1_000_000 / u128::from(khz)) as u64;
        let stopped_ticks = (u128::from(stopped_ns) * u128::from(src_khz) / 1_000_000) as u64;
        let counter = state.counter.wrapping_add(stopped_ticks);
        let monotonic = ref_monotonic + to_ns(counter.wrapping_sub(ref_counter), src_khz);
        let dest_khz = if args.counter_khz == 0 {
            src_khz
        } else {
            args.counter_khz
        };
        crate::boot::write_clock_reference(mem, counter, now_realtime, monotonic);
        let _ = mem.write_u64(
            BOOT_INFO_ADDR + offset_of!(BootInfo, counter_khz) as u64,
            dest_khz,
        );
        Ok(GuestClock {
            counter,
            realtime_ns: now_realtime,
        })
    }
}
