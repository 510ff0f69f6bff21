//! The guest's virtual counter, kept monotonic across vCPU creation, restores and moves.
//!
//! On AArch64 KVM the virtual counter is one per VM (`CNTVOFF` is shared by its vCPUs), and
//! before Linux 6.4 creating a vCPU resets it to zero for every vCPU of the VM, and setting
//! `KVM_REG_ARM_TIMER_CNT` on one vCPU sets it for all. So the VMM keeps, per VM, bounds of
//! the counter's offset from the host's (guest minus host), learnt by reading the counter
//! back between two reads of the host's: after a vCPU is created, the counter is set again
//! to at least where it was; a restored state only ever moves it forward.

use std::sync::Mutex;

use kvm_ioctls::VcpuFd;

use super::regs;

/// Most attempts at setting the counter before giving up (each doubles the margin).
const MAX_TRIES: u32 = 8;

/// Bounds of the VM's counter offset from the host's counter, and the margin a set adds to
/// cover the time the ioctl takes.
#[derive(Debug, Default)]
struct Known {
    /// Guest minus host counter: `low <= offset <= high` (unknown before the first vCPU).
    offset: Option<(i128, i128)>,
    /// Ticks added when the counter is set so that it does not go back (grows when a set
    /// took longer).
    margin: u64,
}

/// The VM-wide counter (see the module documentation); shared by the VM's vCPUs.
#[derive(Debug, Default)]
pub struct VmCounter {
    known: Mutex<Known>,
}

/// The host's counter (the virtual counter at EL0, which runs with the guest's).
pub fn host_counter() -> u64 {
    let value: u64;
    // SAFETY: reading CNTVCT_EL0 is allowed at EL0 on Linux and has no side effects.
    unsafe { std::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) value, options(nostack)) };
    value
}

/// The host counter's frequency in Hz.
pub fn counter_hz() -> u64 {
    let hz: u64;
    // SAFETY: reading CNTFRQ_EL0 is allowed at EL0 on Linux and has no side effects.
    unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
    hz
}

fn get(fd: &VcpuFd) -> Result<u64, kvm_ioctls::Error> {
    regs::get(fd, regs::TIMER_CNT)
}

fn set(fd: &VcpuFd, value: u64) -> Result<(), kvm_ioctls::Error> {
    regs::set(fd, regs::TIMER_CNT, value)
}

/// Bounds of the offset, from one read of the counter between two reads of the host's.
fn observe(fd: &VcpuFd) -> Result<(i128, i128), kvm_ioctls::Error> {
    let before = i128::from(host_counter());
    let guest = i128::from(get(fd)?);
    let after = i128::from(host_counter());
    Ok((guest - after, guest - before))
}

impl Known {
    /// Sets the counter through `fd` to at least `target` and to at least where an offset
    /// of `floor` puts it (so no vCPU's counter goes back), then learns where it is.
    fn set_at_least(
        &mut self,
        fd: &VcpuFd,
        floor: i128,
        target: u64,
    ) -> Result<(), kvm_ioctls::Error> {
        if self.margin == 0 {
            // 50 µs to start with: a few ioctls under nested emulation.
            self.margin = (counter_hz() / 20_000).max(1);
        }
        for _ in 0..MAX_TRIES {
            let host = i128::from(host_counter());
            let value = (host + floor + i128::from(self.margin)).max(i128::from(target));
            set(fd, value as u64)?;
            let (low, high) = observe(fd)?;
            if low >= floor {
                self.offset = Some((low, high));
                return Ok(());
            }
            // The set took longer than the margin: the counter may have gone back.
            self.margin = self.margin.saturating_mul(2);
        }
        Err(kvm_ioctls::Error::new(libc::ETIMEDOUT))
    }
}

impl VmCounter {
    /// Creates a vCPU of this VM with `create` (which also initialises it), under the
    /// counter's lock so no restore interleaves: the first vCPU learns where KVM started
    /// the counter; after a later one the counter is read, and only if the creation reset
    /// it (Linux before 6.4) is it set back to at least where it was. On such kernels the
    /// VM's running vCPUs can see the counter behind between the reset and the set (a few
    /// ioctls); newer kernels leave it alone, and then so does this.
    pub fn create(
        &self,
        create: impl FnOnce() -> Result<VcpuFd, kvm_ioctls::Error>,
    ) -> Result<VcpuFd, kvm_ioctls::Error> {
        let mut known = crate::sync::lock(&self.known);
        let fd = create()?;
        // What this vCPU reads now (guest minus host).
        let now = observe(&fd)?;
        match known.offset {
            // Behind every offset it can have had: reset (a reset goes back by the whole
            // time since the first vCPU, far more than the bounds' width).
            Some((low, high)) if now.1 < low => known.set_at_least(&fd, high, 0)?,
            // Unchanged: both bounds hold.
            Some((low, high)) if now.0 <= high => {
                known.offset = Some((low.max(now.0), high.min(now.1)))
            }
            _ => known.offset = Some(now),
        }
        Ok(fd)
    }

    /// A state saved at counter `saved` resumes on `fd`: the counter is left alone when it
    /// is past `saved` already (other threads of the VM may run on it), else it is set to
    /// `target` (where the saved counter goes on from, at least `saved`), forward only.
    pub fn resume(&self, fd: &VcpuFd, saved: u64, target: u64) -> Result<(), kvm_ioctls::Error> {
        let mut known = crate::sync::lock(&self.known);
        let (low, high) = match known.offset {
            Some(bounds) => bounds,
            None => observe(fd)?,
        };
        if i128::from(host_counter()) + low >= i128::from(saved) {
            known.offset = Some((low, high));
            return Ok(());
        }
        known.set_at_least(fd, high, target.max(saved))
    }
}
