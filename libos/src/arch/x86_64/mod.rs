//! x86-64 (long mode, ring 0) support.

pub mod hypercall;
mod idt;
mod start;
pub mod tls;

/// The architecture id recorded in the image's ABI note.
pub const ABI_ARCH: u32 = pop_abi::Isa::X86_64.abi();

/// One-time CPU setup on the boot vCPU, before anything can fault: installs the exception
/// handlers shared by all vCPUs.
pub fn init_cpu() {
    idt::install();
}

/// Per-thread CPU setup, first thing on a new thread's vCPU: nothing on x86-64 (the VMM
/// points every vCPU's IDTR at the shared IDT).
pub fn init_thread() {}

/// Reads the CPU's time-stamp counter (no exit to the VMM).
#[inline]
pub fn counter() -> u64 {
    // SAFETY: rdtsc has no side effects; the VMM enables it for the guest.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Points this vCPU's thread pointer (`FS.base`) at `tp`. Ring 3 cannot write `FS.base`
/// without `FSGSBASE`, which not every host offers, so the VMM does it.
///
/// # Safety
/// `tp` must point at a valid TLS block set up by [`crate::tls`]; TLS accesses of the current
/// thread go through it from now on.
pub unsafe fn set_thread_pointer(tp: u64) {
    hypercall::call(pop_abi::Hypercall::SetThreadPointer, tp, 0, 0, 0, 0);
}

/// The stack pointer a new thread starts with, given the end of its stack: as if its entry
/// had just been called (`rsp + 8` 16-byte aligned).
pub fn thread_stack_pointer(stack_end: u64) -> u64 {
    (stack_end & !15) - 8
}

/// Busy-wait hint for spin loops.
#[inline]
pub fn spin_hint() {
    core::hint::spin_loop();
}
