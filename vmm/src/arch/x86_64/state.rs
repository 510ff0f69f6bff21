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

/// A thread's floating-point and vector registers.
#[derive(Clone, Debug)]
pub enum FpState {
    /// The (4 KiB, legacy layout) XSAVE area, which holds the legacy FPU/SSE state too.
    Xsave(Box<[u32; 1024]>),
    /// The legacy FPU/SSE state, on a host without XSAVE.
    Legacy(Box<kvm_fpu>),
    /// Not carried: the thread stopped at a call boundary of its own
    /// ([`pop_abi::hypercall::MIGRATE_AT_CALL`]), where these registers are dead and it
    /// restores the control words itself. The vCPU it resumes on keeps what it holds.
    CallerSaved,
}

/// What a vCPU is known to hold without asking KVM: each vCPU ioctl makes KVM reload the
/// host's state for the vCPU (about 12 µs under this nested KVM), so what is known is not
/// asked for or set again.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// Its system registers: as the last exit stored them in the `kvm_run` page, or as the
    /// last restore set them (until it runs again).
    pub sregs: Option<kvm_sregs>,
    /// Its MSRs besides the TSC, as last read or set. The guest writes none of them (the
    /// libos runs in ring 3 and its exception entry writes no MSR), so they change only
    /// through a restore.
    pub msrs: Option<Vec<(u32, u64)>>,
    /// Bounds of its counter's offset from the host's (guest TSC minus host TSC), read after
    /// the counter was last set.
    pub counter_offset: Option<(i128, i128)>,
}

/// Everything KVM holds about one x86-64 vCPU.
#[derive(Clone, Debug)]
pub struct VcpuState {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// Floating-point and vector registers.
    pub fp: FpState,
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

    /// Has KVM store the general and system registers and the pending events in the
    /// `kvm_run` page at every exit (they are then read there without an ioctl; storing
    /// them costs KVM far less than an ioctl costs).
    pub fn sync_at_exits(fd: &mut VcpuFd) {
        for reg in SYNCED {
            fd.set_sync_valid_reg(reg);
        }
    }

    /// Completes what the last exit left pending (the MMIO store of a hypercall) without
    /// running the guest — `KVM_RUN` with `immediate_exit` set, as KVM's documentation asks
    /// before the state is saved — and has KVM store the general and system registers and
    /// the pending events in the `kvm_run` page on the way out, for [`VcpuState::save`].
    pub fn sync_out(fd: &mut VcpuFd) -> Result<(), kvm_ioctls::Error> {
        Self::sync_at_exits(fd);
        fd.set_kvm_immediate_exit(1);
        let result = fd.run().map(|_| ());
        fd.set_kvm_immediate_exit(0);
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
        let fp = match fd.get_xsave() {
            Ok(x) => FpState::Xsave(Box::new(x.region)),
            Err(_) => FpState::Legacy(Box::new(fd.get_fpu()?)),
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
            fp,
            xcrs,
            events,
            mp_state,
            tsc,
            msrs,
        })
    }

    /// The state of a thread that stopped at a call boundary of its own
    /// ([`pop_abi::hypercall::MIGRATE_AT_CALL`]) with its counter at `counter`, from what
    /// its exit stored (see [`VcpuState::sync_at_exits`]; the MMIO store it left pending has
    /// nothing to complete: KVM finished a store before it exited) and the MSRs `msrs` of its
    /// vCPU: no ioctl. Its floating-point registers stay behind ([`FpState::CallerSaved`]),
    /// and so does XCR0, which the guest cannot change (it does not set `CR4.OSXSAVE`).
    pub fn at_call(fd: &VcpuFd, counter: u64, msrs: Vec<(u32, u64)>) -> VcpuState {
        let synced = fd.sync_regs();
        VcpuState {
            regs: synced.regs,
            sregs: synced.sregs,
            fp: FpState::CallerSaved,
            xcrs: None,
            events: synced.events,
            mp_state: kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            },
            tsc: counter,
            msrs,
        }
    }

    /// The MSRs (besides the TSC) a state carries, read from `fd`.
    pub fn read_msrs(fd: &VcpuFd) -> Result<Vec<(u32, u64)>, kvm_ioctls::Error> {
        read_msrs(fd, MSRS)
    }

    /// Writes the state into `fd` (a vCPU with its CPUID set), with the guest TSC set to
    /// `tsc` (the caller adjusts it for the time the VM was stopped). The general and system
    /// registers and the events go through the `kvm_run` page, which KVM loads with one
    /// `KVM_RUN`. `known` is what the vCPU is known to hold (updated here): what it holds
    /// already is not set again, the counter included while it lies between this state's
    /// and `tsc + slack` (a vCPU of the same VM that ran here before keeps its offset).
    pub fn restore(
        &self,
        fd: &mut VcpuFd,
        tsc: u64,
        slack: u64,
        known: &mut Known,
    ) -> Result<(), kvm_ioctls::Error> {
        let synced = fd.sync_regs_mut();
        synced.regs = self.regs;
        synced.events = self.events;
        // Setting the system registers resets the vCPU's MMU context, which nested KVM pays
        // dearly for: a thread coming back to the vCPU it left finds them as they were.
        let sregs_change = known.sregs.as_ref() != Some(&self.sregs);
        if sregs_change {
            synced.sregs = self.sregs;
            fd.set_sync_dirty_reg(SyncReg::SystemRegister);
        }
        fd.set_sync_dirty_reg(SyncReg::Register);
        fd.set_sync_dirty_reg(SyncReg::VcpuEvents);
        known.sregs = None;
        match &self.fp {
            FpState::Xsave(region) => {
                let xsave = kvm_xsave {
                    region: **region,
                    ..Default::default()
                };
                // SAFETY: `xsave` is a complete legacy (4 KiB) `kvm_xsave`, as `get_xsave`
                // returned it; it does not use the larger XSAVE2 layout.
                unsafe { fd.set_xsave(&xsave) }?;
            }
            FpState::Legacy(fpu) => fd.set_fpu(fpu)?,
            FpState::CallerSaved => {}
        }
        if let Some(xcrs) = &self.xcrs {
            fd.set_xcrs(xcrs)?;
        }
        // The TSC unless the vCPU's goes on from this state's already (never behind it, at most
        // `slack` past `tsc`); the others unless the vCPU holds them already.
        let counter_held = known
            .counter_offset
            .is_some_and(|offset| counter_goes_on(offset, host_counter(), self.tsc, tsc, slack));
        let msrs_held = known.msrs.as_deref() == Some(&self.msrs[..]);
        let mut entries: Vec<kvm_msr_entry> = if msrs_held {
            Vec::new()
        } else {
            self.msrs
                .iter()
                .map(|&(index, data)| kvm_msr_entry {
                    index,
                    data,
                    ..Default::default()
                })
                .collect()
        };
        if !counter_held {
            entries.push(kvm_msr_entry {
                index: MSR_TSC,
                data: tsc,
                ..Default::default()
            });
        }
        // All at once; KVM stops at an MSR it refuses: that one is skipped, the rest go on.
        let (mut at, mut all) = (0, true);
        while at < entries.len() {
            let set = Msrs::from_entries(&entries[at..])
                .ok()
                .and_then(|msrs| fd.set_msrs(&msrs).ok())
                .unwrap_or(0);
            all &= at + set == entries.len();
            at += set + 1;
        }
        known.msrs = all.then(|| self.msrs.clone());
        if !counter_held {
            known.counter_offset = counter_offset(fd);
        }
        // Every vCPU is runnable already (see `save`).
        if self.mp_state.mp_state != KVM_MP_STATE_RUNNABLE {
            fd.set_mp_state(self.mp_state)?;
        }
        if sregs_change || !quiet(&self.events) {
            // KVM loads what was put in the `kvm_run` page now, without running the guest,
            // so a state it refuses fails here (the thread can still go on where it was).
            Self::sync_out(fd)?;
        }
        // Otherwise the `KVM_RUN` that enters the guest loads the general registers and the
        // quiet events, neither of which KVM can refuse.
        known.sregs = Some(self.sregs);
        Ok(())
    }
}

impl Encode for VcpuState {
    fn encode(&self, e: &mut Encoder) {
        put(e, &self.regs);
        put(e, &self.sregs);
        put(e, &self.events);
        put(e, &self.mp_state);
        e.u64(self.tsc);
        e.u8(self.xcrs.is_some() as u8);
        if let Some(xcrs) = &self.xcrs {
            put(e, xcrs);
        }
        match &self.fp {
            FpState::CallerSaved => {
                e.u8(0);
            }
            FpState::Legacy(fpu) => {
                e.u8(1);
                put(e, &**fpu);
            }
            FpState::Xsave(xsave) => {
                // Mostly zeros (the wide registers' halves a program does not use).
                e.u8(2).sparse(bytes_of(&**xsave));
            }
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
        let events = get(d)?;
        let mp_state = get(d)?;
        let tsc = d.u64()?;
        let xcrs = match d.u8()? {
            0 => None,
            1 => Some(get(d)?),
            _ => return Err(WireError("bad XCR flag")),
        };
        let fp = match d.u8()? {
            0 => FpState::CallerSaved,
            1 => FpState::Legacy(Box::new(get(d)?)),
            2 => FpState::Xsave(Box::new(from_bytes(&d.sparse(size_of::<[u32; 1024]>())?))),
            _ => return Err(WireError("bad floating-point state kind")),
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
            fp,
            xcrs,
            events,
            mp_state,
            tsc,
            msrs,
        })
    }
}

/// Whether `events` has nothing pending (no exception, interrupt, NMI, SMI or shadow): what
/// a thread has at a hypercall, and what KVM cannot refuse to load.
fn quiet(events: &kvm_vcpu_events) -> bool {
    let (x, i, n, s) = (
        &events.exception,
        &events.interrupt,
        &events.nmi,
        &events.smi,
    );
    x.injected == 0
        && x.pending == 0
        && events.exception_has_payload == 0
        && i.injected == 0
        && i.shadow == 0
        && n.injected == 0
        && n.pending == 0
        && s.smm == 0
        && s.pending == 0
        && events.triple_fault.pending == 0
}

/// The host's counter (TSC), which KVM offsets for the guest's.
fn host_counter() -> u64 {
    // SAFETY: rdtsc only reads the counter; every x86-64 host has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Whether a counter at `offset` (bounds of guest minus host) from the host's `host` goes on
/// from a saved `saved`: never behind it, and at most `slack` past `tsc`.
fn counter_goes_on(offset: (i128, i128), host: u64, saved: u64, tsc: u64, slack: u64) -> bool {
    let (low, high) = offset;
    let host = i128::from(host);
    host + low >= i128::from(saved) && host + high <= i128::from(tsc) + i128::from(slack)
}

/// Bounds of `fd`'s counter offset (guest TSC minus host TSC), from one read of its TSC
/// between two reads of the host's; `None` if KVM does not give it.
fn counter_offset(fd: &VcpuFd) -> Option<(i128, i128)> {
    let before = i128::from(host_counter());
    let guest = match read_msrs(fd, &[MSR_TSC]).ok()?.first() {
        Some(&(MSR_TSC, value)) => i128::from(value),
        _ => return None,
    };
    let after = i128::from(host_counter());
    Some((guest - after, guest - before))
}

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

    #[test]
    fn a_counter_is_kept_only_when_it_goes_on_from_the_saved_one_within_the_slack() {
        // Guest = host + 100..=110; the host is at 1000: the guest is at 1100..=1110.
        let offset = (100, 110);
        assert!(counter_goes_on(offset, 1000, 1100, 1100, 10));
        // Behind the saved counter (it could be 1100 while the thread saw 1101): set it.
        assert!(!counter_goes_on(offset, 1000, 1101, 1200, 0));
        // Further past the estimate than the slack allows: set it.
        assert!(!counter_goes_on(offset, 1000, 1000, 1105, 4));
        assert!(counter_goes_on(offset, 1000, 1000, 1105, 5));
        // Offsets below the host's (a guest counter set back) work alike.
        assert!(counter_goes_on((-500, -490), 1000, 400, 505, 5));
        assert!(!counter_goes_on((-500, -490), 1000, 400, 505, 4));
    }

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
        assert_eq!(
            matches!(back.fp, FpState::Xsave(_)),
            matches!(state.fp, FpState::Xsave(_))
        );
        let mut fd2 = vm.create_vcpu(1).unwrap();
        let mut sregs = fd2.get_sregs().unwrap();
        sregs.cr2 = 0xdead_b000;
        fd2.set_sregs(&sregs).unwrap();
        // What KVM holds afterwards, not only what the kvm_run page says.
        back.restore(&mut fd2, 12345, 0, &mut Known::default())
            .unwrap();
        assert_eq!(fd2.get_regs().unwrap().rip, 0x40_1000);
        assert_eq!(fd2.get_regs().unwrap().rax, 0x1234_5678_9abc_def0);
        assert_eq!(fd2.get_sregs().unwrap().cr2, state.sregs.cr2);
        // A cut anywhere is an error, never a panic.
        for cut in [0, 1, wire.len() / 2, wire.len() - 1] {
            assert!(VcpuState::decode(&mut Decoder::new(&wire[..cut])).is_err());
        }
    }

    #[test]
    fn a_state_from_a_call_boundary_leaves_the_fp_registers_and_loads_with_the_next_run() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            return; // no KVM here
        };
        let vm = kvm.create_vm().unwrap();
        let mut fd = vm.create_vcpu(0).unwrap();
        let mut regs = fd.get_regs().unwrap();
        regs.rip = 0x40_2000;
        fd.set_regs(&regs).unwrap();
        VcpuState::sync_out(&mut fd).unwrap();
        let msrs = VcpuState::read_msrs(&fd).unwrap();
        let state = VcpuState::at_call(&fd, 777_000, msrs.clone());
        assert!(matches!(state.fp, FpState::CallerSaved));
        assert_eq!((state.regs.rip, state.tsc), (0x40_2000, 777_000));
        let mut e = Encoder::default();
        state.encode(&mut e);
        let back = VcpuState::decode(&mut Decoder::new(&e.finish())).unwrap();
        assert!(matches!(back.fp, FpState::CallerSaved));

        let mut fd2 = vm.create_vcpu(1).unwrap();
        let mut marked = kvm_fpu {
            fcw: 0x27f,
            ..Default::default()
        };
        marked.xmm[3][0] = 0x5a;
        fd2.set_fpu(&marked).unwrap();
        let mut known = Known::default();
        back.restore(&mut fd2, 999, 0, &mut known).unwrap();
        let fpu = fd2.get_fpu().unwrap();
        assert_eq!(
            (fpu.fcw, fpu.xmm[3][0]),
            (0x27f, 0x5a),
            "the FP registers stay"
        );
        assert_eq!(fd2.get_regs().unwrap().rip, 0x40_2000);
        assert_eq!(known.msrs.as_ref(), Some(&msrs));
        assert_eq!(known.sregs.as_ref(), Some(&state.sregs));

        // Again onto the vCPU that holds its system registers and MSRs: the registers are
        // loaded by the run that follows.
        let mut again = back.clone();
        again.regs.rip = 0x40_3000;
        again.restore(&mut fd2, 999, 0, &mut known).unwrap();
        VcpuState::sync_out(&mut fd2).unwrap();
        assert_eq!(fd2.get_regs().unwrap().rip, 0x40_3000);
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
