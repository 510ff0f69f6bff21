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

/// Issues [`Hypercall::Migrate`] to `node` as a call boundary
/// ([`pop_abi::hypercall::MIGRATE_AT_CALL`]): every caller-saved register, the vector and x87
/// registers among them, is declared clobbered, so the compiler keeps nothing live in them
/// across the store, and the callee-saved control words (MXCSR, the x87 control word) are
/// saved here and restored once the thread runs again, wherever that is.
pub fn migrate(node: u32) -> i64 {
    let ret: i64;
    let mut control = [0u32; 2];
    let counter = super::counter();
    // SAFETY: as for `call`, the store exits to the VMM, which answers in rax; the thread
    // resumes with every general register as it left them (on this node or another), and
    // `control` (on this thread's stack, which moves with it) holds the control words
    // stored before the exit.
    unsafe {
        core::arch::asm!(
            "stmxcsr dword ptr [{control}]",
            "fnstcw word ptr [{control} + 4]",
            "mov qword ptr [r11], rax",
            "ldmxcsr dword ptr [{control}]",
            "fldcw word ptr [{control} + 4]",
            control = in(reg) control.as_mut_ptr(),
            in("r11") Hypercall::Migrate.address(),
            inout("rax") 0u64 => ret,
            in("rdi") u64::from(node),
            in("rsi") pop_abi::hypercall::MIGRATE_AT_CALL,
            in("rdx") counter,
            in("r10") 0u64,
            in("r8") 0u64,
            clobber_abi("C"),
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
