//! Pairing the units of two images and giving every pair one address: the plan both
//! images are linked again with.
//!
//! Each aligned output section is laid out as `[pairs][x86-64 only][aarch64 only]`: a
//! pair's slot is as large as the larger twin, at the larger alignment, at the same address
//! in both images; what one image has alone goes into its own range, which the other image
//! leaves empty (so a pointer into it can never mean something else on the other ISA).
//! Every range starts on a page (TLS ranges on a cache line: each thread has a copy) so a
//! crossing can take one ISA's private writable pages from its own image.

use std::collections::HashMap;
use std::fmt::Write;

use super::units::{Image, KINDS, Key, Kind, Unit, align_up};
use pop_abi::layout::{IMAGE_BASE, PAGE_SIZE, PRIVATE_LIMIT, SHARED_BASE};

/// Statics whose contents mean something only on their own ISA (what CPU features were
/// detected): never paired, so each image keeps its own in its own range, where a crossing
/// takes them from the destination's image.
pub const ISA_STATE: [&str; 1] = ["std_detect::"];

/// Alignment of the ranges of the TLS template.
const TLS_RANGE_ALIGN: u64 = 64;

/// Why a unit that has a namesake in the other image stays in its own range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpaired {
    /// The output section.
    pub kind: Kind,
    /// The symbol.
    pub name: String,
    /// Its size in each image (x86-64, aarch64).
    pub sizes: [u64; 2],
}

/// Addresses of one aligned output section.
#[derive(Clone, Debug, Default)]
pub struct Ranges {
    /// Start of the section (and of the pairs).
    pub start: u64,
    /// End of the pairs.
    pub paired_end: u64,
    /// Start of each image's own range (x86-64, aarch64).
    pub own: [u64; 2],
    /// End of the section.
    pub end: u64,
}

/// Where everything goes.
#[derive(Debug)]
pub struct Plan {
    /// Per aligned output section: the pairs (unit index in each image, address).
    pub pairs: Vec<(Kind, [usize; 2], u64)>,
    /// The ranges of each aligned output section.
    pub ranges: HashMap<Kind, Ranges>,
    /// Alignment of each TLS section, the larger of the two images'.
    pub tls_align: HashMap<Kind, u64>,
    /// Symbols both images have whose data differs in size or bytes: ISA-dependent statics.
    pub unpaired: Vec<Unpaired>,
    /// Counts of units paired and left alone per image, for the report.
    pub counts: Counts,
}

/// How much was paired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Units paired by name.
    pub named: usize,
    /// Units paired by contents.
    pub anonymous: usize,
    /// Units only one image has (x86-64, aarch64).
    pub own: [usize; 2],
}

/// The range alignment of `kind`.
fn range_align(kind: Kind) -> u64 {
    match kind {
        Kind::Tdata | Kind::Tbss => TLS_RANGE_ALIGN,
        _ => PAGE_SIZE,
    }
}

/// Pairs the units of `images` (x86-64, aarch64) and lays out both images.
pub fn plan(images: [&Image; 2]) -> Plan {
    let mut pairs_by_kind: HashMap<Kind, Vec<[usize; 2]>> = HashMap::new();
    let mut paired = [
        vec![false; images[0].units.len()],
        vec![false; images[1].units.len()],
    ];
    let mut unpaired = Vec::new();
    let mut counts = Counts::default();
    // Units of the second image by key, in address order.
    let mut theirs: HashMap<(Kind, &Key), Vec<usize>> = HashMap::new();
    for (i, u) in images[1].units.iter().enumerate() {
        theirs.entry((u.kind, &u.key)).or_default().push(i);
    }
    let mut taken: HashMap<(Kind, &Key), usize> = HashMap::new();
    // Read-only data named after a function is its jump table: the function's own code.
    let functions: std::collections::HashSet<&Key> = images
        .iter()
        .flat_map(|im| im.units.iter())
        .filter(|u| u.kind == Kind::Text)
        .map(|u| &u.key)
        .collect();
    for (i, u) in images[0].units.iter().enumerate() {
        if u.kind == Kind::Rodata && functions.contains(&u.key) {
            continue;
        }
        if let Key::Named(name) = &u.key
            && u.kind.is_data()
            && ISA_STATE.iter().any(|p| name.starts_with(p))
        {
            continue;
        }
        // Anonymous code (hand-written assembly) is each ISA's own: equal sizes mean nothing.
        if u.kind == Kind::Text && matches!(u.key, Key::Anon(_)) {
            continue;
        }
        let Some(candidates) = theirs.get(&(u.kind, &u.key)) else {
            continue;
        };
        let next = taken.entry((u.kind, &u.key)).or_default();
        let Some(&j) = candidates.get(*next) else {
            continue;
        };
        let v = &images[1].units[j];
        if let Key::Named(name) = &u.key {
            // Data whose size or bytes differ by ISA (a type or an initialiser under
            // `cfg(target_arch)`): each image keeps its own.
            if u.kind.is_data() && (u.size != v.size || u.bytes_hash != v.bytes_hash) {
                unpaired.push(Unpaired {
                    kind: u.kind,
                    name: name.clone(),
                    sizes: [u.size, v.size],
                });
                continue;
            }
            counts.named += 1;
        } else {
            counts.anonymous += 1;
        }
        *next += 1;
        paired[0][i] = true;
        paired[1][j] = true;
        pairs_by_kind.entry(u.kind).or_default().push([i, j]);
    }
    // A pair whose pointers do not point at each other's twins cannot hold the same bytes:
    // it goes apart, and so, in turn, does every pair pointing into it.
    let mut twin: [Vec<Option<usize>>; 2] = [
        vec![None; images[0].units.len()],
        vec![None; images[1].units.len()],
    ];
    for list in pairs_by_kind.values() {
        for &[i, j] in list {
            twin[0][i] = Some(j);
            twin[1][j] = Some(i);
        }
    }
    loop {
        let mut broken = Vec::new();
        for list in pairs_by_kind.values() {
            for &[i, j] in list {
                let (u, v) = (&images[0].units[i], &images[1].units[j]);
                let consistent = u.pointers.len() == v.pointers.len()
                    && u.pointers
                        .iter()
                        .zip(&v.pointers)
                        .all(|(p, q)| match (p.1, q.1) {
                            // Outside every unit (the GOT, unwind tables, a linker
                            // symbol): nothing says both land at one address.
                            (None, None) => false,
                            (Some((ti, oi)), Some((tj, oj))) => {
                                p.0 == q.0 && oi == oj && twin[0][ti] == Some(tj)
                            }
                            _ => false,
                        });
                if !consistent {
                    broken.push([i, j]);
                }
            }
        }
        if broken.is_empty() {
            break;
        }
        for [i, j] in broken {
            twin[0][i] = None;
            twin[1][j] = None;
            paired[0][i] = false;
            paired[1][j] = false;
            match images[0].units[i].key {
                Key::Named(_) => counts.named -= 1,
                Key::Anon(_) => counts.anonymous -= 1,
            }
        }
        for list in pairs_by_kind.values_mut() {
            list.retain(|&[i, _]| twin[0][i].is_some());
        }
    }
    counts.own = [
        paired[0].iter().filter(|p| !**p).count(),
        paired[1].iter().filter(|p| !**p).count(),
    ];
    let mut tls_align = HashMap::new();
    for kind in [Kind::Tdata, Kind::Tbss] {
        let max = images
            .iter()
            .flat_map(|im| im.units.iter().filter(move |u| u.kind == kind))
            .map(|u| u.align)
            .max()
            .unwrap_or(1);
        tls_align.insert(kind, max);
    }
    // Lay out the sections in image order.
    let own_bound = |side: usize, kind: Kind| -> u64 {
        images[side]
            .units
            .iter()
            .zip(&paired[side])
            .filter(|(u, p)| u.kind == kind && !**p)
            .map(|(u, _)| u.size + u.align - 1)
            .sum::<u64>()
            + own_slack(images[side], kind)
    };
    let mut pairs = Vec::new();
    let mut ranges = HashMap::new();
    let mut cursor = IMAGE_BASE;
    for kind in KINDS {
        cursor = match kind {
            Kind::Data => SHARED_BASE,
            Kind::Tbss => align_up(cursor, tls_align[&Kind::Tbss]),
            Kind::Bss => align_up(cursor, 64),
            _ => align_up(cursor, PAGE_SIZE),
        };
        if kind == Kind::Tdata {
            cursor = align_up(cursor, tls_align[&Kind::Tdata].max(PAGE_SIZE));
        }
        let start = cursor;
        let mut list = pairs_by_kind.remove(&kind).unwrap_or_default();
        list.sort_by_key(|&[i, _]| images[0].units[i].addr);
        for [i, j] in list {
            let (u, v): (&Unit, &Unit) = (&images[0].units[i], &images[1].units[j]);
            cursor = align_up(cursor, u.align.max(v.align));
            pairs.push((kind, [i, j], cursor));
            cursor += u.size.max(v.size);
        }
        let paired_end = cursor;
        let own0 = align_up(cursor, range_align(kind));
        let own1 = align_up(own0 + own_bound(0, kind), range_align(kind));
        let end = align_up(own1 + own_bound(1, kind), range_align(kind));
        ranges.insert(
            kind,
            Ranges {
                start,
                paired_end,
                own: [own0, own1],
                end,
            },
        );
        cursor = end;
    }
    Plan {
        pairs,
        ranges,
        tls_align,
        unpaired,
        counts,
    }
}

/// Bytes of an output section the units do not account for (linker-made contents).
fn own_slack(image: &Image, kind: Kind) -> u64 {
    image
        .sections
        .iter()
        .filter(|s| s.out == kind.section() && s.file == "<internal>")
        .map(|s| s.size + s.align)
        .sum::<u64>()
        + 64
}

/// The input-section descriptions the image script gathers into `kind` (what is left
/// after the pairs: an image's own contents).
fn rest_patterns(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => {
            "KEEP(*(.text._start)) *(.text.unlikely .text.unlikely.*) \
             *(.text.hot .text.hot.*) *(.text .text.*)"
        }
        Kind::Rodata => "*(.rodata .rodata.*)",
        Kind::RelRo => "*(.data.rel.ro.local .data.rel.ro.local.*) *(.data.rel.ro .data.rel.ro.*)",
        Kind::Tdata => "*(.tdata .tdata.*)",
        Kind::Tbss => "*(.tbss .tbss.*) *(.tcommon)",
        Kind::Data => "*(.data .data.*)",
        Kind::Bss => "*(.bss .bss.*) *(COMMON)",
    }
}

/// The program header a section goes into.
fn phdrs(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => ":text",
        Kind::Rodata | Kind::RelRo => ":rodata",
        Kind::Tdata => ":rodata :tls",
        Kind::Tbss => ":tls",
        Kind::Data | Kind::Bss => ":data",
    }
}

/// The linker script of image `side` (0: x86-64, 1: aarch64) of the pair.
pub fn script(plan: &Plan, images: [&Image; 2], side: usize) -> String {
    let isa = ["x86_64", "aarch64"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/* An aligned popvmm image ({}), written by cargo pop: every unit its {} twin also\n   \
         has is at the same address in both; the rest is in this image's own range. */",
        isa[side],
        isa[1 - side]
    );
    s.push_str(
        "ENTRY(_start)\n\nPHDRS\n{\n    text   PT_LOAD FLAGS(5);\n    rodata PT_LOAD FLAGS(4);\n    \
         tls    PT_TLS  FLAGS(4);\n    data   PT_LOAD FLAGS(6);\n}\n\nSECTIONS\n{\n",
    );
    let _ = writeln!(s, "    . = {IMAGE_BASE:#x};\n    __pop_image_start = .;");
    for kind in KINDS {
        let r = &plan.ranges[&kind];
        if kind == Kind::Data {
            s.push_str(
                "    .pop_abi : { KEEP(*(.pop_abi)) } :rodata\n    \
                 .eh_frame_hdr : { *(.eh_frame_hdr) } :rodata\n    \
                 .eh_frame : { KEEP(*(.eh_frame)) } :rodata\n    \
                 .gcc_except_table : { *(.gcc_except_table .gcc_except_table.*) } :rodata\n    \
                 .init_array : {\n        __init_array_start = .;\n        \
                 KEEP(*(SORT_BY_INIT_PRIORITY(.init_array.*) SORT_BY_INIT_PRIORITY(.init_array)))\n        \
                 __init_array_end = .;\n    } :rodata\n    \
                 .got : { *(.got) *(.igot) } :rodata\n    \
                 .got.plt : { *(.got.plt) *(.igot.plt) } :rodata\n    \
                 .debug_gdb_scripts : { KEEP(*(.debug_gdb_scripts)) } :rodata\n    \
                 . = ALIGN(0x1000);\n    __pop_private_end = .;\n",
            );
            let _ = writeln!(
                s,
                "    ASSERT(__pop_private_end <= {PRIVATE_LIMIT:#x}, \"node-private image contents reach PRIVATE_LIMIT\")"
            );
            let _ = writeln!(s, "    __pop_data_start = {SHARED_BASE:#x};");
        }
        let align = match kind {
            Kind::Tdata | Kind::Tbss => format!(" ALIGN({:#x})", plan.tls_align[&kind]),
            _ => String::new(),
        };
        let _ = writeln!(s, "    {} {:#x} :{align} {{", kind.section(), r.start);
        for (k, pair, addr) in &plan.pairs {
            if *k != kind {
                continue;
            }
            let u = &images[side].units[pair[side]];
            let _ = writeln!(s, "        . = {addr:#x}; {}", u.pattern);
        }
        let _ = writeln!(s, "        . = {:#x};", r.own[side]);
        let _ = writeln!(s, "        {}", rest_patterns(kind));
        if side == 0 {
            let _ = writeln!(
                s,
                "        ASSERT(. <= {:#x}, \"x86-64 contents of {} outgrew their range\")",
                r.own[1],
                kind.section()
            );
        }
        let _ = writeln!(s, "        . = MAX(., {:#x});", r.end);
        let _ = writeln!(s, "    }} {}", phdrs(kind));
        let id = kind.ident();
        let _ = writeln!(
            s,
            "    __pop_aligned_{id}_start = {:#x};\n    __pop_aligned_{id}_end = {:#x};\n    \
             __pop_own_{id}_x86_64 = {:#x};\n    __pop_own_{id}_aarch64 = {:#x};\n    \
             __pop_own_{id}_end = {:#x};",
            r.start, r.paired_end, r.own[0], r.own[1], r.end
        );
        if kind == Kind::Text {
            s.push_str("    __pop_text_end = .;\n");
        }
    }
    s.push_str("    . = ALIGN(0x1000);\n    __pop_data_end = .;\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::map::InputSection;

    fn unit(
        kind: Kind,
        key: Key,
        addr: u64,
        size: u64,
        pointers: Vec<(u64, Option<(usize, u64)>)>,
    ) -> Unit {
        Unit {
            kind,
            pattern: format!("*( .x{addr:x} )"),
            members: Vec::new(),
            layout: vec![0],
            addr,
            size,
            align: 8,
            key,
            pointers,
            bytes_hash: 0,
        }
    }

    fn image(units: Vec<Unit>) -> Image {
        Image {
            sections: Vec::<InputSection>::new(),
            units,
        }
    }

    fn named(s: &str) -> Key {
        Key::Named(s.into())
    }

    #[test]
    fn twins_share_an_address_and_the_rest_goes_to_each_own_range() {
        let a = image(vec![
            unit(Kind::Text, named("f"), 0x400000, 0x10, vec![]),
            unit(Kind::Text, named("only_x86"), 0x400010, 0x30, vec![]),
            unit(Kind::Text, named("g"), 0x400040, 0x20, vec![]),
            unit(Kind::Data, named("S"), 0x4000_0000, 8, vec![]),
        ]);
        let b = image(vec![
            unit(Kind::Text, named("g"), 0x400000, 0x28, vec![]),
            unit(Kind::Text, named("f"), 0x400028, 0x18, vec![]),
            unit(Kind::Data, named("S"), 0x4000_0000, 16, vec![]),
        ]);
        let p = plan([&a, &b]);
        let at = |i: usize| {
            p.pairs
                .iter()
                .find(|(_, pair, _)| pair[0] == i)
                .map(|x| x.2)
        };
        assert_eq!(at(0), Some(0x400000), "f first, as in the x86-64 image");
        assert_eq!(
            at(2),
            Some(0x400018),
            "g after f's larger twin (0x18), 8-aligned"
        );
        assert_eq!(at(1), None);
        // A static whose size differs by ISA stays apart, named.
        assert_eq!(at(3), None);
        assert_eq!(
            p.unpaired,
            vec![Unpaired {
                kind: Kind::Data,
                name: "S".into(),
                sizes: [8, 16]
            }]
        );
        let text = &p.ranges[&Kind::Text];
        assert_eq!(text.paired_end, 0x400018 + 0x28);
        assert_eq!(text.own[0], 0x401000);
        assert!(text.own[1] >= text.own[0] + 0x30 && text.own[1].is_multiple_of(PAGE_SIZE));
        assert!(text.end >= text.own[1]);
        assert_eq!(p.counts.named, 2);
        assert_eq!(p.counts.own, [2, 1]);
        // Each script places its own unit of a pair at the pair's address.
        let script = script(&p, [&a, &b], 1);
        assert!(
            script.contains(&format!(". = 0x400000; {}", b.units[1].pattern)),
            "{script}"
        );
        assert!(
            script.contains("__pop_aligned_text_end = 0x400040;"),
            "{script}"
        );
    }

    #[test]
    fn a_constant_pointing_at_the_wrong_twin_is_undone_and_so_is_what_points_at_it() {
        let anon = Key::Anon(7);
        let outer = Key::Anon(9);
        // x86-64: the vtable points at f; aarch64: at g. Same class (equal contents by
        // class), but f and g are not twins of each other.
        let a = image(vec![
            unit(Kind::Text, named("f"), 0x400000, 0x10, vec![]),
            unit(Kind::Text, named("g"), 0x400010, 0x10, vec![]),
            unit(
                Kind::Rodata,
                anon.clone(),
                0x401000,
                8,
                vec![(0, Some((0, 0)))],
            ),
            unit(
                Kind::Rodata,
                outer.clone(),
                0x401008,
                8,
                vec![(0, Some((2, 0)))],
            ),
            unit(Kind::Rodata, Key::Anon(11), 0x401010, 8, vec![(0, None)]),
            unit(Kind::Rodata, Key::Anon(13), 0x401018, 8, vec![]),
        ]);
        let b = image(vec![
            unit(Kind::Text, named("f"), 0x400000, 0x10, vec![]),
            unit(Kind::Text, named("g"), 0x400010, 0x10, vec![]),
            unit(Kind::Rodata, anon, 0x401000, 8, vec![(0, Some((1, 0)))]),
            unit(Kind::Rodata, outer, 0x401008, 8, vec![(0, Some((2, 0)))]),
            unit(Kind::Rodata, Key::Anon(11), 0x401010, 8, vec![(0, None)]),
            unit(Kind::Rodata, Key::Anon(13), 0x401018, 8, vec![]),
        ]);
        let p = plan([&a, &b]);
        let paired: Vec<usize> = p.pairs.iter().map(|(_, pair, _)| pair[0]).collect();
        assert!(
            paired.contains(&0) && paired.contains(&1) && paired.contains(&5),
            "{paired:?}"
        );
        assert!(
            !paired.contains(&4),
            "a pointer outside every unit: nothing says both land at one address"
        );
        assert!(
            !paired.contains(&2),
            "the vtable points at different functions"
        );
        assert!(!paired.contains(&3), "what points at the vtable goes too");
        assert_eq!(p.counts.anonymous, 1);
    }
}
