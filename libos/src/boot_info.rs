//! The boot information the VMM handed over, published once at boot for everything else.

use core::sync::atomic::{AtomicPtr, Ordering};

use pop_abi::BootInfo;

/// The boot information, published once by [`publish`] before any other thread exists.
static BOOT_INFO: AtomicPtr<BootInfo> = AtomicPtr::new(core::ptr::null_mut());

/// Makes `info` (checked by the caller) the boot information.
pub fn publish(info: *const BootInfo) {
    BOOT_INFO.store(info.cast_mut(), Ordering::Relaxed);
}

/// The boot information the VMM handed over.
pub fn info() -> &'static BootInfo {
    // SAFETY: set once by `publish` at boot to the VMM's BootInfo before any caller runs.
    unsafe { &*BOOT_INFO.load(Ordering::Relaxed) }
}
