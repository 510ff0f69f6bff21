//! Architecture-specific code. Each architecture module exports the same items:
//! `ABI_ARCH`, `hypercall` (with `call` and `migrate`), `counter()`,
//! `set_thread_pointer()`, `thread_stack_pointer()`, `spin_hint()`, `tls::block_layout()`,
//! `tls::init_tcb()`, and `init_cpu()` for the boot vCPU.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;
