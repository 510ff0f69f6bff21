//! Boot: from the VMM's hand-off to std's `runtime_entry`.

use pop_abi::{ABI_VERSION, BOOT_INFO_MAGIC, BootInfo};

use crate::{arch, boot_info, heap, tls};

unsafe extern "C" {
    /// std's entry point for the hermit targets: initialises the environment, runs `main` and
    /// exits through `sys_exit`.
    fn runtime_entry(argc: i32, argv: *const *const u8, envp: *const *const u8) -> !;
}

unsafe extern "C" {
    static __init_array_start: [unsafe extern "C" fn(); 0];
    static __init_array_end: [unsafe extern "C" fn(); 0];
}

/// Called by the architecture's `_start` on the boot vCPU with the stack set up.
pub extern "C" fn boot(info: *const BootInfo) -> ! {
    arch::init_cpu();
    // SAFETY: the VMM wrote a BootInfo at this node-private address before starting us.
    let valid = unsafe { (*info).magic == BOOT_INFO_MAGIC && (*info).abi_version == ABI_VERSION };
    if !valid {
        crate::console::write_stderr(b"libos: bad boot information from the VMM\n");
        crate::hypercall::abort();
    }
    boot_info::publish(info);
    let info = boot_info::info();

    heap::init(info.heap_start, info.heap_end);
    let tp = tls::new_block().unwrap_or_else(|| {
        crate::console::write_stderr(b"libos: no memory for the main thread's TLS\n");
        crate::hypercall::abort()
    });
    // SAFETY: `tp` is a freshly initialised TLS block that lives as long as the program.
    unsafe { arch::set_thread_pointer(tp.thread_pointer) };
    core::mem::forget(tp);

    run_init_array();
    // SAFETY: argv and envp are NULL-terminated arrays of C strings written by the VMM.
    unsafe { runtime_entry(info.argc as i32, info.argv as _, info.envp as _) }
}

/// Runs the image's `.init_array` constructors, in order.
fn run_init_array() {
    // SAFETY: the linker script brackets `.init_array` with these two symbols.
    let (start, end) = unsafe { (__init_array_start.as_ptr(), __init_array_end.as_ptr()) };
    let mut f = start;
    while f < end {
        // SAFETY: every entry between the two symbols is a constructor function pointer.
        unsafe {
            (*f)();
            f = f.add(1);
        }
    }
}
