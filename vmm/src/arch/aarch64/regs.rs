//! AArch64 register identifiers for KVM's one-reg interface, and the system register values
//! the libos runs with.

use std::mem::offset_of;

use kvm_bindings::{
    KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_SIZE_U32, KVM_REG_SIZE_U64,
    KVM_REG_SIZE_U128, kvm_regs, user_fpsimd_state,
};

/// The id of the core register of `size` at byte `offset` in KVM's `struct kvm_regs`.
const fn core_sized(size: u64, offset: usize) -> u64 {
    KVM_REG_ARM64 | size | KVM_REG_ARM_CORE as u64 | (offset as u64 / 4)
}

/// The id of the 64-bit core register at byte `offset` in KVM's `struct kvm_regs`.
const fn core(offset: u64) -> u64 {
    core_sized(KVM_REG_SIZE_U64, offset as usize)
}

/// Byte offset of the FP/SIMD state in `struct kvm_regs`.
const FP: usize = offset_of!(kvm_regs, fp_regs);

/// The id of system register `(op0, op1, CRn, CRm, op2)`.
const fn sys(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// General register `x<n>` (n < 31).
pub const fn x(n: u64) -> u64 {
    core(8 * n)
}
/// `SP_EL0`: the stack pointer the application runs on.
pub const SP_EL0: u64 = core(8 * 31);
/// Program counter.
pub const PC: u64 = core(8 * 32);
/// Processor state.
pub const PSTATE: u64 = core(8 * 33);
/// `SP_EL1`: the exception stack.
pub const SP_EL1: u64 = core(8 * 34);

/// `ELR_EL1`: where an exception returns to.
pub const ELR_EL1: u64 = core(offset_of!(kvm_regs, elr_el1) as u64);
/// The banked saved program status registers (`SPSR_EL1` first).
pub const fn spsr(n: u64) -> u64 {
    core(offset_of!(kvm_regs, spsr) as u64 + 8 * n)
}
/// FP/SIMD register `v<n>` (128 bits, n < 32).
pub const fn v(n: usize) -> u64 {
    core_sized(KVM_REG_SIZE_U128, FP + 16 * n)
}
/// Floating-point status (32 bits).
pub const FPSR: u64 = core_sized(KVM_REG_SIZE_U32, FP + offset_of!(user_fpsimd_state, fpsr));
/// Floating-point control (32 bits).
pub const FPCR: u64 = core_sized(KVM_REG_SIZE_U32, FP + offset_of!(user_fpsimd_state, fpcr));

/// System control: MMU, caches.
pub const SCTLR_EL1: u64 = sys(3, 0, 1, 0, 0);
/// Architectural feature access control: FP/SIMD.
pub const CPACR_EL1: u64 = sys(3, 0, 1, 0, 2);
/// Translation table base 0.
pub const TTBR0_EL1: u64 = sys(3, 0, 2, 0, 0);
/// Translation control.
pub const TCR_EL1: u64 = sys(3, 0, 2, 0, 2);
/// Memory attribute indirection.
pub const MAIR_EL1: u64 = sys(3, 0, 10, 2, 0);
/// EL0 read/write thread pointer: the TLS thread pointer.
pub const TPIDR_EL0: u64 = sys(3, 3, 13, 0, 2);
/// The guest's virtual counter (`KVM_REG_ARM_TIMER_CNT`).
pub const TIMER_CNT: u64 = sys(3, 3, 14, 3, 2);

/// The system registers a saved vCPU carries besides the counter: every EL1/EL0 register the
/// libos or KVM sets, or an exception writes, that the guest can observe (those the host's
/// KVM does not know are skipped when saving).
pub const SAVED_SYSREGS: &[(&str, u64)] = &[
    ("SCTLR_EL1", SCTLR_EL1),
    ("CPACR_EL1", CPACR_EL1),
    ("TTBR0_EL1", TTBR0_EL1),
    ("TTBR1_EL1", sys(3, 0, 2, 0, 1)),
    ("TCR_EL1", TCR_EL1),
    ("ESR_EL1", sys(3, 0, 5, 2, 0)),
    ("AFSR0_EL1", sys(3, 0, 5, 1, 0)),
    ("AFSR1_EL1", sys(3, 0, 5, 1, 1)),
    ("FAR_EL1", sys(3, 0, 6, 0, 0)),
    ("PAR_EL1", sys(3, 0, 7, 4, 0)),
    ("MAIR_EL1", MAIR_EL1),
    ("AMAIR_EL1", sys(3, 0, 10, 3, 0)),
    ("VBAR_EL1", sys(3, 0, 12, 0, 0)),
    ("CONTEXTIDR_EL1", sys(3, 0, 13, 0, 1)),
    ("TPIDR_EL1", sys(3, 0, 13, 0, 4)),
    ("CNTKCTL_EL1", sys(3, 0, 14, 1, 0)),
    ("CSSELR_EL1", sys(3, 2, 0, 0, 0)),
    ("TPIDR_EL0", TPIDR_EL0),
    ("TPIDRRO_EL0", sys(3, 3, 13, 0, 3)),
    ("MDSCR_EL1", sys(2, 0, 0, 2, 2)),
    // The virtual timer's control and compare value (`KVM_REG_ARM_TIMER_CTL`/`_CVAL`).
    ("CNTV_CTL_EL0", sys(3, 3, 14, 3, 1)),
    ("CNTV_CVAL_EL0", sys(3, 3, 14, 0, 2)),
];

/// `PSTATE` of a new thread: EL1 on `SP_EL0` ("EL1t"), debug, SError, IRQ and FIQ masked.
pub const PSTATE_EL1T_MASKED: u64 = 0x3c4;

/// `SCTLR_EL1`: MMU (M), data cache (C), instruction cache (I) on; alignment checks off; the
/// ARMv8.0 RES1 bits set.
pub const SCTLR_VALUE: u64 = 0x30d0_0800 | (1 << 0) | (1 << 2) | (1 << 12);
/// `CPACR_EL1`: FP/SIMD accessible at EL0 and EL1 (FPEN = 0b11).
pub const CPACR_VALUE: u64 = 3 << 20;
/// `TCR_EL1`: 48-bit addresses (T0SZ 16) with a 4 KiB granule through TTBR0, write-back
/// cacheable inner-shareable walks, TTBR1 walks disabled (EPD1), 40-bit physical addresses.
pub const TCR_VALUE: u64 = 16 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);
/// `MAIR_EL1`: attribute 0 normal write-back read/write-allocate, attribute 1 Device-nGnRE
/// (the indices the translation tables use).
pub const MAIR_VALUE: u64 = 0xff | (0x04 << 8);

/// Reads the 64-bit register `id` of `fd`.
pub fn get(fd: &kvm_ioctls::VcpuFd, id: u64) -> Result<u64, kvm_ioctls::Error> {
    let mut bytes = [0u8; 8];
    fd.get_one_reg(id, &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Writes the 64-bit register `id` of `fd`.
pub fn set(fd: &kvm_ioctls::VcpuFd, id: u64, value: u64) -> Result<(), kvm_ioctls::Error> {
    fd.set_one_reg(id, &value.to_le_bytes()).map(|_| ())
}

/// Reads the 32-bit register `id` of `fd`.
pub fn get_u32(fd: &kvm_ioctls::VcpuFd, id: u64) -> Result<u32, kvm_ioctls::Error> {
    let mut bytes = [0u8; 4];
    fd.get_one_reg(id, &mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

/// Writes the 32-bit register `id` of `fd`.
pub fn set_u32(fd: &kvm_ioctls::VcpuFd, id: u64, value: u32) -> Result<(), kvm_ioctls::Error> {
    fd.set_one_reg(id, &value.to_le_bytes()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_match_the_kernel_encoding() {
        // Values from the Linux UAPI (ARM64_SYS_REG and KVM_REG_ARM_CORE_REG).
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(SP_EL1, 0x6030_0000_0010_0044);
        assert_eq!(TIMER_CNT, 0x6030_0000_0013_df1a);
        assert_eq!(SCTLR_EL1, 0x6030_0000_0013_c080);
        assert_eq!(ELR_EL1, 0x6030_0000_0010_0046);
        assert_eq!(spsr(0), 0x6030_0000_0010_0048);
        assert_eq!(v(0), 0x6040_0000_0010_0054);
        assert_eq!(v(31), 0x6040_0000_0010_00d0);
        assert_eq!(FPSR, 0x6020_0000_0010_00d4);
        assert_eq!(FPCR, 0x6020_0000_0010_00d5);
    }
}
