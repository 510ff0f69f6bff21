//! The x86-64 hypercall instruction: `out dx, eax` to the hypercall's port; arguments in
//! `rdi, rsi, rcx, r8, r9`, result in `rax` (see `pop_abi::hypercall`).

use pop_abi::Hypercall;

/// Issues hypercall `nr` with five arguments and returns the VMM's result.
#[inline]
pub fn call(nr: Hypercall, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let ret: i64;
    // SAFETY: the port I/O exits to the VMM, which only reads the argument registers, reads or
    // writes guest memory the arguments point at (as the hypercall documents) and sets rax.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") nr.x86_port(),
            inout("rax") 0u64 => ret,
            in("rdi") a0,
            in("rsi") a1,
            in("rcx") a2,
            in("r8") a3,
            in("r9") a4,
            options(nostack),
        );
    }
    ret
}

/// Ends the whole VM with `status`.
pub fn exit(status: i32) -> ! {
    call(Hypercall::Exit, status as u64, 0, 0, 0, 0);
    unreachable_after_hypercall()
}

/// Ends the whole VM as aborted.
pub fn abort() -> ! {
    call(Hypercall::Abort, 0, 0, 0, 0, 0);
    unreachable_after_hypercall()
}

/// Ends the calling thread; its vCPU returns to the VMM's pool.
pub fn thread_exit() -> ! {
    call(Hypercall::ThreadExit, 0, 0, 0, 0, 0);
    unreachable_after_hypercall()
}

/// Reports an unrecoverable exception with the saved register frame.
pub fn fault(frame: *const pop_abi::X86FaultFrame) -> ! {
    call(Hypercall::Fault, frame as u64, 0, 0, 0, 0);
    unreachable_after_hypercall()
}

/// A hypercall that must not return did: stop the vCPU for good.
fn unreachable_after_hypercall() -> ! {
    loop {
        // SAFETY: with interrupts disabled, hlt exits to the VMM, which treats it as a fault.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
