//! AArch64 TLS layout (ELF "variant I"): the thread pointer points at a 16-byte thread
//! control block, and the TLS data follows it at the TCB size rounded up to the segment's
//! alignment (the offset the linker resolves TLS accesses against).

use crate::tls::BlockLayout;

/// Size of the thread control block (two reserved words).
const TCB_SIZE: usize = 16;

/// The layout for a TLS segment of `memsz` bytes aligned to `align`.
pub fn block_layout(memsz: usize, align: usize) -> BlockLayout {
    let align = align.max(16);
    let data_offset = TCB_SIZE.next_multiple_of(align);
    BlockLayout {
        size: data_offset + memsz,
        align,
        data_offset,
        tp_offset: 0,
    }
}

/// Writes the thread control block at `tp` (zeroed: nothing uses it).
///
/// # Safety
/// `tp` must point at [`TCB_SIZE`] writable bytes.
pub unsafe fn init_tcb(tp: *mut u8) {
    // SAFETY: the caller guarantees the TCB is writable.
    unsafe { core::ptr::write_bytes(tp, 0, TCB_SIZE) };
}
