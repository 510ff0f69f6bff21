//! Entry points the VMM starts vCPUs at.
//!
//! * `_start`: the boot vCPU. The VMM sets `rdi` to the `BootInfo` address and `rsp` to the
//!   top of the main thread's stack.
//! * new threads start at [`crate::thread::thread_entry`] directly: the VMM sets `rdi`, `rsi`
//!   and a stack pointer that looks like a call just happened (`rsp + 8` 16-byte aligned).

core::arch::global_asm!(
    ".section .text._start,\"ax\",@progbits",
    ".global _start",
    ".type _start,@function",
    "_start:",
    "    and rsp, -16",
    "    xor ebp, ebp",
    "    call {boot}",
    "    ud2",
    ".size _start, . - _start",
    boot = sym crate::boot::boot,
);
