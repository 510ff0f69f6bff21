//! Decoding AArch64 crashes: exception syndromes, the libos's [`Aarch64FaultFrame`] and
//! register dumps.

use std::fmt::Write;
use std::mem::size_of;

use pop_abi::Aarch64FaultFrame;

use crate::arch::Crash;
use crate::memory::GuestMem;

/// The register state shown in a crash report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers {
    /// x0 to x30.
    pub x: [u64; 31],
    /// Stack pointer of the interrupted code.
    pub sp: u64,
    /// Program counter.
    pub pc: u64,
    /// Processor state.
    pub pstate: u64,
    /// Exception syndrome and fault address, when the report comes from an exception.
    pub esr_far: Option<(u64, u64)>,
}

impl Registers {
    /// The register dump of a report: four registers a line, indented by two spaces.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for row in self.x.chunks(4).enumerate() {
            let (row, values) = row;
            out.push(' ');
            for (col, value) in values.iter().enumerate() {
                let _ = write!(out, " {:>3} {value:#018x}", format!("x{}", row * 4 + col));
            }
            out.push('\n');
        }
        let _ = write!(
            out,
            "   sp {:#018x}  pc {:#018x} pstate {:#010x}",
            self.sp, self.pc, self.pstate
        );
        if let Some((esr, far)) = self.esr_far {
            let _ = write!(out, " esr {esr:#x} far {far:#x}");
        }
        out.push('\n');
        out
    }
}

/// Exception class of a syndrome.
fn exception_class(esr: u64) -> u64 {
    (esr >> 26) & 0x3f
}

/// What an exception with syndrome `esr` (at fault address `far`) was, and its details.
pub fn describe(esr: u64, far: u64) -> (String, Option<String>) {
    let iss = esr & 0x1ff_ffff;
    match exception_class(esr) {
        0x00 => ("undefined instruction".into(), None),
        0x07 => ("FP/SIMD access trapped".into(), None),
        0x15 => ("supervisor call (svc)".into(), None),
        0x20 | 0x21 => (
            "instruction abort".into(),
            Some(format!("address {far:#x} ({})", fault_status(iss))),
        ),
        0x22 => (
            "PC alignment fault".into(),
            Some(format!("address {far:#x}")),
        ),
        0x24 | 0x25 => {
            let access = if iss & (1 << 6) != 0 { "write" } else { "read" };
            (
                "data abort".into(),
                Some(format!(
                    "address {far:#x} ({access}, {})",
                    fault_status(iss)
                )),
            )
        }
        0x26 => ("SP alignment fault".into(), None),
        0x2c => ("floating-point exception".into(), None),
        0x3c => (
            "breakpoint (brk)".into(),
            Some(format!("immediate {:#x}", iss & 0xffff)),
        ),
        ec => (
            format!("exception class {ec:#x}"),
            Some(format!("syndrome {esr:#x}")),
        ),
    }
}

/// The fault status code of an abort, in words.
fn fault_status(iss: u64) -> String {
    let code = iss & 0x3f;
    let level = code & 3;
    match code >> 2 {
        0 => format!("address size fault, level {level}"),
        1 => format!("translation fault, level {level}"),
        2 => format!("access flag fault, level {level}"),
        3 => format!("permission fault, level {level}"),
        _ if code == 0x21 => "alignment fault".to_string(),
        _ => format!("fault status {code:#x}"),
    }
}

/// Reads the [`Aarch64FaultFrame`] the libos saved at `addr`.
pub fn read_frame(mem: &GuestMem, addr: u64) -> Result<Aarch64FaultFrame, i32> {
    let raw = mem.read(addr, size_of::<Aarch64FaultFrame>())?;
    let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let mut frame = Aarch64FaultFrame::default();
    for (i, x) in frame.x.iter_mut().enumerate() {
        *x = word(i);
    }
    frame.sp = word(31);
    frame.elr = word(32);
    frame.spsr = word(33);
    frame.esr = word(34);
    frame.far = word(35);
    frame.kind = word(36);
    Ok(frame)
}

/// The crash described by an exception frame the libos handed over.
pub fn crash_from_frame(frame: &Aarch64FaultFrame) -> Crash {
    let (what, detail) = match frame.kind & 3 {
        0 => describe(frame.esr, frame.far),
        1 => ("unexpected IRQ".to_string(), None),
        2 => ("unexpected FIQ".to_string(), None),
        _ => (
            "SError".to_string(),
            Some(format!("syndrome {:#x}", frame.esr)),
        ),
    };
    let regs = Registers {
        x: frame.x,
        sp: frame.sp,
        pc: frame.elr,
        pstate: frame.spsr,
        esr_far: Some((frame.esr, frame.far)),
    };
    Crash {
        what,
        detail,
        pc: frame.elr,
        frame_pointer: frame.x[29],
        registers: regs.dump(),
    }
}

/// A crash the VMM saw itself (a stray MMIO access, a failed entry, ...).
pub fn crash_from_registers(what: String, detail: Option<String>, regs: &Registers) -> Crash {
    Crash {
        what,
        detail,
        pc: regs.pc,
        frame_pointer: regs.x[29],
        registers: regs.dump(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syndromes_are_described() {
        // A data abort from the current EL: read, translation fault at level 3.
        let esr = (0x25 << 26) | 0x7;
        assert_eq!(
            describe(esr, 0),
            (
                "data abort".to_string(),
                Some("address 0x0 (read, translation fault, level 3)".to_string())
            )
        );
        assert_eq!(describe(0, 0).0, "undefined instruction");
        let write = (0x25 << 26) | (1 << 6) | 0xf;
        assert!(
            describe(write, 8)
                .1
                .unwrap()
                .contains("write, permission fault")
        );
    }
}
