//! Linker scripts that place an image at the addresses of `pop-abi`'s memory map.
//!
//! Node-private, read-only contents (text, rodata, the libos's ABI note, unwind tables,
//! `.init_array`, relro data, the GOT and the TLS template) start at
//! `pop_abi::layout::IMAGE_BASE`; the application-writable `.data` and `.bss` start at
//! `pop_abi::layout::SHARED_BASE`, the only range the DSM shares between nodes.

pub mod wrapper;

use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::error::Result;
use crate::fsutil;

/// The linker script, the same for every architecture (the memory map is).
const IMAGE: &str = include_str!("image.ld");

/// File name of the linker script written next to the prelinked libos.
const SCRIPT_NAME: &str = "link.ld";

/// The linker script for `arch`.
pub fn script(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 | Arch::Aarch64 => IMAGE,
    }
}

/// Writes the linker script for `arch` into `dir` (only if its contents changed) and
/// returns its path.
pub fn write(dir: &Path, arch: Arch) -> Result<PathBuf> {
    let script = script(arch);
    let path = dir.join(SCRIPT_NAME);
    fsutil::write_if_changed(&path, script.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_abi::layout::{IMAGE_BASE, PAGE_SIZE, PRIVATE_LIMIT, SHARED_BASE};

    #[test]
    fn script_uses_the_abi_addresses() {
        let script = script(Arch::X86_64);
        assert_eq!(script, self::script(Arch::Aarch64));
        assert!(script.contains(&format!(". = {IMAGE_BASE:#x};")));
        assert!(script.contains(&format!(". = {SHARED_BASE:#x};")));
        assert!(script.contains(&format!("ALIGN({PAGE_SIZE:#x})")));
        assert!(script.contains(&format!("{PRIVATE_LIMIT:#x}")));
        for symbol in [
            "__pop_data_start",
            "__pop_data_end",
            "__init_array_start",
            "__init_array_end",
            "KEEP(*(.pop_abi))",
            "KEEP(*(.text._start))",
        ] {
            assert!(script.contains(symbol), "{symbol} missing");
        }
    }
}
