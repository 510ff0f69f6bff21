//! x86-64 (long mode, ring 0) support.

pub mod hypercall;
mod idt;
mod start;
pub mod tls;

/// The architecture id recorded in the image's ABI note.
pub const ABI_ARCH: u32 = pop_abi::arch::X86_64;

/// `IA32_FS_BASE`: the thread pointer used by `%fs`-relative TLS accesses.
const MSR_FS_BASE: u32 = 0xc000_0100;

/// One-time CPU setup on the boot vCPU, before anything can fault: installs the exception
/// handlers shared by all vCPUs.
pub fn init_cpu() {
    idt::install();
}

/// Reads the CPU's time-stamp counter (no exit to the VMM).
#[inline]
pub fn counter() -> u64 {
    // SAFETY: rdtsc has no side effects; the VMM enables it for the guest.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Points this vCPU's thread pointer (`FS.base`) at `tp`.
///
/// # Safety
/// `tp` must point at a valid TLS block set up by [`crate::tls`]; TLS accesses of the current
/// thread go through it from now on.
pub unsafe fn set_thread_pointer(tp: u64) {
    // SAFETY: we run at CPL 0 and IA32_FS_BASE exists on every x86-64 CPU.
    unsafe {
        core::arch::asm!(
            "wrmsr",
            in("ecx") MSR_FS_BASE,
            in("eax") tp as u32,
            in("edx") (tp >> 32) as u32,
            options(nostack, preserves_flags),
        );
    }
}

/// Busy-wait hint for spin loops.
#[inline]
pub fn spin_hint() {
    core::hint::spin_loop();
}
