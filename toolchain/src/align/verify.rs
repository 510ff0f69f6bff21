//! Checking an image pair: everything one ISA's state can point at means the same in the
//! other image.
//!
//! Works on the two images and their link maps alone (`cargo pop verify`), so it also
//! checks a pair it did not build: every symbol both images place in their paired ranges
//! is at the same address; every paired unit has its twin at its address, with the same
//! size; the paired data (constants, vtables, statics, the TLS template) is byte for byte
//! the same, pointers included; the TLS template and the shared data have the same layout.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use goblin::elf::Elf;
use goblin::elf::program_header::PT_TLS;
use goblin::elf::section_header::{SHF_ALLOC, SHT_NOBITS};

use super::map;
use super::types;
use super::units::{Image, KINDS, Key, Kind};
use crate::error::{Error, Result};

/// Why a pair without type information cannot cross.
const NO_TYPES: &str = "the images carry no type information, so the layouts of what would \
                        cross cannot be checked (build with `debug = \"full\"` in the profile, \
                        as the dev profile has)";

/// Most mismatches a report lists one by one.
const MAX_LISTED: usize = 12;

/// What the verifier found.
#[derive(Debug, Default)]
pub struct Report {
    /// Symbols at the same address in both images.
    pub same_address: usize,
    /// Paired bytes compared.
    pub bytes_compared: u64,
    /// Types both images describe, compared.
    pub types_compared: usize,
    /// Whether both images carry type information (full debuginfo).
    pub types_described: bool,
    /// Everything that does not line up, one line each.
    pub mismatches: Vec<String>,
    /// What lines up but cannot cross ISAs (types whose layout or meaning differs), one
    /// line each naming the type. The pair is still a pair: a program holding these runs
    /// on either ISA, but a crossing would carry them wrongly, so it is refused.
    pub hazards: Vec<String>,
}

impl Report {
    /// `Ok` if nothing mismatched, else an error listing the first mismatches.
    pub fn into_result(self) -> Result<Report> {
        if self.mismatches.is_empty() {
            return Ok(self);
        }
        Err(Error::Misaligned(format!(
            "{} mismatch(es): {}",
            self.mismatches.len(),
            listed(&self.mismatches)
        )))
    }

    /// Why the pair cannot cross ISAs, one line each (empty: it can): its hazards, or that
    /// its types could not be checked.
    pub fn refusals(&self) -> Vec<String> {
        let mut out = self.hazards.clone();
        if !self.types_described {
            out.push(NO_TYPES.to_owned());
        }
        out
    }

    /// `Ok` if the pair can also cross, else an error naming why not.
    pub fn crossable(&self) -> Result<()> {
        let refusals = self.refusals();
        if refusals.is_empty() {
            return Ok(());
        }
        Err(Error::CannotCross(format!(
            "{} reason(s): {}",
            refusals.len(),
            listed(&refusals)
        )))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} symbols at the same address, {} paired bytes identical, ",
            self.same_address, self.bytes_compared
        )?;
        match self.types_described {
            true => write!(f, "{} types compared", self.types_compared),
            false => write!(
                f,
                "types not checked (no type debuginfo: cannot cross ISAs)"
            ),
        }
    }
}

/// The first [`MAX_LISTED`] of `lines`, joined.
fn listed(lines: &[String]) -> String {
    let mut text = lines
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if lines.len() > MAX_LISTED {
        text.push_str("; ...");
    }
    text
}

/// One image of a pair, as read for verifying.
struct Side<'a> {
    isa: &'static str,
    elf: Elf<'a>,
    data: &'a [u8],
    image: Image,
}

impl Side<'_> {
    fn symbol(&self, name: &str) -> Option<u64> {
        self.elf
            .syms
            .iter()
            .find(|s| self.elf.strtab.get_at(s.st_name) == Some(name))
            .map(|s| s.st_value)
    }

    /// The paired range of `kind`: `[start, end)`.
    fn paired(&self, kind: Kind) -> Result<(u64, u64)> {
        let id = kind.ident();
        match (
            self.symbol(&format!("__pop_aligned_{id}_start")),
            self.symbol(&format!("__pop_aligned_{id}_end")),
        ) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(Error::Misaligned(format!(
                "the {} image is not aligned (build the pair with `cargo pop build --arch all`)",
                self.isa
            ))),
        }
    }

    /// The bytes of output section `kind` at `[addr, addr + len)` (zeros where it has no
    /// file contents: `.tbss` shares its addresses with the sections after `.tdata`).
    fn bytes(&self, kind: Kind, addr: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        for sh in &self.elf.section_headers {
            let name = self.elf.shdr_strtab.get_at(sh.sh_name);
            if sh.sh_flags & u64::from(SHF_ALLOC) == 0
                || sh.sh_type == SHT_NOBITS
                || name != Some(kind.section())
            {
                continue;
            }
            let (lo, hi) = (
                addr.max(sh.sh_addr),
                (addr + len).min(sh.sh_addr + sh.sh_size),
            );
            if lo >= hi {
                continue;
            }
            let off = (sh.sh_offset + lo - sh.sh_addr) as usize;
            if let Some(src) = self.data.get(off..off + (hi - lo) as usize) {
                out[(lo - addr) as usize..(hi - addr) as usize].copy_from_slice(src);
            }
        }
        out
    }
}

/// Reads an image and its map (`<image>.map`).
fn read(image: &Path) -> Result<(Vec<u8>, String)> {
    let data = std::fs::read(image).map_err(|e| Error::io(image, e))?;
    let map_path = map_of(image);
    let map = std::fs::read_to_string(&map_path).map_err(|e| Error::io(&map_path, e))?;
    Ok((data, map))
}

/// Where the link map of `image` is kept.
pub fn map_of(image: &Path) -> std::path::PathBuf {
    crate::fsutil::with_suffix(image, ".map")
}

/// Verifies the pair `a`, `b` in either order (the ELF headers say which is which).
pub fn verify_either(a: &Path, b: &Path) -> Result<Report> {
    use goblin::elf::header::EM_X86_64;
    let machine = |p: &Path| -> Result<u16> {
        use std::io::Read;
        let mut header = [0u8; 64];
        std::fs::File::open(p)
            .and_then(|mut f| f.read_exact(&mut header))
            .map_err(|e| Error::io(p, e))?;
        Elf::parse_header(&header)
            .map(|h| h.e_machine)
            .map_err(|e| Error::Misaligned(format!("{}: not an ELF image: {e}", p.display())))
    };
    match machine(a)? == EM_X86_64 {
        true => verify(a, b),
        false => verify(b, a),
    }
}

/// Verifies the pair (x86-64 image, aarch64 image).
pub fn verify(x86_64: &Path, aarch64: &Path) -> Result<Report> {
    let (data_a, map_a) = read(x86_64)?;
    let (data_b, map_b) = read(aarch64)?;
    let a = side("x86_64", &data_a, &map_a, x86_64)?;
    let b = side("aarch64", &data_b, &map_b, aarch64)?;
    check(&a, &b)
}

fn side<'a>(isa: &'static str, data: &'a [u8], map: &str, path: &Path) -> Result<Side<'a>> {
    let elf = Elf::parse(data)
        .map_err(|e| Error::Misaligned(format!("{}: not an ELF image: {e}", path.display())))?;
    Ok(Side {
        isa,
        elf,
        data,
        image: Image::new(map::parse(map)?),
    })
}

fn check(a: &Side<'_>, b: &Side<'_>) -> Result<Report> {
    use goblin::elf::header::{EM_AARCH64, EM_X86_64};
    if a.elf.header.e_machine != EM_X86_64 || b.elf.header.e_machine != EM_AARCH64 {
        return Err(Error::Misaligned(
            "expected an x86-64 image, then an aarch64 image".into(),
        ));
    }
    let mut report = Report::default();
    // Mismatched ranges are listed last: what lies in them says more.
    let mut range_mismatches = Vec::new();
    let mut ranges: [HashMap<Kind, (u64, u64)>; 2] = [HashMap::new(), HashMap::new()];
    for kind in KINDS {
        let (ra, rb) = (a.paired(kind)?, b.paired(kind)?);
        if ra != rb {
            range_mismatches.push(format!(
                "the paired {} range is {:#x}..{:#x} on x86_64 and {:#x}..{:#x} on aarch64",
                kind.section(),
                ra.0,
                ra.1,
                rb.0,
                rb.1
            ));
        }
        ranges[0].insert(kind, ra);
        ranges[1].insert(kind, rb);
    }
    let inside = |side: usize, kind: Kind, addr: u64| {
        let (s, e) = ranges[side][&kind];
        (s..e).contains(&addr)
    };
    // Symbols both images have: the same address if either placed it in a paired range.
    let named = |side: &Side<'_>| -> HashMap<(Kind, String), (u64, u64)> {
        let mut m = HashMap::new();
        let mut dup = Vec::new();
        for u in &side.image.units {
            if let Key::Named(name) = &u.key
                && m.insert((u.kind, name.clone()), (u.addr, u.size)).is_some()
            {
                dup.push((u.kind, name.clone()));
            }
        }
        for d in dup {
            m.remove(&d);
        }
        m
    };
    let (na, nb) = (named(a), named(b));
    let mut names: Vec<&(Kind, String)> = na.keys().filter(|k| nb.contains_key(*k)).collect();
    names.sort();
    for key in names {
        let ((addr_a, size_a), (addr_b, size_b)) = (na[key], nb[key]);
        let (kind, name) = key;
        if !inside(0, *kind, addr_a) && !inside(1, *kind, addr_b) {
            continue; // each image's own (e.g. a static whose type differs by ISA)
        }
        if addr_a != addr_b {
            report.mismatches.push(format!(
                "`{name}` ({}) is at {addr_a:#x} on x86_64 and {addr_b:#x} on aarch64",
                kind.section()
            ));
        } else if kind.is_data() && size_a != size_b {
            report.mismatches.push(format!(
                "`{name}` ({}) is {size_a} bytes on x86_64 and {size_b} on aarch64",
                kind.section()
            ));
        } else {
            report.same_address += 1;
        }
    }
    // Every unit of a paired range has its twin at its address.
    let starts = |n: usize, side: &Side<'_>| -> HashMap<(Kind, u64), u64> {
        side.image
            .units
            .iter()
            .filter(|u| inside(n, u.kind, u.addr) && u.size > 0)
            .map(|u| ((u.kind, u.addr), u.size))
            .collect()
    };
    let (sa, sb) = (starts(0, a), starts(1, b));
    for (side, mine, other) in [(a, &sa, &sb), (b, &sb, &sa)] {
        let mut lone: Vec<_> = mine
            .iter()
            .filter(|(at, size)| other.get(at).is_none_or(|s| at.0.is_data() && s != *size))
            .collect();
        lone.sort();
        for ((kind, addr), size) in lone {
            report.mismatches.push(format!(
                "the {} unit of {size} bytes at {addr:#x} ({}) has no twin of its size in the other image",
                side.isa,
                kind.section()
            ));
        }
    }
    // The paired data is the same bytes, pointers included.
    for kind in KINDS.into_iter().filter(|k| k.is_data()) {
        let (start, end) = (
            ranges[0][&kind].0.max(ranges[1][&kind].0),
            ranges[0][&kind].1.min(ranges[1][&kind].1),
        );
        if start >= end {
            continue;
        }
        let (ba, bb) = (
            a.bytes(kind, start, end - start),
            b.bytes(kind, start, end - start),
        );
        report.bytes_compared += end - start;
        if let Some(i) = ba.iter().zip(&bb).position(|(x, y)| x != y) {
            let at = start + i as u64;
            let owner = a
                .image
                .units
                .iter()
                .find(|u| u.kind == kind && (u.addr..u.addr + u.size.max(1)).contains(&at))
                .map(|u| match &u.key {
                    Key::Named(n) => format!("`{n}`"),
                    Key::Anon(_) => "an anonymous constant".to_owned(),
                })
                .unwrap_or_else(|| "padding".to_owned());
            report.mismatches.push(format!(
                "paired {} bytes differ at {at:#x} ({owner})",
                kind.section()
            ));
        }
    }
    // The TLS template and the shared data have one layout.
    let tls = |side: &Side<'_>| {
        side.elf
            .program_headers
            .iter()
            .find(|p| p.p_type == PT_TLS)
            .map(|p| (p.p_vaddr, p.p_filesz, p.p_memsz, p.p_align))
    };
    if tls(a) != tls(b) {
        report.mismatches.push(format!(
            "the TLS templates differ: (address, file size, size, alignment) {:x?} on x86_64, {:x?} on aarch64",
            tls(a),
            tls(b)
        ));
    }
    for symbol in ["__pop_data_start", "__pop_data_end"] {
        if a.symbol(symbol) != b.symbol(symbol) {
            report.mismatches.push(format!("`{symbol}` differs"));
        }
    }
    // Types: one layout on both ISAs, and none that means something else on the other.
    let (ta, tb) = (types::read(&a.elf, a.data)?, types::read(&b.elf, b.data)?);
    report.types_described = ta.described && tb.described;
    report.hazards.extend(types::differences(&ta, &tb));
    report.types_compared = ta
        .layouts
        .keys()
        .filter(|k| tb.layouts.contains_key(*k))
        .count();
    let mut hazards: Vec<_> = ta.hazards.iter().chain(&tb.hazards).collect();
    hazards.sort();
    hazards.dedup_by(|x, y| x.0 == y.0);
    for (holder, ty, why) in hazards {
        report
            .hazards
            .push(format!("`{holder}` holds `{ty}`: {why}"));
    }
    report.mismatches.extend(range_mismatches);
    report.into_result()
}
