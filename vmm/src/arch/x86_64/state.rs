//! The complete state of an x86-64 vCPU, saved on one host and restored on another (the
//! Firecracker pattern: one plain struct per vCPU, `save` reads it from KVM, `restore` writes
//! it back in an order KVM accepts). There is no in-kernel irqchip, hence no LAPIC state.
//!
//! The wire form is a fixed sequence of KVM's own `repr(C)` structs followed by the MSRs; the
//! decoder checks every length, so a state from the network can be malformed but never read
//! out of bounds.

use kvm_bindings::{
    KVM_MP_STATE_RUNNABLE, Msrs, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{SyncReg, VcpuFd};

use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

/// `IA32_TIME_STAMP_COUNTER`.
pub const MSR_TSC: u32 = 0x10;

/// `CR4.OSXSAVE`: without it the guest cannot run `XSETBV`, so XCR0 keeps its reset value.
const CR4_OSXSAVE: u64 = 1 << 18;

/// The registers KVM copies between the vCPU and the shared `kvm_run` page around `KVM_RUN`
/// (`KVM_CAP_SYNC_REGS`): read and written there, they cost no ioctl of their own.
const SYNCED: [SyncReg; 3] = [
    SyncReg::Register,
    SyncReg::SystemRegister,
    SyncReg::VcpuEvents,
];

/// The MSRs carried besides the TSC (the guest runs in ring 3 and uses few of them; those the
/// host's KVM does not know are skipped).
const MSRS: &[u32] = &[
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// Most MSRs a decoded state may carry.
const MAX_MSRS: u32 = 64;

/// Everything KVM holds about one x86-64 vCPU.
#[derive(Clone, Debug)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// Legacy FPU/SSE state (always present; XSAVE supersedes it when available).
    pub fpu: kvm_fpu,
    /// The (4 KiB) XSAVE area, when the host supports it.
    pub xsave: Option<Box<[u32; 1024]>>,
    /// Extended control registers (XCR0), when the host supports them.
    pub xcrs: Option<kvm_xcrs>,
    /// Pending exceptions, interrupts, NMIs and shadows.
    pub events: kvm_vcpu_events,
    /// Runnable or halted.
    pub mp_state: kvm_mp_state,
    /// The guest's time-stamp counter when the state was read.
    pub tsc: u64,
    /// Other MSRs (index, value).
    pub msrs: Vec<(u32, u64)>,
}

/// Plain KVM structs that are carried as their bytes.
///
/// # Safety
/// Implementors must be `repr(C)` structs of integers (and arrays or unions of integers), for
/// which every bit pattern is a valid value.
unsafe trait Pod: Copy {}
// SAFETY: all of these are bindgen-generated `repr(C)` structs made only of integers, arrays
// of integers and unions of those.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_fpu {}
// SAFETY: an array of integers.
unsafe impl Pod for [u32; 1024] {}
// SAFETY: as above.
unsafe impl Pod for kvm_xcrs {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}

fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` is plain integers, so all of its `size_of::<T>()` bytes are
    // initialised (padding-free bindgen structs) and may be read as bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

fn from_bytes<T: Pod>(bytes: &[u8]) -> T {
    assert_eq!(bytes.len(), size_of::<T>());
    // SAFETY: `bytes` has exactly `size_of::<T>()` bytes (checked) and every bit pattern is
    // a valid `T` (`Pod`); `read_unaligned` copes with any alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

fn put<T: Pod>(e: &mut Encoder, value: &T) {
    e.bytes(bytes_of(value));
}

fn get<T: Pod>(d: &mut Decoder<'_>) -> Result<T, WireError> {
    Ok(from_bytes(d.bytes(size_of::<T>())?))
}

impl VcpuState {
    /// The thread's stack pointer and thread pointer (`FS.base`): where it touches memory
    /// first when it resumes (its stack top, its thread-locals).
    pub fn hot_addresses(&self) -> [u64; 2] {
        [self.regs.rsp, self.sregs.fs.base]
    }

    /// Completes what the last exit left pending (the MMIO store of a hypercall) without
    /// running the guest — `KVM_RUN` with `immediate_exit` set, as KVM's documentation asks
    /// before the state is saved — and has KVM store the general and system registers and
    /// the pending events in the `kvm_run` page on the way out, for [`VcpuState::save`].
    pub fn sync_out(fd: &mut VcpuFd) -> Result<(), kvm_ioctls::Error> {
        for reg in SYNCED {
            fd.set_sync_valid_reg(reg);
        }
        fd.set_kvm_immediate_exit(1);
        let result = fd.run().map(|_| ());
        fd.set_kvm_immediate_exit(0);
        // Other exits need only the general registers (hypercall arguments).
        fd.clear_sync_valid_reg(SyncReg::SystemRegister);
        fd.clear_sync_valid_reg(SyncReg::VcpuEvents);
        match result {
            Err(e) if e.errno() != libc::EINTR && e.errno() != libc::EAGAIN => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads the state of `fd`, which must not have run since [`VcpuState::sync_out`]: the
    /// registers and events from where that left them, the rest with two ioctls.
    pub fn save(fd: &VcpuFd) -> Result<VcpuState, kvm_ioctls::Error> {
        // Each vCPU ioctl makes KVM reload the host's state for the vCPU (about 12 µs under
        // this nested KVM): what is implied or synchronized is not asked for.
        let synced = fd.sync_regs();
        let (regs, sregs, events) = (synced.regs, synced.sregs, synced.events);
        let xsave = fd.get_xsave().ok().map(|x| Box::new(x.region));
        // The XSAVE area holds the legacy FPU/SSE state too (`restore` then ignores `fpu`).
        let fpu = match xsave {
            Some(_) => kvm_fpu::default(),
            None => fd.get_fpu()?,
        };
        let xcrs = if sregs.cr4 & CR4_OSXSAVE != 0 {
            fd.get_xcrs().ok()
        } else {
            None
        };
        // Without an in-kernel irqchip KVM keeps every vCPU runnable (only `KVM_SET_MP_STATE`
        // changes it, and the VMM never calls it with anything else).
        let mp_state = kvm_mp_state {
            mp_state: KVM_MP_STATE_RUNNABLE,
        };
        let mut wanted = vec![MSR_TSC];
        wanted.extend_from_slice(MSRS);
        let mut msrs = read_msrs(fd, &wanted)?;
        let tsc = match msrs.first() {
            Some(&(MSR_TSC, value)) => {
                msrs.remove(0);
                value
            }
            _ => 0,
        };
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            events,
            mp_state,
            tsc,
            msrs,
        })
    }

    /// Writes the state into `fd` (a vCPU with its CPUID set), with the guest TSC set to
    /// `tsc` (the caller adjusts it for the time the VM was stopped). The general and system
    /// registers and the events go through the `kvm_run` page, which KVM loads with one
    /// `KVM_RUN` that does not enter the guest. `current` is what the vCPU's system
    /// registers are known to hold, if anything is.
    pub fn restore(
        &self,
        fd: &mut VcpuFd,
        tsc: u64,
        current: Option<&kvm_sregs>,
    ) -> Result<(), kvm_ioctls::Error> {
        let synced = fd.sync_regs_mut();
        synced.regs = self.regs;
        synced.events = self.events;
        // Setting the system registers resets the vCPU's MMU context, which nested KVM pays
        // dearly for: a thread coming back to the vCPU it left finds them as they were.
        if current != Some(&self.sregs) {
            synced.sregs = self.sregs;
            fd.set_sync_dirty_reg(SyncReg::SystemRegister);
        }
        fd.set_sync_dirty_reg(SyncReg::Register);
        fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
        // The XSAVE area holds the legacy FPU/SSE state too.
        if self.xsave.is_none() {
            fd.set_fpu(&self.fpu)?;
        }
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs)?;
        }
        if let Some(region) = &self.xsave {
            let xsave = kvm_xsave {
                region: **region,
                ..Default::default()
            };
            // SAFETY: `xsave` is a complete legacy (4 KiB) `kvm_xsave`, as `get_xsave` returned
            // it; it does not use the larger XSAVE2 layout.
            unsafe { fd.set_xsave(&xsave) }?;
        }
        let mut entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        entries.push(kvm_msr_entry {
            index: MSR_TSC,
            data: tsc,
            ..Default::default()
        });
        // All at once; KVM stops at an MSR it refuses: that one is skipped, the rest go on.
        let mut at = 0;
        while at < entries.len() {
            let set = Msrs::from_entries(&entries[at..])
                .ok()
                .and_then(|msrs| fd.set_msrs(&msrs).ok())
                .unwrap_or(0);
            at += set + 1;
        }
        // Every vCPU is runnable already (see `save`).
        if self.mp_state.mp_state != KVM_MP_STATE_RUNNABLE {
            fd.set_mp_state(self.mp_state)?;
        }
        // KVM loads what was put in the `kvm_run` page now, without running the guest, so
        // a state it refuses fails here (the thread can still go on where it was).
        Self::sync_out(fd)
    }
}

impl Encode for VcpuState {
    fn encode(&self, e: &mut Encoder) {
        put(e, &self.regs);
        put(e, &self.sregs);
        put(e, &self.fpu);
        put(e, &self.events);
        put(e, &self.mp_state);
        e.u64(self.tsc);
        e.u8(self.xcrs.is_some() as u8);
        if let Some(xcrs) = &self.xcrs {
            put(e, xcrs);
        }
        e.u8(self.xsave.is_some() as u8);
        if let Some(xsave) = &self.xsave {
            // Mostly zeros (the wide registers' halves a program does not use).
            e.sparse(bytes_of(&**xsave));
        }
        e.u32(self.msrs.len() as u32);
        for &(index, value) in &self.msrs {
            e.u32(index).u64(value);
        }
    }
}

impl Decode for VcpuState {
    /// Reads the wire form (every length checked).
    fn decode(d: &mut Decoder<'_>) -> Result<VcpuState, WireError> {
        let regs = get(d)?;
        let sregs = get(d)?;
        let fpu = get(d)?;
        let events = get(d)?;
        let mp_state = get(d)?;
        let tsc = d.u64()?;
        let xcrs = match d.u8()? {
            0 => None,
            1 => Some(get(d)?),
            _ => return Err(WireError("bad XCR flag")),
        };
        let xsave = match d.u8()? {
            0 => None,
            1 => Some(Box::new(from_bytes(&d.sparse(size_of::<[u32; 1024]>())?))),
            _ => return Err(WireError("bad XSAVE flag")),
        };
        let n = d.u32()?;
        if n > MAX_MSRS {
            return Err(WireError("too many MSRs"));
        }
        let mut msrs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            msrs.push((d.u32()?, d.u64()?));
        }
        Ok(VcpuState {
            regs,
            sregs,
            fpu,
            xsave,
            xcrs,
            events,
            mp_state,
            tsc,
            msrs,
        })
    }
}

/// One MSR of `fd`, or `None` if KVM does not have it.
/// Reads the MSRs `indices` with as few ioctls as it can (KVM stops at one it does not
/// know: that one is skipped); returns those read, in order.
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, kvm_ioctls::Error> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < indices.len() {
        let entries: Vec<kvm_msr_entry> = indices[at..]
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).expect("few MSRs fit");
        let n = fd.get_msrs(&mut msrs)?;
        out.extend(msrs.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        at += n + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Pod>(v: &T) -> Vec<u8> {
        let mut e = Encoder::default();
        put(&mut e, v);
        e.finish()
    }

    #[test]
    fn a_saved_state_survives_the_wire_and_restores() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return; // no KVM here: nothing to save
        };
        let vm = kvm.create_vm().unwrap();
        let mut fd = vm.create_vcpu(0).unwrap();
        let mut regs = fd.get_regs().unwrap();
        regs.rip = 0x40_1000;
        regs.rax = 0x1234_5678_9abc_def0;
        fd.set_regs(&regs).unwrap();
        VcpuState::sync_out(&mut fd).unwrap();
        let state = VcpuState::save(&fd).unwrap();
        assert_eq!(state.regs.rip, 0x40_1000);
        assert_eq!(state.sregs.cr0, fd.get_sregs().unwrap().cr0);
        let mut e = Encoder::default();
        state.encode(&mut e);
        let wire = e.finish();
        let back = VcpuState::decode(&mut Decoder::new(&wire)).unwrap();
        assert_eq!(bytes(&back.regs), bytes(&state.regs));
        assert_eq!(bytes(&back.sregs), bytes(&state.sregs));
        assert_eq!(back.msrs, state.msrs);
        assert_eq!(back.xsave.is_some(), state.xsave.is_some());
        let mut fd2 = vm.create_vcpu(1).unwrap();
        let mut sregs = fd2.get_sregs().unwrap();
        sregs.cr2 = 0xdead_b000;
        fd2.set_sregs(&sregs).unwrap();
        // What KVM holds afterwards, not only what the kvm_run page says.
        back.restore(&mut fd2, 12345, None).unwrap();
        assert_eq!(fd2.get_regs().unwrap().rip, 0x40_1000);
        assert_eq!(fd2.get_regs().unwrap().rax, 0x1234_5678_9abc_def0);
        assert_eq!(fd2.get_sregs().unwrap().cr2, state.sregs.cr2);
        // A cut anywhere is an error, never a panic.
        for cut in [0, 1, wire.len() / 2, wire.len() - 1] {
            assert!(VcpuState::decode(&mut Decoder::new(&wire[..cut])).is_err());
        }
    }

    #[test]
    fn truncated_or_bad_states_are_refused() {
        let mut e = Encoder::default();
        put(&mut e, &kvm_regs::default());
        let bytes = e.finish();
        assert!(VcpuState::decode(&mut Decoder::new(&bytes)).is_err());
        assert!(VcpuState::decode(&mut Decoder::new(&[])).is_err());
    }
}
