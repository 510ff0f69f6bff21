//! AArch64 register identifiers for KVM's one-reg interface, and the system register values
//! the libos runs with.

use kvm_bindings::{KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_SIZE_U64};

/// The id of the 64-bit core register at byte `offset` in KVM's `struct kvm_regs`.
const fn core(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4)
}

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
    }
}
