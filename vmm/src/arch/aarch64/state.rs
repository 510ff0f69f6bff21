//! The complete state of an AArch64 vCPU, saved on one host and restored on another: the
//! general registers, both stack pointers, PC and PSTATE, the exception return registers,
//! the FP/SIMD registers with FPSR/FPCR, the EL1/EL0 system registers the libos and KVM set
//! ([`regs::SAVED_SYSREGS`]), the virtual counter, and the argument block of a hypercall the
//! thread is in (its result goes there, wherever the thread resumes).
//!
//! Everything goes through KVM's one-reg interface. The wire form is fixed-size fields
//! followed by the system registers as (id, value) pairs; the decoder checks every length and
//! accepts only the registers of [`regs::SAVED_SYSREGS`], so a state from the network can be
//! malformed but never read out of bounds or set a register the VMM does not carry.

use kvm_ioctls::VcpuFd;
use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

use super::counter::VmCounter;
use super::regs::{self, get, get_u32, set, set_u32};

/// The FP/SIMD registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FpRegs {
    /// `v0` to `v31`.
    pub v: Box<[u128; 32]>,
    /// Floating-point status.
    pub fpsr: u32,
    /// Floating-point control.
    pub fpcr: u32,
}

/// Everything KVM holds about one AArch64 vCPU that the guest can observe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuState {
    /// `x0` to `x30`.
    pub x: [u64; 31],
    /// `SP_EL0`, the stack the application runs on.
    pub sp_el0: u64,
    /// Program counter.
    pub pc: u64,
    /// Processor state.
    pub pstate: u64,
    /// `SP_EL1`, the exception stack.
    pub sp_el1: u64,
    /// Exception return address.
    pub elr_el1: u64,
    /// The banked saved program status registers, `SPSR_EL1` first.
    pub spsr: [u64; 5],
    /// FP/SIMD registers.
    pub fp: FpRegs,
    /// System registers (id from [`regs::SAVED_SYSREGS`], value) this host's KVM gave.
    pub sysregs: Vec<(u64, u64)>,
    /// The guest's virtual counter when the state was read (named as on x86-64, where it is
    /// the TSC, so that the architecture-neutral code reads one field).
    pub tsc: u64,
    /// The argument block of the hypercall the thread is in, whose result is still to come.
    pub block: Option<u64>,
}

impl VcpuState {
    /// The thread's stack pointer and thread pointer (`TPIDR_EL0`): where it touches memory
    /// first when it resumes (its stack top, its thread-locals).
    pub fn hot_addresses(&self) -> [u64; 2] {
        let tp = self
            .sysregs
            .iter()
            .find(|&&(id, _)| id == regs::TPIDR_EL0)
            .map_or(0, |&(_, value)| value);
        [self.sp_el0, tp]
    }

    /// Reads the state of `fd`, which must have no MMIO exit pending (KVM completes one on the
    /// next `KVM_RUN`); `block` is the hypercall block the vCPU is serving, if any.
    pub fn save(fd: &VcpuFd, block: Option<u64>) -> Result<VcpuState, kvm_ioctls::Error> {
        let mut x = [0u64; 31];
        for (n, value) in x.iter_mut().enumerate() {
            *value = get(fd, regs::x(n as u64))?;
        }
        let mut spsr = [0u64; 5];
        for (n, value) in spsr.iter_mut().enumerate() {
            *value = get(fd, regs::spsr(n as u64))?;
        }
        let mut v = Box::new([0u128; 32]);
        for (n, value) in v.iter_mut().enumerate() {
            let mut bytes = [0u8; 16];
            fd.get_one_reg(regs::v(n), &mut bytes)?;
            *value = u128::from_le_bytes(bytes);
        }
        let fp = FpRegs {
            v,
            fpsr: get_u32(fd, regs::FPSR)?,
            fpcr: get_u32(fd, regs::FPCR)?,
        };
        // A register this host's KVM does not have is not carried (it cannot hold a value).
        let sysregs = regs::SAVED_SYSREGS
            .iter()
            .filter_map(|&(_, id)| get(fd, id).ok().map(|value| (id, value)))
            .collect();
        Ok(VcpuState {
            x,
            sp_el0: get(fd, regs::SP_EL0)?,
            pc: get(fd, regs::PC)?,
            pstate: get(fd, regs::PSTATE)?,
            sp_el1: get(fd, regs::SP_EL1)?,
            elr_el1: get(fd, regs::ELR_EL1)?,
            spsr,
            fp,
            sysregs,
            tsc: get(fd, regs::TIMER_CNT)?,
            block,
        })
    }

    /// Writes the state into `fd` (no MMIO exit pending), with the VM's counter going on
    /// from `counter` unless it is past this state's already (see [`VmCounter::resume`]).
    /// The system registers go first, so that a host that refuses one fails before the
    /// thread's registers change.
    pub fn restore(
        &self,
        fd: &VcpuFd,
        vm_counter: &VmCounter,
        counter: u64,
    ) -> Result<(), kvm_ioctls::Error> {
        for &(id, value) in &self.sysregs {
            set(fd, id, value)?;
        }
        for (n, &value) in self.x.iter().enumerate() {
            set(fd, regs::x(n as u64), value)?;
        }
        for (n, &value) in self.spsr.iter().enumerate() {
            set(fd, regs::spsr(n as u64), value)?;
        }
        for (n, value) in self.fp.v.iter().enumerate() {
            fd.set_one_reg(regs::v(n), &value.to_le_bytes())?;
        }
        set_u32(fd, regs::FPSR, self.fp.fpsr)?;
        set_u32(fd, regs::FPCR, self.fp.fpcr)?;
        for (id, value) in [
            (regs::SP_EL0, self.sp_el0),
            (regs::SP_EL1, self.sp_el1),
            (regs::ELR_EL1, self.elr_el1),
            (regs::PSTATE, self.pstate),
            (regs::PC, self.pc),
        ] {
            set(fd, id, value)?;
        }
        vm_counter.resume(fd, self.tsc, counter)
    }
}

impl Encode for VcpuState {
    fn encode(&self, e: &mut Encoder) {
        for &value in &self.x {
            e.u64(value);
        }
        e.u64(self.sp_el0)
            .u64(self.pc)
            .u64(self.pstate)
            .u64(self.sp_el1)
            .u64(self.elr_el1);
        for &value in &self.spsr {
            e.u64(value);
        }
        // Mostly zeros (the vector registers a program does not use).
        let mut v = Vec::with_capacity(32 * 16);
        for value in self.fp.v.iter() {
            v.extend_from_slice(&value.to_le_bytes());
        }
        e.sparse(&v).u32(self.fp.fpsr).u32(self.fp.fpcr);
        e.u32(self.sysregs.len() as u32);
        for &(id, value) in &self.sysregs {
            e.u64(id).u64(value);
        }
        e.u64(self.tsc);
        self.block.encode(e);
    }
}

impl Decode for VcpuState {
    /// Reads the wire form (every length checked, only known system registers).
    fn decode(d: &mut Decoder<'_>) -> Result<VcpuState, WireError> {
        let mut x = [0u64; 31];
        for value in &mut x {
            *value = d.u64()?;
        }
        let (sp_el0, pc, pstate, sp_el1, elr_el1) =
            (d.u64()?, d.u64()?, d.u64()?, d.u64()?, d.u64()?);
        let mut spsr = [0u64; 5];
        for value in &mut spsr {
            *value = d.u64()?;
        }
        let raw = d.sparse(32 * 16)?;
        let mut v = Box::new([0u128; 32]);
        for (value, bytes) in v.iter_mut().zip(raw.chunks_exact(16)) {
            *value = u128::from_le_bytes(bytes.try_into().expect("16 bytes"));
        }
        let fp = FpRegs {
            v,
            fpsr: d.u32()?,
            fpcr: d.u32()?,
        };
        let n = d.u32()? as usize;
        if n > regs::SAVED_SYSREGS.len() {
            return Err(WireError("too many system registers"));
        }
        let mut sysregs = Vec::with_capacity(n);
        for _ in 0..n {
            let (id, value) = (d.u64()?, d.u64()?);
            if !regs::SAVED_SYSREGS.iter().any(|&(_, known)| known == id) {
                return Err(WireError("a system register that is not carried"));
            }
            sysregs.push((id, value));
        }
        Ok(VcpuState {
            x,
            sp_el0,
            pc,
            pstate,
            sp_el1,
            elr_el1,
            spsr,
            fp,
            sysregs,
            tsc: d.u64()?,
            block: Option::decode(d)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::aarch64::{Vcpu, setup_vm};
    use crate::arch::{ThreadStart, VcpuArgs};
    use crate::persist::Persist;

    fn wire(state: &VcpuState) -> Vec<u8> {
        let mut e = Encoder::default();
        state.encode(&mut e);
        e.finish()
    }

    /// A state as a thread has it, without KVM.
    fn sample() -> VcpuState {
        let mut v = Box::new([0u128; 32]);
        v[7] = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        VcpuState {
            x: std::array::from_fn(|n| n as u64 * 3),
            sp_el0: 0x7000_0000,
            pc: 0x20_1000,
            pstate: regs::PSTATE_EL1T_MASKED,
            sp_el1: 0x10_0000,
            elr_el1: 0x20_2000,
            spsr: [1, 2, 3, 4, 5],
            fp: FpRegs {
                v,
                fpsr: 0x10,
                fpcr: 0x0300_0000,
            },
            sysregs: vec![
                (regs::TPIDR_EL0, 0x5000),
                (regs::SCTLR_EL1, regs::SCTLR_VALUE),
            ],
            tsc: 123_456,
            block: Some(0x7000_0f00),
        }
    }

    #[test]
    fn a_state_survives_the_wire_and_bad_ones_are_refused() {
        let state = sample();
        let bytes = wire(&state);
        assert_eq!(VcpuState::decode(&mut Decoder::new(&bytes)).unwrap(), state);
        assert_eq!(state.hot_addresses(), [0x7000_0000, 0x5000]);
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(VcpuState::decode(&mut Decoder::new(&bytes[..cut])).is_err());
        }
        // A register the VMM does not carry (here VBAR_EL2's encoding) is refused.
        let mut odd = sample();
        odd.sysregs.push((regs::SCTLR_EL1 | (4 << 11), 1));
        assert!(VcpuState::decode(&mut Decoder::new(&wire(&odd))).is_err());
    }

    /// A VM with `n` vCPUs on this host's KVM, if it has one.
    fn vm_with(n: u32) -> Option<(kvm_ioctls::VmFd, crate::arch::aarch64::VmArch, Vec<Vcpu>)> {
        let kvm = kvm_ioctls::Kvm::new().ok()?;
        let vm = kvm.create_vm().unwrap();
        let arch = setup_vm(&kvm, &vm).unwrap();
        let vcpus = (0..n)
            .map(|i| Vcpu::new(&vm, &arch, i, 4).unwrap())
            .collect();
        Some((vm, arch, vcpus))
    }

    fn hz() -> u64 {
        super::super::counter::counter_hz()
    }

    #[test]
    fn a_saved_state_restored_into_a_fresh_vcpu_reads_back_the_same() {
        let Some((vm, arch, mut vcpus)) = vm_with(1) else {
            return; // no KVM here (the board runs this test)
        };
        let mut vcpu = vcpus.remove(0);
        vcpu.start_thread(&ThreadStart {
            tid: 1,
            entry: 0x20_1000,
            func: 0xaaaa,
            arg: 0xbbbb,
            stack_top: 0x7000_0000,
            thread_pointer: 0x5000,
            node: None,
        })
        .unwrap();
        vcpu.fd
            .set_one_reg(regs::v(7), &0xfeed_u128.rotate_left(70).to_le_bytes())
            .unwrap();
        set_u32(&vcpu.fd, regs::FPCR, 0x0300_0000).unwrap();
        vcpu.complete_pending().unwrap();
        let state = vcpu.save().unwrap();
        assert_eq!(
            (state.pc, state.x[0], state.x[1]),
            (0x20_1000, 0xaaaa, 0xbbbb)
        );
        assert_eq!(state.fp.v[7], 0xfeed_u128.rotate_left(70));
        assert_eq!(state.hot_addresses(), [0x7000_0000, 0x5000]);
        assert!(state.sysregs.len() >= 15, "{:?}", state.sysregs);

        let back = VcpuState::decode(&mut Decoder::new(&wire(&state))).unwrap();
        let fresh = Vcpu::new(&vm, &arch, 1, 4).unwrap();
        let restored = Vcpu::restore(
            VcpuArgs {
                vcpu: fresh,
                counter: state.tsc,
                counter_slack: 0,
            },
            &back,
        )
        .unwrap();
        let again = restored.save().unwrap();
        // Everything but the counter, which ran on.
        assert_eq!(
            VcpuState {
                tsc: state.tsc,
                ..again.clone()
            },
            state
        );
        assert!(again.tsc >= state.tsc);
    }

    /// A guest loop (at `CODE`, MMU off): `x0 += 1; d1 += d2; str x0, [x3]; b loop`, whose
    /// store to unbacked memory (`x3`) exits to the VMM once a round.
    const LOOP: [u32; 4] = [0x9100_0400, 0x1e62_2821, 0xf900_0060, 0x17ff_fffd];
    const CODE: u64 = 0x10_0000;

    /// Runs `vcpu` to its next exit (the loop's store).
    fn round(vcpu: &mut Vcpu, mem: &crate::memory::GuestMem) {
        let exit = vcpu.run(mem).unwrap();
        assert!(
            matches!(&exit, crate::arch::Exit::Crash(c) if c.what.contains("unbacked")),
            "{exit:?}"
        );
    }

    #[test]
    fn a_thread_saved_mid_loop_continues_on_a_fresh_vcpu_as_it_would_have() {
        let Some((vm, arch, mut vcpus)) = vm_with(1) else {
            return; // no KVM here (the board runs this test)
        };
        let mem = crate::memory::GuestMem::new(4 << 20, 2 << 20).unwrap();
        crate::vm::register_memory(&vm, &mem, 0).unwrap();
        let code: Vec<u8> = LOOP.iter().flat_map(|w| w.to_le_bytes()).collect();
        mem.write(CODE, &code).unwrap();
        let mut a = vcpus.remove(0);
        for (id, value) in [
            (regs::CPACR_EL1, regs::CPACR_VALUE),
            (regs::x(0), 0),
            (regs::x(3), 0x3800_0000),
            (regs::PSTATE, 0x3c5),
            (regs::PC, CODE),
        ] {
            set(&a.fd, id, value).unwrap();
        }
        for (n, v) in [(1, 1.5f64), (2, 0.25)] {
            a.fd.set_one_reg(regs::v(n), &u128::from(v.to_bits()).to_le_bytes())
                .unwrap();
        }
        for _ in 0..3 {
            round(&mut a, &mem);
        }
        // Saved after three rounds (the pending store completed first) ...
        a.complete_pending().unwrap();
        let state = a.save().unwrap();
        assert_eq!(state.x[0], 3);
        let wire = wire(&state);
        // ... the original goes on three more rounds ...
        for _ in 0..3 {
            round(&mut a, &mem);
        }
        a.complete_pending().unwrap();
        let went_on = a.save().unwrap();
        // ... and so does the saved state, decoded, on a fresh vCPU.
        let back = VcpuState::decode(&mut Decoder::new(&wire)).unwrap();
        let mut b = Vcpu::restore(
            VcpuArgs {
                vcpu: Vcpu::new(&vm, &arch, 1, 4).unwrap(),
                counter: state.tsc,
                counter_slack: 0,
            },
            &back,
        )
        .unwrap();
        for _ in 0..3 {
            round(&mut b, &mem);
        }
        b.complete_pending().unwrap();
        let restored = b.save().unwrap();
        assert_eq!(restored.x[0], 6);
        assert_eq!(f64::from_bits(restored.fp.v[1] as u64), 1.5 + 6.0 * 0.25);
        assert_eq!(
            VcpuState {
                tsc: 0,
                block: None,
                ..restored
            },
            VcpuState {
                tsc: 0,
                block: None,
                ..went_on
            }
        );
    }

    #[test]
    fn the_counter_never_goes_back_when_vcpus_are_made_or_states_restored() {
        let Some((vm, arch, vcpus)) = vm_with(1) else {
            return; // no KVM here
        };
        let first = &vcpus[0];
        std::thread::sleep(std::time::Duration::from_millis(50));
        let before = first.read_counter().unwrap();
        assert!(before >= hz() / 40, "the counter runs: {before}");
        // Before Linux 6.4 this creation would set the counter back to zero.
        let second = Vcpu::new(&vm, &arch, 1, 4).unwrap();
        let after = first.read_counter().unwrap();
        assert!(after >= before, "{after} < {before}");
        assert!(second.read_counter().unwrap() >= before);

        // A state saved ahead (on a host whose counter ran longer) moves it forward ...
        let mut state = sample();
        state.sysregs.clear();
        state.tsc = after + 10 * hz();
        let moved = Vcpu::restore(
            VcpuArgs {
                vcpu: second,
                counter: state.tsc + hz() / 100,
                counter_slack: 0,
            },
            &state,
        )
        .unwrap();
        let ahead = first.read_counter().unwrap();
        assert!(ahead >= state.tsc + hz() / 100, "{ahead}");
        assert!(ahead < state.tsc + 2 * hz(), "{ahead}");
        // ... and one saved behind leaves it alone.
        state.tsc = 1000;
        let _ = Vcpu::restore(
            VcpuArgs {
                vcpu: moved,
                counter: 1000,
                counter_slack: 0,
            },
            &state,
        )
        .unwrap();
        assert!(first.read_counter().unwrap() >= ahead);
    }
}
