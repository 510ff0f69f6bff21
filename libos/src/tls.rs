//! Thread-local storage blocks, built from the image's `PT_TLS` template (described by the
//! boot information) in application memory.

use crate::{arch, boot_info, heap};

/// Where things go inside one allocation holding a thread's TLS.
pub struct BlockLayout {
    /// Bytes to allocate.
    pub size: usize,
    /// Alignment of the allocation.
    pub align: usize,
    /// Offset of the TLS initialisation image's destination.
    pub data_offset: usize,
    /// Offset the thread pointer points at.
    pub tp_offset: usize,
}

/// One thread's TLS allocation.
pub struct TlsBlock {
    base: *mut u8,
    size: usize,
    align: usize,
    /// The value for the thread pointer register.
    pub thread_pointer: u64,
}

// SAFETY: a TLS block is plain memory owned by the thread registry.
unsafe impl Send for TlsBlock {}

/// Allocates and initialises a TLS block for a new thread.
pub fn new_block() -> Option<TlsBlock> {
    let info = boot_info::info();
    let layout = arch::tls::block_layout(info.tls_memsz as usize, info.tls_align.max(1) as usize);
    let base = heap::alloc(layout.size, layout.align, true);
    if base.is_null() {
        return None;
    }
    // SAFETY: the block is `layout.size` bytes; the template lies in the image and fits
    // (`filesz <= memsz`); the thread pointer offset leaves room for the TCB.
    unsafe {
        if info.tls_filesz > 0 {
            core::ptr::copy_nonoverlapping(
                info.tls_image as *const u8,
                base.add(layout.data_offset),
                info.tls_filesz as usize,
            );
        }
        let tp = base.add(layout.tp_offset);
        arch::tls::init_tcb(tp);
        Some(TlsBlock {
            base,
            size: layout.size,
            align: layout.align,
            thread_pointer: tp as u64,
        })
    }
}

impl Drop for TlsBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new_block` with this size and alignment.
        unsafe { heap::free(self.base, self.size, self.align) }
    }
}
