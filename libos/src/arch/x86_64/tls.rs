//! x86-64 TLS layout (ELF "variant II"): the TLS block sits just below the thread pointer,
//! and the thread control block at the thread pointer starts with a pointer to itself.

use crate::tls::BlockLayout;

/// Size of the thread control block: the self pointer, padded.
const TCB_SIZE: usize = 16;

/// The layout for a TLS segment of `memsz` bytes aligned to `align`.
///
/// The linker resolves TLS offsets against a thread pointer `memsz` rounded up to the
/// segment's own alignment past the block's start, so exactly that distance must separate
/// the data from the thread pointer; the thread pointer itself is kept 16-byte aligned.
pub fn block_layout(memsz: usize, align: usize) -> BlockLayout {
    let align = align.max(1);
    let tls_size = memsz.next_multiple_of(align);
    let tp_offset = tls_size.next_multiple_of(16);
    BlockLayout {
        size: tp_offset + TCB_SIZE,
        align: align.max(16),
        data_offset: tp_offset - tls_size,
        tp_offset,
    }
}

/// Writes the thread control block at `tp`.
///
/// # Safety
/// `tp` must point at [`TCB_SIZE`] writable bytes.
pub unsafe fn init_tcb(tp: *mut u8) {
    // SAFETY: the caller guarantees the TCB is writable; it is 16-byte aligned.
    unsafe { (tp as *mut u64).write(tp as u64) };
}
