//! AArch64 support: the application runs at EL1 on `SP_EL0` ("EL1t"), so that exceptions
//! switch to the vCPU's own exception stack (`SP_EL1`, set by the VMM). The VMM enables the
//! MMU (identity map), the caches and FP/SIMD before the first instruction runs.

pub mod hypercall;
mod start;
pub mod tls;
mod vectors;

/// The architecture id recorded in the image's ABI note.
pub const ABI_ARCH: u32 = pop_abi::Isa::Aarch64.abi();

/// One-time CPU setup on the boot vCPU: installs the exception vectors.
pub fn init_cpu() {
    vectors::install();
}

/// Per-thread CPU setup, first thing on a new thread's vCPU: installs the exception vectors
/// (`VBAR_EL1` is per vCPU).
pub fn init_thread() {
    vectors::install();
}

/// Reads the virtual counter (no exit to the VMM).
#[inline]
pub fn counter() -> u64 {
    let value: u64;
    // SAFETY: reading CNTVCT_EL0 has no side effects; the isb orders it after earlier code.
    unsafe {
        core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) value, options(nomem, nostack))
    };
    value
}

/// Points this vCPU's thread pointer (`TPIDR_EL0`) at `tp`.
///
/// # Safety
/// `tp` must point at a valid TLS block set up by [`crate::tls`]; TLS accesses of the current
/// thread go through it from now on.
pub unsafe fn set_thread_pointer(tp: u64) {
    // SAFETY: writing TPIDR_EL0 only changes where TLS accesses go, as the caller intends.
    unsafe { core::arch::asm!("msr tpidr_el0, {}", in(reg) tp, options(nomem, nostack)) };
}

/// The stack pointer a new thread starts with, given the end of its stack (AArch64 keeps
/// the stack pointer 16-byte aligned at all times).
pub fn thread_stack_pointer(stack_end: u64) -> u64 {
    stack_end & !15
}

/// Busy-wait hint for spin loops.
#[inline]
pub fn spin_hint() {
    core::hint::spin_loop();
}
