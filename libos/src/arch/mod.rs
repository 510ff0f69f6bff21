//! Architecture-specific code. Each architecture module exports the same items:
//! `ABI_ARCH`, `hypercall` (with `call`, `exit`, `abort`, `thread_exit`), `counter()`,
//! `set_thread_pointer()`, `tls::block_layout()`, and `init_cpu()` for the boot vCPU.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(target_arch = "aarch64")]
compile_error!("the aarch64 port of the libos is not written yet");
