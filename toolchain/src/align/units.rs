//! The units an alignment places, and what makes a unit of one image the twin of one of
//! the other's.
//!
//! A unit is the input sections one linker-script line places (a file and a section name).
//! A section named after a symbol (`.text._RNv...`, `.rodata._ZN...`) is a unit of its own,
//! and its key is the symbol's demangled path without hashes (`std::io::stdio::_print`): the
//! hashes in a mangled name differ between the architectures' builds (a name several objects
//! have, a local copy of an inline function, gives several units of one key, paired in
//! order). An anonymous constant (`.rodata..Lanon.<hash>.<n>`) is a unit too; the sections
//! of merged strings or constants of one object share a name, so they form one unit. An
//! anonymous unit's key is its contents with every pointer in it replaced by the key of what
//! it points to, computed again until no key splits (so a vtable is known by its functions,
//! a panic location by its file name's string).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use goblin::elf::Elf;
use goblin::elf::section_header::{SHF_ALLOC, SHT_NOBITS, SHT_RELA};

use super::map::InputSection;
use crate::error::{Error, Result};

/// The output sections whose contents are aligned, in image order.
pub const KINDS: [Kind; 7] = [
    Kind::Text,
    Kind::Rodata,
    Kind::RelRo,
    Kind::Tdata,
    Kind::Tbss,
    Kind::Data,
    Kind::Bss,
];

/// An output section whose contents are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `.text`.
    Text,
    /// `.rodata`.
    Rodata,
    /// `.data.rel.ro`.
    RelRo,
    /// `.tdata` (the TLS template's initialised part).
    Tdata,
    /// `.tbss`.
    Tbss,
    /// `.data` (shared by the DSM).
    Data,
    /// `.bss` (shared by the DSM).
    Bss,
}

impl Kind {
    /// The output section's name.
    pub fn section(self) -> &'static str {
        match self {
            Kind::Text => ".text",
            Kind::Rodata => ".rodata",
            Kind::RelRo => ".data.rel.ro",
            Kind::Tdata => ".tdata",
            Kind::Tbss => ".tbss",
            Kind::Data => ".data",
            Kind::Bss => ".bss",
        }
    }

    /// A name usable in a symbol (`__pop_aligned_<name>_end`).
    pub fn ident(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Rodata => "rodata",
            Kind::RelRo => "relro",
            Kind::Tdata => "tdata",
            Kind::Tbss => "tbss",
            Kind::Data => "data",
            Kind::Bss => "bss",
        }
    }

    fn of(section: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.section() == section)
    }

    /// The input-section prefixes the image script gathers into this output section.
    fn prefixes(self) -> &'static [&'static str] {
        match self {
            Kind::Text => &[".text.unlikely.", ".text.hot.", ".text."],
            Kind::Rodata => &[".rodata.unlikely.", ".rodata."],
            Kind::RelRo => &[".data.rel.ro.local.", ".data.rel.ro."],
            Kind::Tdata => &[".tdata."],
            Kind::Tbss => &[".tbss."],
            Kind::Data => &[".data."],
            Kind::Bss => &[".bss."],
        }
    }

    /// Whether the contents are data (whose twins must be the same size and bytes).
    pub fn is_data(self) -> bool {
        self != Kind::Text
    }
}

/// What a unit is known by across the two images.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A symbol's demangled path.
    Named(String),
    /// Anonymous contents: the final class of [`classify`].
    Anon(u64),
}

/// One unit of an image.
#[derive(Clone, Debug)]
pub struct Unit {
    /// The output section it is in.
    pub kind: Kind,
    /// The input-section description that places it (`*(.text._RNv...)`).
    pub pattern: String,
    /// Its input sections (indices into [`Image::sections`]), in link order.
    pub members: Vec<usize>,
    /// Where each member goes in the unit once placed (offsets, as the linker lays them).
    pub layout: Vec<u64>,
    /// Its address in the image it was read from.
    pub addr: u64,
    /// Its size once placed at an address aligned to [`Unit::align`].
    pub size: u64,
    /// Its alignment.
    pub align: u64,
    /// What its twin in the other image is found by.
    pub key: Key,
    /// The pointers in it (data only), from [`classify`]: offset, and the unit pointed
    /// into with the offset there (`None` outside every unit).
    pub pointers: Vec<(u64, Option<(usize, u64)>)>,
    /// A hash of its bytes with the pointers zeroed (data only), from [`classify`]: twins
    /// by name must hold the same bytes too.
    pub bytes_hash: u64,
}

/// One linked image: its input sections and units.
#[derive(Debug)]
pub struct Image {
    /// Every input section of the map.
    pub sections: Vec<InputSection>,
    /// The units of the aligned kinds, in address order.
    pub units: Vec<Unit>,
}

/// Whether a section name is shared by many inputs (merged constants and strings, or the
/// plain section of hand-written assembly), so that only its file tells it apart.
fn generic(rest: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let merged_strings = rest
        .strip_prefix("str")
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(a, b)| digits(a) && digits(b));
    let merged_constants = rest.strip_prefix("cst").is_some_and(digits);
    rest.is_empty()
        || merged_strings
        || merged_constants
        || rest.starts_with(".Lanon.")
        || rest.starts_with("anon.")
}

/// The key of a section named after a symbol, or `None` for an anonymous one.
pub fn symbol_key(kind: Kind, name: &str) -> Option<String> {
    if kind.prefixes().iter().any(|p| name == &p[..p.len() - 1]) {
        return None;
    }
    let rest = kind.prefixes().iter().find_map(|p| name.strip_prefix(p))?;
    if generic(rest) {
        return None;
    }
    Some(demangled(rest))
}

/// `symbol` demangled without hashes (the `.llvm.<n>` suffix of promoted locals dropped).
pub fn demangled(symbol: &str) -> String {
    let base = match symbol.find(".llvm.") {
        Some(i) => &symbol[..i],
        None => symbol,
    };
    match rustc_demangle::try_demangle(base) {
        Ok(d) => format!("{d:#}"),
        Err(_) => base.to_owned(),
    }
}

/// A linker-script file pattern for the file a map names (`path` or `archive(member)`).
fn file_pattern(file: &str) -> String {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    match file.strip_suffix(')').and_then(|f| f.split_once('(')) {
        Some((archive, member)) => format!("*{}:{member}", base(archive)),
        None => format!("*{}", base(file)),
    }
}

/// `x` rounded up to a multiple of `a` (1 if `a` is 0).
pub(crate) fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a.max(1)) * a.max(1)
}

impl Image {
    /// The units of the image whose map is `sections` (keys of anonymous units are left
    /// at 0 until [`classify`]).
    pub fn new(sections: Vec<InputSection>) -> Image {
        // One unit per input section, but anonymous sections that share a name and a file
        // (merged constants of one object) cannot be told apart by a script: one unit.
        let mut units: Vec<Unit> = Vec::new();
        let mut shared: HashMap<String, usize> = HashMap::new();
        for (i, s) in sections.iter().enumerate() {
            let Some(kind) = Kind::of(&s.out) else {
                continue;
            };
            if s.file == "<internal>" {
                continue;
            }
            let pattern = format!("{}( {} )", file_pattern(&s.file), s.name);
            let key = match symbol_key(kind, &s.name) {
                Some(name) => Key::Named(name),
                None => {
                    if let Some(&u) = shared.get(&pattern) {
                        units[u].members.push(i);
                        continue;
                    }
                    shared.insert(pattern.clone(), units.len());
                    Key::Anon(0)
                }
            };
            units.push(Unit {
                kind,
                pattern,
                members: vec![i],
                layout: Vec::new(),
                addr: s.addr,
                size: 0,
                align: 1,
                key,
                pointers: Vec::new(),
                bytes_hash: 0,
            });
        }
        for u in &mut units {
            let mut size = 0;
            let mut align = 1;
            for &m in &u.members {
                let s = &sections[m];
                let at = align_up(size, s.align);
                u.layout.push(at);
                size = at + s.size;
                align = align.max(s.align);
            }
            u.size = size;
            u.align = align;
        }
        units.sort_by_key(|u| (u.kind, u.addr));
        Image { sections, units }
    }
}

/// How a pointer is stored.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Ptr {
    Abs64,
    Abs32,
    Rel32,
    Rel64,
}

fn ptr_kind(machine: u16, r_type: u32) -> Option<Ptr> {
    use goblin::elf::header::{EM_AARCH64, EM_X86_64};
    match (machine, r_type) {
        (EM_X86_64, 1) | (EM_AARCH64, 257) => Some(Ptr::Abs64),
        (EM_X86_64, 10 | 11) | (EM_AARCH64, 258) => Some(Ptr::Abs32),
        (EM_X86_64, 2 | 4) | (EM_AARCH64, 261) => Some(Ptr::Rel32),
        (EM_X86_64, 24) | (EM_AARCH64, 260) => Some(Ptr::Rel64),
        _ => None,
    }
}

/// A pointer inside a unit: its offset, how it is stored, and its target (unit index and
/// offset in it, or `None` outside every unit).
type Pointer = (u64, Ptr, Option<(usize, u64)>);

/// What [`classify`] hashes of one unit: its bytes with pointers zeroed, and the pointers.
struct Contents {
    bytes: Vec<u8>,
    pointers: Vec<Pointer>,
}

/// The contents of every unit of `image`, read from `elf` (linked with `--emit-relocs`).
fn contents(image: &Image, elf: &Elf, data: &[u8]) -> Result<Vec<Contents>> {
    let bad = |what: &str| Error::UnexpectedOutput(format!("natural image: {what}"));
    // Where each pointer is, from the kept relocations of allocated sections.
    let mut relocs: Vec<(u64, Ptr)> = Vec::new();
    for (idx, sh) in elf.section_headers.iter().enumerate() {
        if sh.sh_type != SHT_RELA {
            continue;
        }
        let applies_to = elf.section_headers.get(sh.sh_info as usize);
        if !applies_to.is_some_and(|t| t.sh_flags & u64::from(SHF_ALLOC) != 0) {
            continue;
        }
        let Some(section) = elf.shdr_relocs.iter().find(|(i, _)| *i == idx) else {
            continue;
        };
        for r in section.1.iter() {
            if let Some(p) = ptr_kind(elf.header.e_machine, r.r_type) {
                relocs.push((r.r_offset, p));
            }
        }
    }
    relocs.sort_unstable_by_key(|r| r.0);
    // Every member of every unit: (address, end, unit, offset in the placed unit).
    let mut members: Vec<(u64, u64, usize, u64)> = Vec::new();
    for (i, u) in image.units.iter().enumerate() {
        for (&m, &at) in u.members.iter().zip(&u.layout) {
            let s = &image.sections[m];
            members.push((s.addr, s.addr + s.size, i, at));
        }
    }
    members.sort_unstable();
    let locate = |target: u64| -> Option<(usize, u64)> {
        let i = members.partition_point(|&(start, ..)| start <= target);
        let &(start, end, unit, at) = members.get(i.checked_sub(1)?)?;
        (target < end.max(start + 1)).then_some((unit, at + target - start))
    };
    let read = |addr: u64, len: u64| -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let sh = elf
            .section_headers
            .iter()
            .find(|sh| {
                sh.sh_flags & u64::from(SHF_ALLOC) != 0
                    && sh.sh_addr <= addr
                    && addr + len <= sh.sh_addr + sh.sh_size
            })
            .ok_or_else(|| bad(&format!("no section holds {addr:#x}+{len:#x}")))?;
        if sh.sh_type == SHT_NOBITS {
            return Ok(vec![0; len as usize]);
        }
        let off = (sh.sh_offset + addr - sh.sh_addr) as usize;
        data.get(off..off + len as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| bad("a section lies outside the file"))
    };
    let mut all = Vec::with_capacity(image.units.len());
    for u in &image.units {
        let mut bytes = vec![0u8; u.size as usize];
        let mut pointers = Vec::new();
        if u.kind.is_data() {
            for (&m, &at) in u.members.iter().zip(&u.layout) {
                let s = &image.sections[m];
                let piece = read(s.addr, s.size)?;
                bytes[at as usize..(at + s.size) as usize].copy_from_slice(&piece);
                let first = relocs.partition_point(|r| r.0 < s.addr);
                for &(r_at, p) in relocs[first..].iter().take_while(|r| r.0 < s.addr + s.size) {
                    let off = (at + r_at - s.addr) as usize;
                    let width = match p {
                        Ptr::Abs64 | Ptr::Rel64 => 8,
                        Ptr::Abs32 | Ptr::Rel32 => 4,
                    };
                    let Some(field) = bytes.get_mut(off..off + width) else {
                        continue;
                    };
                    let mut raw = [0u8; 8];
                    raw[..width].copy_from_slice(field);
                    field.fill(0);
                    let value = u64::from_le_bytes(raw);
                    let target = match p {
                        Ptr::Abs64 => value,
                        Ptr::Abs32 => u64::from(value as u32),
                        Ptr::Rel32 => r_at.wrapping_add(value as u32 as i32 as i64 as u64),
                        Ptr::Rel64 => r_at.wrapping_add(value),
                    };
                    pointers.push((off as u64, p, locate(target)));
                }
            }
        }
        all.push(Contents { bytes, pointers });
    }
    Ok(all)
}

fn hash_of(f: impl FnOnce(&mut std::collections::hash_map::DefaultHasher)) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    f(&mut h);
    h.finish()
}

/// Most rounds of refinement (keys of constants that point at constants settle in as many
/// rounds as the longest chain of such pointers).
const MAX_ROUNDS: usize = 32;

/// Gives every anonymous unit of both images its key: equal keys mean equal contents,
/// pointers pointing at units of equal keys.
pub fn classify(images: [&mut Image; 2], elves: [(&Elf, &[u8]); 2]) -> Result<()> {
    let [a, b] = images;
    let contents = [
        contents(a, elves[0].0, elves[0].1)?,
        contents(b, elves[1].0, elves[1].1)?,
    ];
    let initial = |image: &Image| -> Vec<u64> {
        image
            .units
            .iter()
            .map(|u| match &u.key {
                Key::Named(name) => hash_of(|h| (u.kind, name).hash(h)),
                Key::Anon(_) => hash_of(|h| (u.kind, u.size).hash(h)),
            })
            .collect()
    };
    let mut classes = [initial(a), initial(b)];
    let units = [&a.units, &b.units];
    let mut distinct = 0;
    for _ in 0..MAX_ROUNDS {
        let mut next = classes.clone();
        for side in 0..2 {
            for (i, u) in units[side].iter().enumerate() {
                if matches!(u.key, Key::Named(_)) {
                    continue;
                }
                let c = &contents[side][i];
                next[side][i] = hash_of(|h| {
                    classes[side][i].hash(h);
                    c.bytes.hash(h);
                    for &(off, p, target) in &c.pointers {
                        (off, p).hash(h);
                        match target {
                            Some((t, toff)) => (classes[side][t], toff).hash(h),
                            None => u64::MAX.hash(h),
                        }
                    }
                });
            }
        }
        let mut all: Vec<u64> = next.iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        classes = next;
        if all.len() == distinct {
            break;
        }
        distinct = all.len();
    }
    for (side, image) in [a, b].into_iter().enumerate() {
        for (i, u) in image.units.iter_mut().enumerate() {
            if let Key::Anon(k) = &mut u.key {
                *k = classes[side][i];
            }
            u.bytes_hash = hash_of(|h| contents[side][i].bytes.hash(h));
            u.pointers = contents[side][i]
                .pointers
                .iter()
                .map(|&(off, _, target)| (off, target))
                .collect();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_sections_are_known_by_their_demangled_path() {
        assert_eq!(
            symbol_key(
                Kind::Text,
                ".text.unlikely._RNvCseulmdZsCeCG_7___rustc10rust_panic"
            )
            .as_deref(),
            Some("__rustc::rust_panic")
        );
        // Legacy mangling: the hash goes.
        assert_eq!(
            symbol_key(
                Kind::Text,
                ".text._ZN3std2io5stdio6_print17h0123456789abcdefE"
            )
            .as_deref(),
            Some("std::io::stdio::_print")
        );
        assert_eq!(
            symbol_key(Kind::Data, ".data.memcpy_cache").as_deref(),
            Some("memcpy_cache")
        );
        assert_eq!(
            symbol_key(Kind::Text, ".text.strlen").as_deref(),
            Some("strlen")
        );
        for anon in [
            ".rodata..Lanon.aa.0",
            ".rodata.str1.1",
            ".rodata.cst16",
            ".text",
            ".rodata.anon.e3.0.llvm.5",
        ] {
            let kind = if anon == ".text" {
                Kind::Text
            } else {
                Kind::Rodata
            };
            assert_eq!(symbol_key(kind, anon), None, "{anon}");
        }
        assert_eq!(
            demangled("_RNvCs1_3foo3bar.llvm.1234"),
            demangled("_RNvCs2_3foo3bar")
        );
    }

    #[test]
    fn archive_members_and_objects_get_file_patterns() {
        assert_eq!(
            file_pattern("/t/deps/libstd-1.rlib(std-1.cgu.03.rcgu.o)"),
            "*libstd-1.rlib:std-1.cgu.03.rcgu.o"
        );
        assert_eq!(
            file_pattern("/t/deps/hello-1.cgu.0.rcgu.o"),
            "*hello-1.cgu.0.rcgu.o"
        );
    }
}
