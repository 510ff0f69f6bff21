//! The application image: an ELF executable linked with the libos. Validated against the
//! guest memory map before anything is created, then copied into guest memory.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use goblin::elf::header::{ELFMAG, ET_DYN, ET_EXEC, SELFMAG};
use goblin::elf::program_header::{PF_W, PF_X, PT_LOAD, PT_TLS};
use goblin::elf::section_header::SHT_NOBITS;
use pop_abi::layout::{
    IMAGE_BASE, LARGE_PAGE_SIZE, MAX_SHARED_SIZE, PAGE_SIZE, PRIVATE_LIMIT, SHARED_BASE,
};
use pop_abi::{ABI_MAGIC, ABI_SECTION, ABI_VERSION, AbiNote};

use crate::arch;
use crate::memory::GuestMem;

/// Size of the main thread's stack, at the top of application memory.
pub const MAIN_STACK_SIZE: u64 = 8 << 20;
/// Least heap an image must get.
pub const MIN_HEAP_SIZE: u64 = 1 << 20;

/// Why an image cannot run. Every message names the image as the user gave it.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be read.
    #[error("cannot read {name}: {source}")]
    Read {
        /// The image as given.
        name: String,
        /// What the host said.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the ELF magic.
    #[error("{name} is not an ELF file")]
    NotElf {
        /// The image as given.
        name: String,
    },
    /// The file claims to be ELF but its headers are inconsistent.
    #[error("{name} is not a valid ELF file: {reason}")]
    Malformed {
        /// The image as given.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An ELF for another instruction set.
    #[error("{name} is {article} {arch} ELF; this popvmm runs {host} images")]
    WrongArch {
        /// The image as given.
        name: String,
        /// "a" or "an".
        article: &'static str,
        /// The image's architecture.
        arch: String,
        /// The architecture this popvmm runs.
        host: &'static str,
    },
    /// An ELF that is not an executable (an object file, a core dump, ...).
    #[error("{name} is not an executable ELF file (type {kind})")]
    NotExecutable {
        /// The image as given.
        name: String,
        /// The ELF type.
        kind: u16,
    },
    /// An ELF without the libos's ABI note.
    #[error(
        "{name} was not linked with the pop libos (it has no {ABI_SECTION} section); build it with `cargo pop build`"
    )]
    NoLibos {
        /// The image as given.
        name: String,
    },
    /// An ELF whose ABI note does not match this popvmm.
    #[error("{name} has {reason}; rebuild it with `cargo pop build`")]
    BadNote {
        /// The image as given.
        name: String,
        /// What is wrong with the note.
        reason: String,
    },
    /// A segment at a place the memory map does not allow.
    #[error("{name}: {reason}")]
    Layout {
        /// The image as given.
        name: String,
        /// Which segment and why.
        reason: String,
    },
    /// `--memory` cannot hold the writable segments, the heap and the main stack.
    #[error(
        "--memory {memory} is too small for {name}: it needs at least {needed} ({writable} of writable segments + {heap} heap + {stack} main stack)",
        memory = MiB(*.memory), needed = MiB(*.needed), writable = MiB(*.writable),
        heap = MiB(MIN_HEAP_SIZE), stack = MiB(MAIN_STACK_SIZE)
    )]
    TooSmall {
        /// The image as given.
        name: String,
        /// The memory asked for.
        memory: u64,
        /// The least memory that works.
        needed: u64,
        /// Bytes taken by writable segments.
        writable: u64,
    },
}

/// Formats a byte count in MiB (`1.5 MiB`, `256 MiB`).
struct MiB(u64);

impl std::fmt::Display for MiB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", self.0 >> 20)
        } else {
            write!(f, "{:.1} MiB", self.0 as f64 / (1 << 20) as f64)
        }
    }
}

/// One loadable segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest address of the first byte.
    pub vaddr: u64,
    /// Bytes in memory (the part past the file data is zero).
    pub memsz: u64,
    /// Where the initialized bytes are in the image file.
    pub file_range: Range<usize>,
    /// Whether the application may write it (then it lives in shared memory).
    pub writable: bool,
    /// Whether it holds code.
    pub executable: bool,
}

impl Segment {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.vaddr + self.memsz
    }
}

/// The thread-local storage template (`PT_TLS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// Guest address of the initialization image.
    pub vaddr: u64,
    /// Bytes of initialized data.
    pub filesz: u64,
    /// Total bytes of the TLS block.
    pub memsz: u64,
    /// Alignment of the TLS block (at least 1).
    pub align: u64,
}

/// A validated application image.
#[derive(Clone, Debug)]
pub struct Image {
    /// The image as the user named it (also the guest's `argv[0]`).
    pub name: String,
    /// Entry point (`_start` of the libos).
    pub entry: u64,
    /// Loadable segments.
    pub segments: Vec<Segment>,
    /// Thread-local storage template, if any.
    pub tls: Option<Tls>,
    /// The whole file, kept for symbolizing fault reports.
    pub bytes: Arc<ImageBytes>,
}

impl Image {
    /// Reads and validates the image at `path`.
    pub fn from_file(path: &Path) -> Result<Image, ImageError> {
        let name = path.display().to_string();
        let bytes = ImageBytes::map(path).map_err(|source| ImageError::Read {
            name: name.clone(),
            source,
        })?;
        Image::parse(name, Arc::new(bytes))
    }

    /// Validates an image already in memory.
    pub fn parse(name: String, bytes: Arc<ImageBytes>) -> Result<Image, ImageError> {
        if bytes.len() < SELFMAG || &bytes[..SELFMAG] != ELFMAG {
            return Err(ImageError::NotElf { name });
        }
        let malformed = |reason: String| ImageError::Malformed {
            name: name.clone(),
            reason,
        };
        let header =
            goblin::elf::Elf::parse_header(&bytes).map_err(|e| malformed(e.to_string()))?;
        if header.e_machine != arch::ELF_MACHINE {
            let (article, arch) = machine_name(header.e_machine);
            return Err(ImageError::WrongArch {
                name,
                article,
                arch,
                host: pop_abi::Isa::NATIVE.name(),
            });
        }
        if header.e_type != ET_EXEC && header.e_type != ET_DYN {
            return Err(ImageError::NotExecutable {
                name,
                kind: header.e_type,
            });
        }
        let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| malformed(e.to_string()))?;
        if !elf.is_64 || !elf.little_endian {
            return Err(malformed("not a 64-bit little-endian ELF".into()));
        }
        check_note(&name, &elf, &bytes)?;

        let mut segments = Vec::new();
        let mut tls = None;
        for ph in &elf.program_headers {
            if ph.p_type != PT_LOAD && ph.p_type != PT_TLS {
                continue;
            }
            let file_range = ph
                .p_offset
                .checked_add(ph.p_filesz)
                .filter(|&end| end <= bytes.len() as u64 && ph.p_filesz <= ph.p_memsz)
                .map(|end| ph.p_offset as usize..end as usize)
                .ok_or_else(|| {
                    malformed(format!(
                        "segment at {:#x} has bad sizes or offsets",
                        ph.p_vaddr
                    ))
                })?;
            if ph.p_vaddr.checked_add(ph.p_memsz).is_none() {
                return Err(malformed(format!(
                    "segment at {:#x} wraps around",
                    ph.p_vaddr
                )));
            }
            if ph.p_type == PT_TLS {
                tls = Some(Tls {
                    vaddr: ph.p_vaddr,
                    filesz: ph.p_filesz,
                    memsz: ph.p_memsz,
                    align: ph.p_align.max(1),
                });
            } else if ph.p_memsz > 0 {
                segments.push(Segment {
                    vaddr: ph.p_vaddr,
                    memsz: ph.p_memsz,
                    file_range,
                    writable: ph.p_flags & PF_W != 0,
                    executable: ph.p_flags & PF_X != 0,
                });
            }
        }
        let image = Image {
            name,
            entry: elf.entry,
            segments,
            tls,
            bytes: bytes.clone(),
        };
        image.check_layout()?;
        Ok(image)
    }

    /// An image made of raw machine code at [`IMAGE_BASE`] (entry point there), with no ELF
    /// file behind it: for tests of the VMM without a libos.
    pub fn raw_code(code: &[u8]) -> Image {
        Image {
            name: "raw-code".into(),
            entry: IMAGE_BASE,
            segments: vec![Segment {
                vaddr: IMAGE_BASE,
                memsz: code.len().max(1) as u64,
                file_range: 0..code.len(),
                writable: false,
                executable: true,
            }],
            tls: None,
            bytes: Arc::new(code.to_vec().into()),
        }
    }

    /// Checks the segments against the memory map (independent of `--memory`).
    fn check_layout(&self) -> Result<(), ImageError> {
        let layout = |reason: String| ImageError::Layout {
            name: self.name.clone(),
            reason,
        };
        for s in &self.segments {
            if s.vaddr < IMAGE_BASE {
                return Err(layout(format!(
                    "segment at {:#x} lies below the image base {IMAGE_BASE:#x}, over the VMM's tables",
                    s.vaddr
                )));
            }
            if s.writable && (s.vaddr < SHARED_BASE || s.end() > SHARED_BASE + MAX_SHARED_SIZE) {
                return Err(layout(format!(
                    "writable segment [{:#x}, {:#x}) lies outside application memory (from {SHARED_BASE:#x})",
                    s.vaddr,
                    s.end()
                )));
            }
            if !s.writable && s.end() > PRIVATE_LIMIT {
                return Err(layout(format!(
                    "read-only segment [{:#x}, {:#x}) ends above the private memory limit {PRIVATE_LIMIT:#x}",
                    s.vaddr,
                    s.end()
                )));
            }
        }
        if !self
            .segments
            .iter()
            .any(|s| s.executable && (s.vaddr..s.end()).contains(&self.entry))
        {
            return Err(layout(format!(
                "entry point {:#x} is not in an executable segment",
                self.entry
            )));
        }
        Ok(())
    }

    /// Checks that `memory` bytes of application memory hold the writable segments, a
    /// minimal heap and the main stack.
    pub fn check_fits(&self, memory: u64) -> Result<(), ImageError> {
        let writable = self.heap_start() - SHARED_BASE;
        let needed = writable + MIN_HEAP_SIZE + MAIN_STACK_SIZE;
        if memory < needed {
            return Err(ImageError::TooSmall {
                name: self.name.clone(),
                memory,
                needed,
                writable,
            });
        }
        Ok(())
    }

    /// Size of node-private memory: the end of the highest read-only segment, rounded up to
    /// a large page.
    pub fn private_size(&self) -> u64 {
        let end = self
            .segments
            .iter()
            .filter(|s| !s.writable)
            .map(Segment::end)
            .max()
            .unwrap_or(IMAGE_BASE);
        end.max(IMAGE_BASE).div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE
    }

    /// First byte of the heap: the first page after the writable segments.
    pub fn heap_start(&self) -> u64 {
        let end = self
            .segments
            .iter()
            .filter(|s| s.writable)
            .map(Segment::end)
            .max()
            .unwrap_or(SHARED_BASE);
        end.max(SHARED_BASE).div_ceil(PAGE_SIZE) * PAGE_SIZE
    }

    /// Copies the segments' initialized bytes into guest memory (the rest is already zero).
    pub fn load(&self, mem: &GuestMem) -> Result<(), ImageError> {
        for s in &self.segments {
            if !mem.contains(s.vaddr, s.memsz) {
                return Err(ImageError::Layout {
                    name: self.name.clone(),
                    reason: format!(
                        "segment [{:#x}, {:#x}) does not fit in guest memory",
                        s.vaddr,
                        s.end()
                    ),
                });
            }
            mem.write(s.vaddr, &self.bytes[s.file_range.clone()])
                .map_err(|_| ImageError::Layout {
                    name: self.name.clone(),
                    reason: format!("segment at {:#x} cannot be loaded", s.vaddr),
                })?;
        }
        Ok(())
    }
}

/// Checks the libos's ABI note in the [`ABI_SECTION`] section.
fn check_note(name: &str, elf: &goblin::elf::Elf<'_>, bytes: &[u8]) -> Result<(), ImageError> {
    let section = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(ABI_SECTION))
        .ok_or_else(|| ImageError::NoLibos { name: name.into() })?;
    let bad = |reason: String| ImageError::BadNote {
        name: name.into(),
        reason,
    };
    let data = (section.sh_type != SHT_NOBITS)
        .then(|| section.sh_offset.checked_add(section.sh_size))
        .flatten()
        .and_then(|end| bytes.get(section.sh_offset as usize..end as usize))
        .ok_or_else(|| bad(format!("an unreadable {ABI_SECTION} section")))?;
    let note = AbiNote::from_bytes(data)
        .ok_or_else(|| bad(format!("a truncated {ABI_SECTION} section")))?;
    if note.magic != ABI_MAGIC {
        return Err(bad(format!(
            "a {ABI_SECTION} section without the libos magic"
        )));
    }
    if note.version != ABI_VERSION {
        return Err(bad(format!(
            "a libos for pop ABI version {}, but this popvmm speaks version {ABI_VERSION}",
            note.version
        )));
    }
    if note.arch != pop_abi::Isa::NATIVE.abi() {
        return Err(bad(format!(
            "a libos built for {}, but this popvmm runs {} images",
            abi_arch_name(note.arch),
            pop_abi::Isa::NATIVE
        )));
    }
    Ok(())
}

/// A human name for an ELF `e_machine`, with its indefinite article.
fn machine_name(machine: u16) -> (&'static str, String) {
    use goblin::elf::header::*;
    let (article, name) = match machine {
        EM_X86_64 => ("an", "x86_64"),
        EM_AARCH64 => ("an", "aarch64"),
        EM_386 => ("an", "x86 (32-bit)"),
        EM_ARM => ("an", "arm (32-bit)"),
        EM_RISCV => ("a", "riscv"),
        EM_PPC64 => ("a", "ppc64"),
        EM_S390 => ("an", "s390"),
        other => return ("an", format!("unknown-architecture (machine {other})")),
    };
    (article, name.to_string())
}

/// A human name for an [`pop_abi::AbiNote::arch`] value.
fn abi_arch_name(arch: u32) -> String {
    match pop_abi::Isa::from_abi(arch) {
        Some(isa) => isa.name().into(),
        None => format!("unknown architecture {arch}"),
    }
}

mod file;
#[cfg(test)]
mod tests;

pub use file::ImageBytes;
