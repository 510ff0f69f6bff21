//! The heap: one allocator over `[heap_start, heap_end)` of application memory, serving both
//! std (through `sys_malloc` and friends) and the libos itself (its `#[global_allocator]`).

use core::alloc::{GlobalAlloc, Layout};

use talc::{ErrOnOom, Span, Talc, Talck};

use crate::sync::FutexRawMutex;

/// The allocator. Its state lives in `.bss`, i.e. application memory, like the heap itself.
#[global_allocator]
pub static HEAP: Talck<FutexRawMutex, ErrOnOom> = Talc::new(ErrOnOom).lock();

/// Hands the heap range to the allocator. Called once at boot.
pub fn init(start: u64, end: u64) {
    let span = Span::new(start as *mut u8, end as *mut u8);
    // SAFETY: the VMM reserves [heap_start, heap_end) for the heap; nothing else uses it.
    let claimed = unsafe { HEAP.lock().claim(span) };
    if claimed.is_err() {
        crate::console::write_stderr(b"libos: the heap is too small\n");
        crate::hypercall::abort();
    }
}

/// Allocates `size` bytes aligned to `align`; null on failure or a bad layout.
pub fn alloc(size: usize, align: usize, zeroed: bool) -> *mut u8 {
    let Ok(layout) = Layout::from_size_align(size.max(1), align.max(1)) else {
        return core::ptr::null_mut();
    };
    // SAFETY: the layout has a non-zero size.
    unsafe {
        if zeroed {
            HEAP.alloc_zeroed(layout)
        } else {
            HEAP.alloc(layout)
        }
    }
}

/// Frees a block from [`alloc`] with the same size and alignment.
///
/// # Safety
/// `ptr` must come from [`alloc`] (or [`realloc`]) with this `size` and `align`.
pub unsafe fn free(ptr: *mut u8, size: usize, align: usize) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: the caller passes the layout the block was allocated with.
    unsafe {
        HEAP.dealloc(
            ptr,
            Layout::from_size_align_unchecked(size.max(1), align.max(1)),
        )
    }
}

/// Resizes a block; null on failure (the old block is then untouched).
///
/// # Safety
/// As for [`free`].
pub unsafe fn realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
    if ptr.is_null() {
        return alloc(new_size, align, false);
    }
    // SAFETY: the caller passes the layout the block was allocated with.
    unsafe {
        HEAP.realloc(
            ptr,
            Layout::from_size_align_unchecked(size.max(1), align.max(1)),
            new_size.max(1),
        )
    }
}
