//! Entry points the VMM starts vCPUs at.
//!
//! * `_start`: the boot vCPU. The VMM sets `x0` to the `BootInfo` address and `SP_EL0` to the
//!   top of the main thread's stack.
//! * new threads start at [`crate::thread::thread_entry`] directly, with `x0`, `x1` and a
//!   16-byte aligned stack pointer.

core::arch::global_asm!(
    ".section .text._start,\"ax\",@progbits",
    ".global _start",
    ".type _start,@function",
    "_start:",
    "    mov x29, xzr",
    "    mov x30, xzr",
    "    bl {boot}",
    "    udf #0",
    ".size _start, . - _start",
    boot = sym crate::boot::boot,
);
