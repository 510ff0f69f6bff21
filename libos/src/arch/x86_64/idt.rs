//! Exception handling: every CPU exception is fatal to the application. Exceptions move the
//! CPU from ring 3 (the application) to ring 0 on the vCPU's exception stack. The entry stubs save
//! all registers as a `pop_abi::X86FaultFrame` on the vCPU's exception stack (IST1, set up by
//! the VMM in the vCPU's TSS) and hand the frame to the VMM, which prints the registers and a
//! symbolized backtrace and ends the VM.

use pop_abi::layout::{IDT_ADDR, gdt::KERNEL_CODE_SELECTOR};

/// Number of architecturally defined exception vectors.
const EXCEPTIONS: usize = 32;

/// Gate type: present, DPL 0, 64-bit interrupt gate.
const INTERRUPT_GATE: u8 = 0x8e;

/// The exception stack slot in the TSS used by every gate.
const IST_INDEX: u8 = 1;

unsafe extern "C" {
    /// Table of the 32 entry stubs' addresses, emitted by the assembly below.
    static libos_exception_stubs: [u64; EXCEPTIONS];
}

/// Fills the IDT at `IDT_ADDR` (node-private, shared by all vCPUs of this node; the VMM
/// points every vCPU's IDTR at it).
pub fn install() {
    let idt = IDT_ADDR as *mut [u64; 2];
    // SAFETY: the stub table is immutable data emitted below.
    let stubs = unsafe { &libos_exception_stubs };
    for (vector, &handler) in stubs.iter().enumerate() {
        let low = (handler & 0xffff)
            | (u64::from(KERNEL_CODE_SELECTOR) << 16)
            | (u64::from(IST_INDEX) << 32)
            | (u64::from(INTERRUPT_GATE) << 40)
            | ((handler >> 16) & 0xffff) << 48;
        let high = handler >> 32;
        // SAFETY: the IDT page is node-private memory reserved for this table by the layout,
        // and only the boot vCPU runs while it is written.
        unsafe { idt.add(vector).write_volatile([low, high]) };
    }
}

/// Called by the common stub with the saved frame; never returns.
extern "C" fn exception(frame: *const pop_abi::X86FaultFrame) -> ! {
    crate::hypercall::fault(frame)
}

macro_rules! exception_stubs {
    ($($vector:literal $kind:ident),* $(,)?) => {
        core::arch::global_asm!(
            $(
                concat!(".global libos_exception_", $vector),
                concat!("libos_exception_", $vector, ":"),
                exception_stubs!(@push $kind),
                concat!("    push ", $vector),
                "    jmp libos_exception_common",
            )*
            ".section .rodata.libos_exception_stubs,\"a\",@progbits",
            ".p2align 3",
            ".global libos_exception_stubs",
            "libos_exception_stubs:",
            $( concat!("    .quad libos_exception_", $vector), )*
            ".text",
        );
    };
    (@push noerr) => { "    push 0" };
    (@push err) => { "" };
}

exception_stubs!(
    0 noerr, 1 noerr, 2 noerr, 3 noerr, 4 noerr, 5 noerr, 6 noerr, 7 noerr,
    8 err, 9 noerr, 10 err, 11 err, 12 err, 13 err, 14 err, 15 noerr,
    16 noerr, 17 err, 18 noerr, 19 noerr, 20 noerr, 21 err, 22 noerr, 23 noerr,
    24 noerr, 25 noerr, 26 noerr, 27 noerr, 28 noerr, 29 err, 30 err, 31 noerr,
);

core::arch::global_asm!(
    ".text",
    "libos_exception_common:",
    "    push rax",
    "    push rbx",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push rdi",
    "    push rbp",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov rdi, rsp",
    "    and rsp, -16",
    "    call {handler}",
    "    ud2",
    handler = sym exception,
);
