//! The process: exit, abort, ids, parallelism, errno.

use pop_abi::Hypercall;

use super::{ERRNO, check, hc};
use crate::boot_info;
use crate::hypercall;

#[unsafe(no_mangle)]
extern "C" fn sys_exit(status: i32) -> ! {
    hypercall::exit(status)
}

#[unsafe(no_mangle)]
extern "C" fn sys_abort() -> ! {
    hypercall::abort()
}

#[unsafe(no_mangle)]
extern "C" fn sys_getpid() -> i32 {
    boot_info::info().pid as i32
}

#[unsafe(no_mangle)]
extern "C" fn sys_available_parallelism() -> usize {
    boot_info::info().parallelism.max(1) as usize
}

#[unsafe(no_mangle)]
extern "C" fn sys_get_processor_count() -> usize {
    sys_available_parallelism()
}

#[unsafe(no_mangle)]
extern "C" fn sys_get_errno() -> i32 {
    ERRNO.get()
}

#[unsafe(no_mangle)]
extern "C" fn sys_errno() -> i32 {
    ERRNO.get()
}

/// Fills `buf` with random bytes from the host.
#[unsafe(no_mangle)]
unsafe extern "C" fn sys_read_entropy(buf: *mut u8, len: usize, _flags: u32) -> isize {
    hc(Hypercall::Entropy, buf as u64, len as u64, 0, 0, 0) as isize
}

/// The cluster's nodes (for the `pop` crate): at most `max` entries written at `buf`; returns
/// how many there are, or a negated errno.
#[unsafe(no_mangle)]
unsafe extern "C" fn pop_nodes(buf: *mut pop_abi::NodeEntry, max: usize) -> isize {
    hc(Hypercall::Nodes, buf as u64, max as u64, 0, 0, 0) as isize
}

/// Moves the calling thread to node `node` (for the `pop` crate): 0 once it runs there, or a
/// negated errno (and it runs on here).
#[unsafe(no_mangle)]
extern "C" fn pop_migrate(node: u32) -> i32 {
    check(crate::arch::hypercall::migrate(node)) as i32
}

/// The id of the node the calling thread runs on (for the `pop` crate). The boot information
/// is node-private: each node's copy names that node, and the VMM rewrites it where a
/// migrated VM resumes, so it is read afresh each time.
#[unsafe(no_mangle)]
extern "C" fn pop_current_nid() -> u32 {
    let info: *const pop_abi::BootInfo = boot_info::info();
    // SAFETY: the boot information is mapped for the VM's whole life; the VMM changes this
    // field only while every vCPU of this node is stopped.
    unsafe { core::ptr::addr_of!((*info).node_id).read_volatile() }
}
