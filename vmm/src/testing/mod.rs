//! Helpers for testing the VMM without a libos: running raw machine code, assembling it
//! ([`asm`]), building small ELF images by hand, and capturing a VM's output. Only built with
//! the `testing` feature (the test suites turn it on; release builds do not have it).

pub mod asm;

use std::sync::Arc;
use std::time::Instant;

use goblin::elf::header::{EM_X86_64, ET_EXEC};
use goblin::elf::program_header::{PF_R, PF_X, PT_LOAD};
use pop_abi::layout::IMAGE_BASE;
use pop_abi::{ABI_MAGIC, ABI_SECTION, ABI_VERSION};

use crate::config::VmConfig;
use crate::image::Image;
use crate::launch::{LaunchError, run_image};
use crate::output::{Captured, Output};
use crate::timings::Timings;
use crate::vm::Outcome;

/// Boots `code` (machine code placed at [`IMAGE_BASE`], entered there with the main thread's
/// registers as for `_start`) and runs it until it ends.
pub fn run_code(code: &[u8], config: &VmConfig) -> Result<Outcome, LaunchError> {
    run_image(
        Image::raw_code(code),
        config,
        Arc::new(Timings::new(Instant::now())),
    )
}

/// One program header of an [`ElfBuilder`] image.
#[derive(Clone, Debug)]
struct ElfSegment {
    p_type: u32,
    flags: u32,
    vaddr: u64,
    data: Vec<u8>,
    memsz: u64,
    align: u64,
}

/// Builds minimal 64-bit little-endian ELF executables.
#[derive(Clone, Debug)]
pub struct ElfBuilder {
    machine: u16,
    kind: u16,
    entry: u64,
    segments: Vec<ElfSegment>,
    sections: Vec<(String, Vec<u8>)>,
}

impl Default for ElfBuilder {
    fn default() -> Self {
        ElfBuilder {
            machine: EM_X86_64,
            kind: ET_EXEC,
            entry: IMAGE_BASE,
            segments: Vec::new(),
            sections: Vec::new(),
        }
    }
}

impl ElfBuilder {
    /// An x86-64 executable with entry point [`IMAGE_BASE`] and nothing else.
    pub fn new() -> ElfBuilder {
        ElfBuilder::default()
    }

    /// Sets `e_machine`.
    pub fn machine(mut self, machine: u16) -> Self {
        self.machine = machine;
        self
    }

    /// Sets `e_type`.
    pub fn kind(mut self, kind: u16) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the entry point.
    pub fn entry(mut self, entry: u64) -> Self {
        self.entry = entry;
        self
    }

    /// Adds a program header.
    pub fn segment(mut self, p_type: u32, flags: u32, vaddr: u64, data: &[u8], memsz: u64) -> Self {
        self.segments.push(ElfSegment {
            p_type,
            flags,
            vaddr,
            data: data.to_vec(),
            memsz,
            align: 0x1000,
        });
        self
    }

    /// Adds a read+execute `PT_LOAD` holding `code` at [`IMAGE_BASE`].
    pub fn code(self, code: &[u8]) -> Self {
        self.segment(PT_LOAD, PF_R | PF_X, IMAGE_BASE, code, code.len() as u64)
    }

    /// Adds a section.
    pub fn section(mut self, name: &str, data: &[u8]) -> Self {
        self.sections.push((name.to_string(), data.to_vec()));
        self
    }

    /// Adds the libos's ABI note for this popvmm.
    pub fn abi_note(self) -> Self {
        self.section(
            ABI_SECTION,
            &abi_note_bytes(&ABI_MAGIC, ABI_VERSION, pop_abi::Isa::NATIVE.abi()),
        )
    }

    /// The ELF file.
    pub fn build(&self) -> Vec<u8> {
        const EHDR: usize = 64;
        const PHDR: usize = 56;
        const SHDR: usize = 64;
        let mut out = vec![0u8; EHDR + PHDR * self.segments.len()];
        let align = |out: &mut Vec<u8>, to: usize| out.resize(out.len().div_ceil(to) * to, 0);
        // Segment data, each at an offset congruent to its address.
        let mut offsets = Vec::new();
        for s in &self.segments {
            align(&mut out, 0x1000);
            out.resize(out.len() + (s.vaddr % 0x1000) as usize, 0);
            offsets.push(out.len());
            out.extend_from_slice(&s.data);
        }
        // Sections: a null one, the given ones, then the section name table.
        let mut names = vec![0u8];
        let mut headers = Vec::new();
        for (name, data) in &self.sections {
            align(&mut out, 8);
            headers.push((
                names.len() as u32,
                1u32, /* PROGBITS */
                out.len(),
                data.len(),
            ));
            names.extend_from_slice(name.as_bytes());
            names.push(0);
            out.extend_from_slice(data);
        }
        let shstrtab_name = names.len() as u32;
        names.extend_from_slice(b".shstrtab\0");
        let shstrtab_at = out.len();
        out.extend_from_slice(&names);
        headers.push((shstrtab_name, 3 /* STRTAB */, shstrtab_at, names.len()));
        align(&mut out, 8);
        let shoff = out.len();
        out.extend(std::iter::repeat_n(0u8, SHDR)); // null section
        for (name, kind, offset, size) in &headers {
            let mut h = [0u8; SHDR];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&(*offset as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(*size as u64).to_le_bytes());
            h[48..56].copy_from_slice(&1u64.to_le_bytes());
            out.extend_from_slice(&h);
        }
        // ELF header.
        let e = &mut out[..EHDR];
        e[0..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // 64-bit
        e[5] = 1; // little endian
        e[6] = 1; // version
        e[16..18].copy_from_slice(&self.kind.to_le_bytes());
        e[18..20].copy_from_slice(&self.machine.to_le_bytes());
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&self.entry.to_le_bytes());
        e[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes());
        e[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        e[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
        e[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
        e[56..58].copy_from_slice(&(self.segments.len() as u16).to_le_bytes());
        e[58..60].copy_from_slice(&(SHDR as u16).to_le_bytes());
        e[60..62].copy_from_slice(&(headers.len() as u16 + 1).to_le_bytes());
        e[62..64].copy_from_slice(&(headers.len() as u16).to_le_bytes());
        // Program headers.
        for (i, (s, offset)) in self.segments.iter().zip(offsets).enumerate() {
            let p = &mut out[EHDR + i * PHDR..EHDR + (i + 1) * PHDR];
            p[0..4].copy_from_slice(&s.p_type.to_le_bytes());
            p[4..8].copy_from_slice(&s.flags.to_le_bytes());
            p[8..16].copy_from_slice(&(offset as u64).to_le_bytes());
            p[16..24].copy_from_slice(&s.vaddr.to_le_bytes());
            p[24..32].copy_from_slice(&s.vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&(s.data.len() as u64).to_le_bytes());
            p[40..48].copy_from_slice(&s.memsz.to_le_bytes());
            p[48..56].copy_from_slice(&s.align.to_le_bytes());
        }
        out
    }
}

/// The bytes of an ABI note.
pub fn abi_note_bytes(magic: &[u8; 8], version: u32, arch: u32) -> Vec<u8> {
    let mut note = magic.to_vec();
    note.extend_from_slice(&version.to_le_bytes());
    note.extend_from_slice(&arch.to_le_bytes());
    note
}

/// A small VM configuration whose stdout and stderr are captured.
pub fn captured() -> (VmConfig, Captured, Captured) {
    let (stdout, out) = Output::capture();
    let (stderr, err) = Output::capture();
    let config = VmConfig {
        memory: 16 << 20,
        max_threads: 4,
        stdout,
        stderr,
        ..VmConfig::default()
    };
    (config, out, err)
}

/// The captured bytes as text.
pub fn text(buffer: &Captured) -> String {
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

/// Reads the `i`th little-endian u64 of captured output.
pub fn u64_at(buffer: &Captured, i: usize) -> u64 {
    let b = buffer.lock().unwrap();
    u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap())
}
