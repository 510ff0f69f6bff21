//! Memory: the heap behind std's `System` allocator, and anonymous mappings carved from it.

use pop_abi::errno::{EINVAL, ENOMEM, ENOSYS};
use pop_abi::layout::PAGE_SIZE;

use super::fail;
use crate::heap;

#[unsafe(no_mangle)]
extern "C" fn sys_malloc(size: usize, align: usize) -> *mut u8 {
    heap::alloc(size, align, false)
}

#[unsafe(no_mangle)]
extern "C" fn sys_alloc(size: usize, align: usize) -> *mut u8 {
    heap::alloc(size, align, false)
}

#[unsafe(no_mangle)]
extern "C" fn sys_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    heap::alloc(size, align, true)
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_realloc(
    ptr: *mut u8,
    size: usize,
    align: usize,
    new_size: usize,
) -> *mut u8 {
    // SAFETY: std passes a block from sys_malloc with its layout.
    unsafe { heap::realloc(ptr, size, align, new_size) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_free(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: std passes a block from sys_malloc with its layout.
    unsafe { heap::free(ptr, size, align) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_dealloc(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: as for sys_free.
    unsafe { heap::free(ptr, size, align) }
}

#[unsafe(no_mangle)]
extern "C" fn sys_getpagesize() -> i32 {
    PAGE_SIZE as i32
}

/// Anonymous memory: zeroed, page-aligned heap memory. All guest memory is readable,
/// writable and executable, so `prot_flags` cannot be honoured beyond that.
#[unsafe(no_mangle)]
unsafe extern "C" fn sys_mmap(size: usize, _prot_flags: u32, ret: *mut *mut u8) -> i32 {
    if size == 0 || ret.is_null() {
        return fail(EINVAL) as i32;
    }
    let ptr = heap::alloc(
        size.next_multiple_of(PAGE_SIZE as usize),
        PAGE_SIZE as usize,
        true,
    );
    if ptr.is_null() {
        return fail(ENOMEM) as i32;
    }
    // SAFETY: the caller passes a valid out pointer.
    unsafe { ret.write(ptr) };
    0
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_munmap(ptr: *mut u8, size: usize) -> i32 {
    if ptr.is_null() || !(ptr as usize).is_multiple_of(PAGE_SIZE as usize) {
        return fail(EINVAL) as i32;
    }
    // SAFETY: the caller unmaps a whole mapping from sys_mmap, which used this layout.
    unsafe {
        heap::free(
            ptr,
            size.next_multiple_of(PAGE_SIZE as usize),
            PAGE_SIZE as usize,
        )
    };
    0
}

/// Page protections are not managed by the libos (identity map, one set of rights).
#[unsafe(no_mangle)]
extern "C" fn sys_mprotect(_ptr: *mut u8, _size: usize, _prot_flags: u32) -> i32 {
    fail(ENOSYS) as i32
}
