//! x86-64 hypercalls: a store to the hypercall's slot in the hypercall page; arguments in
//! `rdi, rsi, rdx, r10, r8`, result in `rax` (see `pop_abi::hypercall`). Works in ring 3,
//! where the application runs.

use pop_abi::Hypercall;

/// Issues hypercall `nr` with five arguments and returns the VMM's result.
#[inline]
pub fn call(nr: Hypercall, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let ret: i64;
    // SAFETY: the store to the (unbacked) hypercall page exits to the VMM, which only reads
    // the argument registers, reads or writes guest memory the arguments point at (as the
    // hypercall documents) and sets rax.
    unsafe {
        core::arch::asm!(
            "mov qword ptr [r11], rax",
            in("r11") nr.address(),
            inout("rax") 0u64 => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rdx") a2,
            in("r10") a3,
            in("r8") a4,
            options(nostack),
        );
    }
    ret
}

/// The register frame the exception handlers hand to [`crate::hypercall::fault`].
pub type FaultFrame = pop_abi::X86FaultFrame;

/// A hypercall that must not return did: stop the vCPU for good.
pub fn unreachable_after_hypercall() -> ! {
    loop {
        // SAFETY: ud2 raises #UD, which the exception handlers report to the VMM as a fault.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}
