//! Decoding x86-64 crashes: exception vectors, page-fault error codes, the libos's
//! [`X86FaultFrame`] and register dumps.

use std::fmt::Write;
use std::mem::{offset_of, size_of};

use kvm_bindings::{kvm_regs, kvm_sregs};
use pop_abi::X86FaultFrame;

use crate::arch::Crash;
use crate::memory::GuestMem;

/// Vector number of a page fault.
pub const PAGE_FAULT: u64 = 14;

/// The register state shown in a crash report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    /// General-purpose registers in the order rax, rbx, rcx, rdx, rsi, rdi, rbp, rsp, r8..r15.
    pub gprs: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// Page-fault linear address.
    pub cr2: u64,
    /// Exception error code, if the report comes from an exception.
    pub error_code: Option<u64>,
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

impl Registers {
    /// Registers as KVM reports them.
    pub fn from_kvm(regs: &kvm_regs, sregs: &kvm_sregs) -> Registers {
        let r = regs;
        Registers {
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            rip: r.rip,
            rflags: r.rflags,
            cr2: sregs.cr2,
            error_code: None,
        }
    }

    /// Registers saved by the libos's exception entry.
    pub fn from_frame(f: &X86FaultFrame, cr2: u64) -> Registers {
        Registers {
            gprs: [
                f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi, f.rbp, f.rsp, f.r8, f.r9, f.r10, f.r11,
                f.r12, f.r13, f.r14, f.r15,
            ],
            rip: f.rip,
            rflags: f.rflags,
            cr2,
            error_code: Some(f.error_code),
        }
    }

    /// Frame pointer.
    pub fn rbp(&self) -> u64 {
        self.gprs[6]
    }

    /// The register dump of a report: four registers a line, indented by two spaces.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for (row, names) in GPR_NAMES.chunks(4).enumerate() {
            out.push(' ');
            for (col, name) in names.iter().enumerate() {
                let _ = write!(out, " {name:>3} {:#018x}", self.gprs[row * 4 + col]);
            }
            out.push('\n');
        }
        let _ = write!(
            out,
            "  rip {:#018x} rflags {:#010x} cr2 {:#018x}",
            self.rip, self.rflags, self.cr2
        );
        if let Some(code) = self.error_code {
            let _ = write!(out, " error code {code:#x}");
        }
        out.push('\n');
        out
    }
}

/// The mnemonic and description of exception `vector`.
pub fn vector_name(vector: u64) -> (&'static str, &'static str) {
    match vector {
        0 => ("#DE", "divide error"),
        1 => ("#DB", "debug exception"),
        2 => ("NMI", "non-maskable interrupt"),
        3 => ("#BP", "breakpoint"),
        4 => ("#OF", "overflow"),
        5 => ("#BR", "bound range exceeded"),
        6 => ("#UD", "invalid opcode"),
        7 => ("#NM", "device not available"),
        8 => ("#DF", "double fault"),
        10 => ("#TS", "invalid TSS"),
        11 => ("#NP", "segment not present"),
        12 => ("#SS", "stack-segment fault"),
        13 => ("#GP", "general protection fault"),
        14 => ("#PF", "page fault"),
        16 => ("#MF", "x87 floating-point exception"),
        17 => ("#AC", "alignment check"),
        18 => ("#MC", "machine check"),
        19 => ("#XM", "SIMD floating-point exception"),
        20 => ("#VE", "virtualization exception"),
        21 => ("#CP", "control protection exception"),
        _ => ("#??", "exception"),
    }
}

/// Describes a page-fault error code: "(read, not present)", "(write, protection violation)".
pub fn page_fault_cause(error_code: u64) -> String {
    let access = if error_code & 0x10 != 0 {
        "instruction fetch"
    } else if error_code & 0x2 != 0 {
        "write"
    } else {
        "read"
    };
    let why = if error_code & 0x8 != 0 {
        "reserved bit set"
    } else if error_code & 0x1 != 0 {
        "protection violation"
    } else {
        "not present"
    };
    format!("({access}, {why})")
}

/// Reads the [`X86FaultFrame`] the libos saved at `addr`.
pub fn read_frame(mem: &GuestMem, addr: u64) -> Result<X86FaultFrame, i32> {
    let raw = mem.read(addr, size_of::<X86FaultFrame>())?;
    let at =
        |offset: usize| u64::from_le_bytes(raw[offset..offset + 8].try_into().expect("8 bytes"));
    macro_rules! frame {
        ($($field:ident),*) => { X86FaultFrame { $($field: at(offset_of!(X86FaultFrame, $field))),* } };
    }
    Ok(frame!(
        r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax, vector,
        error_code, rip, cs, rflags, rsp, ss
    ))
}

/// The crash described by an exception frame the libos handed over.
pub fn crash_from_frame(frame: &X86FaultFrame, cr2: u64) -> Crash {
    let (mnemonic, name) = vector_name(frame.vector);
    let detail = if frame.vector == PAGE_FAULT {
        Some(format!(
            "address {cr2:#x} {}",
            page_fault_cause(frame.error_code)
        ))
    } else if frame.error_code != 0 {
        Some(format!("error code {:#x}", frame.error_code))
    } else {
        None
    };
    let regs = Registers::from_frame(frame, cr2);
    Crash {
        what: format!("{name} ({mnemonic})"),
        detail,
        pc: frame.rip,
        frame_pointer: frame.rbp,
        registers: regs.dump(),
    }
}

/// A crash the VMM saw itself (triple fault, failed entry, stray I/O, ...).
pub fn crash_from_kvm(
    what: String,
    detail: Option<String>,
    regs: &kvm_regs,
    sregs: &kvm_sregs,
) -> Crash {
    let regs = Registers::from_kvm(regs, sregs);
    Crash {
        what,
        detail,
        pc: regs.rip,
        frame_pointer: regs.rbp(),
        registers: regs.dump(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_fault_causes() {
        assert_eq!(page_fault_cause(0), "(read, not present)");
        assert_eq!(page_fault_cause(2), "(write, not present)");
        assert_eq!(page_fault_cause(3), "(write, protection violation)");
        assert_eq!(
            page_fault_cause(0x11),
            "(instruction fetch, protection violation)"
        );
    }

    #[test]
    fn frame_decodes_and_describes() {
        let mem = GuestMem::new(4 << 20, 2 << 20).unwrap();
        let addr = pop_abi::layout::SHARED_BASE;
        let mut raw = vec![0u8; size_of::<X86FaultFrame>()];
        let put = |raw: &mut Vec<u8>, off: usize, v: u64| {
            raw[off..off + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut raw, offset_of!(X86FaultFrame, vector), 14);
        put(&mut raw, offset_of!(X86FaultFrame, error_code), 0);
        put(&mut raw, offset_of!(X86FaultFrame, rip), 0x40_1234);
        put(&mut raw, offset_of!(X86FaultFrame, rbp), 0x4000_1000);
        put(&mut raw, offset_of!(X86FaultFrame, r15), 0xf15);
        mem.write(addr, &raw).unwrap();
        let frame = read_frame(&mem, addr).unwrap();
        assert_eq!(frame.rip, 0x40_1234);
        assert_eq!(frame.r15, 0xf15);
        let crash = crash_from_frame(&frame, 0);
        assert_eq!(crash.what, "page fault (#PF)");
        assert_eq!(
            crash.detail.as_deref(),
            Some("address 0x0 (read, not present)")
        );
        assert_eq!(crash.frame_pointer, 0x4000_1000);
        assert!(crash.registers.contains("r15 0x0000000000000f15"));
        assert_eq!(
            read_frame(&mem, mem.shared_end() - 8),
            Err(pop_abi::errno::EFAULT)
        );
    }
}
