//! Address to function and source line: DWARF through addr2line when the image has it,
//! otherwise the ELF symbol table, names demangled.

use addr2line::gimli::{self, EndianSlice, RunTimeEndian};
use goblin::elf::Elf;
use goblin::elf::sym::STT_FUNC;

/// What an address resolves to: one per inlined function, innermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolInfo {
    /// Demangled function name (without the hash).
    pub function: String,
    /// `file:line`, when known.
    pub location: Option<String>,
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// Symbolizes addresses of one image.
pub struct Symbolizer<'a> {
    dwarf: Option<addr2line::Context<Reader<'a>>>,
    /// Function symbols sorted by address: (start, size, mangled name).
    symbols: Vec<(u64, u64, &'a str)>,
}

impl<'a> Symbolizer<'a> {
    /// Reads the debug information and symbols of the ELF file `bytes` (none if it is not one).
    pub fn new(bytes: &'a [u8]) -> Symbolizer<'a> {
        let Ok(elf) = Elf::parse(bytes) else {
            return Symbolizer {
                dwarf: None,
                symbols: Vec::new(),
            };
        };
        let mut symbols: Vec<_> = elf
            .syms
            .iter()
            .filter(|s| s.st_type() == STT_FUNC && s.st_value != 0)
            .filter_map(|s| Some((s.st_value, s.st_size, elf.strtab.get_at(s.st_name)?)))
            .collect();
        symbols.sort_unstable();
        Symbolizer {
            dwarf: load_dwarf(&elf, bytes),
            symbols,
        }
    }

    /// What `addr` is, innermost inlined function first; empty if unknown.
    pub fn lookup(&self, addr: u64) -> Vec<SymbolInfo> {
        let mut out = self.lookup_dwarf(addr);
        if out.is_empty() {
            out.extend(self.lookup_symbol(addr).map(|function| SymbolInfo {
                function,
                location: None,
            }));
        } else if out.iter().any(|i| i.function == "??")
            && let Some(name) = self.lookup_symbol(addr)
        {
            for info in out.iter_mut().filter(|i| i.function == "??") {
                info.function = name.clone();
            }
        }
        out
    }

    fn lookup_dwarf(&self, addr: u64) -> Vec<SymbolInfo> {
        let mut out = Vec::new();
        let Some(ctx) = &self.dwarf else { return out };
        let Ok(mut frames) = ctx.find_frames(addr).skip_all_loads() else {
            return out;
        };
        while let Ok(Some(frame)) = frames.next() {
            let function = frame
                .function
                .as_ref()
                .and_then(|f| f.raw_name().ok())
                .map(|name| demangle(&name))
                .unwrap_or_else(|| "??".into());
            let location = frame.location.as_ref().and_then(|l| {
                let file = short_path(l.file?);
                Some(match l.line {
                    Some(line) => format!("{file}:{line}"),
                    None => file.to_string(),
                })
            });
            out.push(SymbolInfo { function, location });
        }
        out
    }

    fn lookup_symbol(&self, addr: u64) -> Option<String> {
        let i = self
            .symbols
            .partition_point(|&(start, _, _)| start <= addr)
            .checked_sub(1)?;
        let (start, size, name) = self.symbols[i];
        (size == 0 || addr < start + size).then(|| demangle(name))
    }
}

/// Demangles a Rust symbol (without its hash); other names pass through.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(d) => format!("{d:#}"),
        Err(_) => name.to_string(),
    }
}

/// Loads the DWARF sections of `elf`, if it has any.
fn load_dwarf<'a>(elf: &Elf<'a>, bytes: &'a [u8]) -> Option<addr2line::Context<Reader<'a>>> {
    let endian = if elf.little_endian {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let section = |name: &str| -> &'a [u8] {
        elf.section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(name))
            .filter(|sh| sh.sh_type != goblin::elf::section_header::SHT_NOBITS)
            .and_then(|sh| {
                bytes.get(sh.sh_offset as usize..sh.sh_offset.checked_add(sh.sh_size)? as usize)
            })
            .unwrap_or(&[])
    };
    if section(".debug_info").is_empty() {
        return None;
    }
    let dwarf = gimli::Dwarf::load(|id| -> Result<Reader<'a>, gimli::Error> {
        Ok(EndianSlice::new(section(id.name()), endian))
    })
    .ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_an_elf_symbolizes_nothing() {
        let s = Symbolizer::new(b"\x90\x90\xcc");
        assert!(s.lookup(0x40_0000).is_empty());
    }

    #[test]
    fn demangles_rust_names_without_hash() {
        assert_eq!(
            demangle("_ZN5hello5crash17h0123456789abcdefE"),
            "hello::crash"
        );
        assert_eq!(demangle("memcpy"), "memcpy");
    }

    #[test]
    fn symbolizes_this_test_binary() {
        // The test executable itself is an ELF with DWARF (debug build): a function of ours
        // must resolve to its name.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let s = Symbolizer::new(&exe);
        let elf = Elf::parse(&exe).unwrap();
        let sym = elf
            .syms
            .iter()
            .find(|sym| {
                elf.strtab
                    .get_at(sym.st_name)
                    .is_some_and(|n| n.contains("demangles_rust_names_without_hash"))
            })
            .expect("symbol of a test function");
        let info = s.lookup(sym.st_value);
        assert!(!info.is_empty());
        assert!(
            info[0]
                .function
                .contains("demangles_rust_names_without_hash"),
            "{info:?}"
        );
    }
}

/// Shortens paths into the Rust toolchain's sources (`.../lib/rustlib/src/rust/library/std/..`
/// becomes `<rust>/library/std/..`), which would otherwise fill the line.
fn short_path(file: &str) -> std::borrow::Cow<'_, str> {
    const MARKER: &str = "/lib/rustlib/src/rust/";
    match file.find(MARKER) {
        Some(at) => format!("<rust>/{}", &file[at + MARKER.len()..]).into(),
        None => file.into(),
    }
}

#[cfg(test)]
mod short_path_tests {
    use super::short_path;

    #[test]
    fn toolchain_paths_are_shortened_and_others_kept() {
        assert_eq!(
            short_path(
                "/root/.rustup/toolchains/nightly/lib/rustlib/src/rust/library/core/src/ptr/mod.rs"
            ),
            "<rust>/library/core/src/ptr/mod.rs"
        );
        assert_eq!(short_path("/work/app/src/main.rs"), "/work/app/src/main.rs");
    }
}
