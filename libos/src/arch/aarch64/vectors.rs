//! Exception handling: every exception is fatal to the application. The vector table sends
//! all sixteen vectors to one routine that saves the registers as a
//! `pop_abi::Aarch64FaultFrame` on the exception stack (`SP_EL1`) and hands the frame to the
//! VMM, which prints the registers and a symbolized backtrace and ends the VM.

/// Bytes reserved on the exception stack for the frame (its size rounded up to 16).
const FRAME_BYTES: usize = core::mem::size_of::<pop_abi::Aarch64FaultFrame>().next_multiple_of(16);

unsafe extern "C" {
    /// The vector table emitted below (2 KiB aligned).
    static libos_vectors: [u8; 0x800];
}

/// Points `VBAR_EL1` at the vector table.
pub fn install() {
    // SAFETY: the table is 2 KiB aligned code emitted below; writing VBAR_EL1 at EL1 only
    // changes where exceptions go.
    unsafe {
        core::arch::asm!(
            "msr vbar_el1, {}",
            "isb",
            in(reg) &raw const libos_vectors,
            options(nostack),
        );
    }
}

/// Called by the common vector code with the saved frame; never returns.
extern "C" fn exception(frame: *const pop_abi::Aarch64FaultFrame) -> ! {
    crate::hypercall::fault(frame)
}

macro_rules! vector_table {
    ($($kind:literal)*) => {
        core::arch::global_asm!(
            ".section .text.libos_vectors,\"ax\",@progbits",
            ".balign 0x800",
            ".global libos_vectors",
            "libos_vectors:",
            $(
                ".balign 0x80",
                "    sub sp, sp, #{frame}",
                "    stp x0, x1, [sp, #0]",
                concat!("    mov x0, #", $kind),
                "    b libos_vector_common",
            )*
            "libos_vector_common:",
            "    stp x2, x3, [sp, #16]",
            "    stp x4, x5, [sp, #32]",
            "    stp x6, x7, [sp, #48]",
            "    stp x8, x9, [sp, #64]",
            "    stp x10, x11, [sp, #80]",
            "    stp x12, x13, [sp, #96]",
            "    stp x14, x15, [sp, #112]",
            "    stp x16, x17, [sp, #128]",
            "    stp x18, x19, [sp, #144]",
            "    stp x20, x21, [sp, #160]",
            "    stp x22, x23, [sp, #176]",
            "    stp x24, x25, [sp, #192]",
            "    stp x26, x27, [sp, #208]",
            "    stp x28, x29, [sp, #224]",
            "    str x30, [sp, #240]",
            "    mrs x1, sp_el0",
            "    str x1, [sp, #248]",
            "    mrs x1, elr_el1",
            "    str x1, [sp, #256]",
            "    mrs x1, spsr_el1",
            "    str x1, [sp, #264]",
            "    mrs x1, esr_el1",
            "    str x1, [sp, #272]",
            "    mrs x1, far_el1",
            "    str x1, [sp, #280]",
            "    str x0, [sp, #288]",
            "    mov x0, sp",
            "    mov x29, xzr",
            "    bl {handler}",
            "    udf #0",
            frame = const FRAME_BYTES,
            handler = sym exception,
        );
    };
}

vector_table!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
