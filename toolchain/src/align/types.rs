//! Type layouts from DWARF, and the hazards a layout does not show.
//!
//! A future is a struct on the heap whose layout rustc fixes before code generation, so an
//! async task can cross ISAs only if every type its state holds has one layout in both
//! images: the verifier reads every struct, union and enum both images describe (coroutine
//! state machines included: `{async_fn_env#0}`) and compares size, alignment and each
//! member's offset, variants included. Some types keep their layout and change meaning by
//! ISA; DWARF cannot show it, so the application's types are searched for them by name
//! ([`HAZARDS`]).

use std::collections::{BTreeMap, HashMap};

use gimli::{AttributeValue, EndianSlice, LittleEndian, UnitOffset};
use goblin::elf::Elf;

use crate::error::{Error, Result};

/// Types that mean something else on the other ISA, by a piece of their name, and why.
pub const HAZARDS: [(&str, &str); 6] = [
    (
        "HashMap<",
        "std's HashMap (hashbrown) probes in 16-byte groups on x86_64 and 8-byte groups on aarch64: a table filled on one ISA is not found on the other",
    ),
    (
        "HashSet<",
        "std's HashSet (hashbrown) probes in 16-byte groups on x86_64 and 8-byte groups on aarch64: a set filled on one ISA is not found on the other",
    ),
    (
        "AtomicU128",
        "128-bit atomics are native on aarch64 only (64 bits is the widest on x86_64-unknown-hermit)",
    ),
    (
        "Atomic<u128>",
        "128-bit atomics are native on aarch64 only (64 bits is the widest on x86_64-unknown-hermit)",
    ),
    (
        "Atomic<i128>",
        "128-bit atomics are native on aarch64 only (64 bits is the widest on x86_64-unknown-hermit)",
    ),
    (
        "AtomicI128",
        "128-bit atomics are native on aarch64 only (64 bits is the widest on x86_64-unknown-hermit)",
    ),
];

/// The crates of std and the libos: their own uses of hazardous types are theirs to
/// handle (std's environment table is rebuilt on a crossing), so only the application's
/// are reported.
const RUNTIME_CRATES: [&str; 18] = [
    "std",
    "core",
    "alloc",
    "hashbrown",
    "compiler_builtins",
    "std_detect",
    "panic_abort",
    "libc",
    "hermit_abi",
    "pop_libos",
    "pop_abi",
    "rustc_demangle",
    "cfg_if",
    "unwind",
    "memchr",
    "addr2line",
    "gimli",
    "miniz_oxide",
];

/// A type's layout: size, alignment, and every member (path through variants, offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The type's own name (the last piece of its path).
    pub name: String,
    /// Whether it is the application's (not std's or the libos's).
    pub app: bool,
    /// The types of its members, by name.
    pub member_types: Vec<(String, String)>,
    /// Size in bytes.
    pub size: u64,
    /// Alignment (0 if DWARF does not say).
    pub align: u64,
    /// Members by path (`field`, `Some.__0`), with their offsets.
    pub members: BTreeMap<String, u64>,
}

/// What an image's DWARF says about its types.
#[derive(Debug, Default)]
pub struct Types {
    /// Layouts by full path (`alloc::vec::Vec<u8, alloc::alloc::Global>`).
    pub layouts: HashMap<String, Layout>,
    /// The application's types and statics that hold a hazard: (holder, member, why).
    pub hazards: Vec<(String, String, &'static str)>,
    /// Whether the image carries type information at all.
    pub described: bool,
}

type R<'a> = EndianSlice<'a, LittleEndian>;

/// Reads the types of the image `elf` (its bytes `data`).
pub fn read(elf: &Elf, data: &[u8]) -> Result<Types> {
    let bad = |e: gimli::Error| Error::Misaligned(format!("reading DWARF: {e}"));
    let section = |name: &str| -> &[u8] {
        elf.section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(name))
            .and_then(|sh| data.get(sh.sh_offset as usize..(sh.sh_offset + sh.sh_size) as usize))
            .unwrap_or(&[])
    };
    let dwarf = gimli::Dwarf::load(|id| -> std::result::Result<R<'_>, gimli::Error> {
        Ok(EndianSlice::new(section(id.name()), LittleEndian))
    })
    .map_err(bad)?;
    let mut types = Types::default();
    let mut headers = dwarf.units();
    while let Some(header) = headers.next().map_err(bad)? {
        let unit = dwarf.unit(header).map_err(bad)?;
        let unit = unit.unit_ref(&dwarf);
        let mut tree = unit.entries_tree(None).map_err(bad)?;
        let root = tree.root().map_err(bad)?;
        walk(unit, root, &mut Vec::new(), false, &mut types).map_err(bad)?;
    }
    types.hazards.sort();
    types.hazards.dedup();
    Ok(types)
}

fn name_of<'d>(
    unit: gimli::UnitRef<'_, R<'d>>,
    entry: &gimli::DebuggingInformationEntry<R<'d>>,
) -> Option<String> {
    let value = entry.attr_value(gimli::DW_AT_name)?;
    let s = unit.attr_string(value).ok()?;
    Some(s.to_string_lossy().into_owned())
}

/// The name of the type a `DW_AT_type` points at (`?` if it cannot be read).
fn type_name<'d>(
    unit: gimli::UnitRef<'_, R<'d>>,
    entry: &gimli::DebuggingInformationEntry<R<'d>>,
) -> String {
    let Some(AttributeValue::UnitRef(offset)) = entry.attr_value(gimli::DW_AT_type) else {
        return "?".into();
    };
    unit.entry(offset)
        .ok()
        .and_then(|t| name_of(unit, &t))
        .unwrap_or_else(|| "?".into())
}

fn udata<'d>(entry: &gimli::DebuggingInformationEntry<R<'d>>, at: gimli::DwAt) -> Option<u64> {
    entry.attr(at).and_then(|a| a.udata_value())
}

/// Whether a type or static at `path` is the application's: under a crate that is not
/// std's or the libos's (tuples, references and arrays at the top are nobody's).
fn is_app(path: &[String]) -> bool {
    path.first().is_some_and(|root| {
        root.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !RUNTIME_CRATES.contains(&root.as_str())
    })
}

fn hazard_of(type_name: &str) -> Option<&'static str> {
    HAZARDS
        .iter()
        .find(|(piece, _)| type_name.contains(piece))
        .map(|(_, why)| *why)
}

fn walk<'d>(
    unit: gimli::UnitRef<'_, R<'d>>,
    node: gimli::EntriesTreeNode<'_, '_, R<'d>>,
    path: &mut Vec<String>,
    in_fn: bool,
    types: &mut Types,
) -> gimli::Result<()> {
    let entry = node.entry().clone();
    let tag = entry.tag();
    let name = name_of(unit, &entry);
    let is_type = matches!(
        tag,
        gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type | gimli::DW_TAG_enumeration_type
    );
    let pushed = match (&name, tag) {
        (Some(n), gimli::DW_TAG_namespace) => {
            path.push(n.clone());
            true
        }
        (Some(n), _) if is_type => {
            path.push(n.clone());
            true
        }
        _ => false,
    };
    let in_fn = in_fn || matches!(tag, gimli::DW_TAG_subprogram | gimli::DW_TAG_lexical_block);
    // A static (a local lives in a native frame, which never crosses; what an async fn
    // keeps across an await is a member of its state machine, below).
    if tag == gimli::DW_TAG_variable && !in_fn && is_app(path) {
        let ty = type_name(unit, &entry);
        if let Some(why) = hazard_of(&ty) {
            let holder = format!("{}::{}", path.join("::"), name.clone().unwrap_or_default());
            types.hazards.push((holder, ty, why));
        }
    }
    let declaration = entry.attr(gimli::DW_AT_declaration).is_some();
    let size = udata(&entry, gimli::DW_AT_byte_size);
    if is_type
        && !declaration
        && let (Some(size), Some(_)) = (size, &name)
    {
        types.described = true;
        let key = path.join("::");
        let mut layout = Layout {
            name: name.clone().unwrap_or_default(),
            app: is_app(path),
            member_types: Vec::new(),
            size,
            align: udata(&entry, gimli::DW_AT_alignment).unwrap_or(0),
            members: BTreeMap::new(),
        };
        // Members, and the members of each variant (Rust enums: a variant part).
        let mut children = node.children();
        let mut nested = Vec::new();
        while let Some(child) = children.next()? {
            match child.entry().tag() {
                gimli::DW_TAG_member => {
                    member(unit, child.entry(), "", &key, path, &mut layout, types);
                }
                gimli::DW_TAG_variant_part => {
                    let mut parts = child.children();
                    while let Some(part) = parts.next()? {
                        match part.entry().tag() {
                            gimli::DW_TAG_member => {
                                member(
                                    unit,
                                    part.entry(),
                                    "<discriminant>.",
                                    &key,
                                    path,
                                    &mut layout,
                                    types,
                                );
                            }
                            gimli::DW_TAG_variant => {
                                let discr = udata(part.entry(), gimli::DW_AT_discr_value)
                                    .map_or("<default>".to_owned(), |v| v.to_string());
                                let mut vs = part.children();
                                while let Some(v) = vs.next()? {
                                    if v.entry().tag() == gimli::DW_TAG_member {
                                        let prefix = format!("<{discr}>.");
                                        member(
                                            unit,
                                            v.entry(),
                                            &prefix,
                                            &key,
                                            path,
                                            &mut layout,
                                            types,
                                        );
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                gimli::DW_TAG_structure_type
                | gimli::DW_TAG_union_type
                | gimli::DW_TAG_enumeration_type
                | gimli::DW_TAG_namespace => nested.push(child.entry().offset()),
                _ => {}
            }
        }
        types.layouts.entry(key).or_insert(layout);
        for offset in nested {
            walk_at(unit, offset, path, types)?;
        }
    } else {
        let mut children = node.children();
        while let Some(child) = children.next()? {
            walk(unit, child, path, in_fn, types)?;
        }
    }
    if pushed {
        path.pop();
    }
    Ok(())
}

/// Walks the subtree at `offset` (a type nested in a type: a variant's struct).
fn walk_at<'d>(
    unit: gimli::UnitRef<'_, R<'d>>,
    offset: UnitOffset,
    path: &mut Vec<String>,
    types: &mut Types,
) -> gimli::Result<()> {
    let mut tree = unit.entries_tree(Some(offset))?;
    let root = tree.root()?;
    walk(unit, root, path, false, types)
}

fn member<'d>(
    unit: gimli::UnitRef<'_, R<'d>>,
    entry: &gimli::DebuggingInformationEntry<R<'d>>,
    prefix: &str,
    key: &str,
    path: &[String],
    layout: &mut Layout,
    types: &mut Types,
) {
    let name = name_of(unit, entry).unwrap_or_else(|| "?".into());
    let offset = udata(entry, gimli::DW_AT_data_member_location).unwrap_or(0);
    layout.members.insert(format!("{prefix}{name}"), offset);
    if is_app(path) {
        let ty = type_name(unit, entry);
        layout
            .member_types
            .push((format!("{prefix}{name}"), ty.clone()));
        // Each state of a state machine lists what it holds (`{async_fn_env#0}::Suspend0`):
        // name the state machine, once per field.
        if let Some(why) = hazard_of(&ty) {
            let holder = match path {
                [.., machine, _state] if machine.starts_with("{async") => {
                    path[..path.len() - 1].join("::")
                }
                _ => key.to_owned(),
            };
            types.hazards.push((format!("{holder}.{name}"), ty, why));
        }
    }
}

/// Why the layouts of one type differ between the images, if they do.
fn difference(la: &Layout, lb: &Layout) -> Option<String> {
    if la.size != lb.size {
        return Some(format!(
            "{} bytes on x86_64, {} on aarch64",
            la.size, lb.size
        ));
    }
    if la.align != lb.align && la.align != 0 && lb.align != 0 {
        return Some(format!(
            "aligned to {} on x86_64, {} on aarch64",
            la.align, lb.align
        ));
    }
    la.members
        .iter()
        .find(|(m, off)| lb.members.get(*m) != Some(off))
        .map(|(m, off)| match lb.members.get(m) {
            Some(o) => format!("`{m}` at offset {off} on x86_64, {o} on aarch64"),
            None => format!("`{m}` exists on x86_64 only"),
        })
        .or_else(|| {
            lb.members
                .keys()
                .find(|m| !la.members.contains_key(*m))
                .map(|m| format!("`{m}` exists on aarch64 only"))
        })
}

/// What cannot cross between the images, one line each: the application's types whose
/// layouts differ, and the application's types that hold a type of std's whose layout
/// differs (std's own differences stay std's: `VaList`, hashbrown's iterators).
pub fn differences(a: &Types, b: &Types) -> Vec<String> {
    let mut out = Vec::new();
    let mut runtime: HashMap<&str, String> = HashMap::new();
    for (name, la) in &a.layouts {
        let Some(lb) = b.layouts.get(name) else {
            continue;
        };
        // Same layout, but a field of another type (`u64` / `f64`): not the same meaning.
        let retyped = la.member_types.iter().find_map(|(m, ta)| {
            let tb = lb.member_types.iter().find(|(n, _)| n == m)?.1.as_str();
            (ta != tb).then(|| format!("`{m}` is `{ta}` on x86_64, `{tb}` on aarch64"))
        });
        let Some(why) = difference(la, lb).or(if la.app { retyped } else { None }) else {
            continue;
        };
        if la.app {
            out.push(format!("type `{name}` differs: {why}"));
        } else {
            runtime.insert(la.name.as_str(), format!("`{name}` ({why})"));
        }
    }
    for (name, la) in a.layouts.iter().filter(|(_, l)| l.app) {
        for (member, ty) in &la.member_types {
            if let Some(what) = runtime.get(ty.as_str()) {
                out.push(format!(
                    "`{name}.{member}` holds {what}, whose layout differs by ISA"
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
