//! The pop library OS.
//!
//! An ordinary Rust `std` program compiled for `x86_64-unknown-hermit` calls the `sys_*`
//! functions declared by the `hermit-abi` crate. This crate implements them and boots the
//! program inside a `popvmm` VM; `cargo pop build` links it into the application as a single
//! relocatable object whose only global symbols are `_start`, `sys_*` and `pop_*`.
//!
//! Design (see `docs/ARCHITECTURE.md` and `pop-abi`):
//! * a guest thread is a vCPU: spawning, joining, sleeping and futex waits are hypercalls that
//!   block in the VMM on the host; there is no scheduler and no interrupt in the guest;
//! * memory is identity mapped; node-private tables and the image sit below
//!   `pop_abi::layout::SHARED_BASE`, and everything the application can write (data, bss,
//!   heap, thread stacks, TLS blocks) above it;
//! * the clock reads the CPU's counter, so `clock_gettime` never exits to the VMM.
//!
//! Architecture-specific code lives in `arch/<arch>`; everything else is shared.
#![no_std]
#![feature(thread_local)]

extern crate alloc;

mod arch;
mod boot;
mod boot_info;
mod console;
mod heap;
mod hypercall;
mod sync;
mod syscalls;
mod thread;
mod time;
mod tls;

/// The marker `popvmm` looks for to recognise an image linked with this libos.
#[used]
#[unsafe(link_section = ".pop_abi")]
static ABI_NOTE: pop_abi::AbiNote = pop_abi::AbiNote {
    magic: pop_abi::ABI_MAGIC,
    version: pop_abi::ABI_VERSION,
    arch: arch::ABI_ARCH,
};

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::write_fmt_stderr(format_args!("libos: panic: {info}\n"));
    crate::hypercall::abort()
}
