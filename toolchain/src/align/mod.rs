//! Aligned image pairs: one x86-64 and one aarch64 image of the same program in which
//! everything application state can point at is at the same address (DESIGN decision 4).
//!
//! `cargo pop build --arch all` builds both images as usual, through the linker wrapper
//! that records each link ([`crate::link::wrapper`]). Then, per program, it reads both
//! links' maps and images ([`map`], [`units`]), pairs what both have — functions and
//! statics by their demangled paths, anonymous constants by their contents ([`units::
//! classify`]) — and gives each pair one address ([`plan`]); both images are linked again
//! with a script each that puts them there, and the pair is checked ([`verify`]).

pub mod map;
pub mod plan;
pub mod types;
pub mod units;
pub mod verify;

use std::path::{Path, PathBuf};

use goblin::elf::Elf;
use goblin::elf::program_header::PT_LOAD;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::link::wrapper::LinkRecord;
use crate::toolchain::Toolchain;

/// What aligning a pair did.
#[derive(Debug)]
pub struct Aligned {
    /// How many units were paired, and how many each image keeps to itself.
    pub counts: plan::Counts,
    /// Statics both images have with different sizes (each image keeps its own).
    pub unpaired: Vec<plan::Unpaired>,
    /// The verifier's findings.
    pub report: verify::Report,
    /// Loaded bytes (PT_LOAD file sizes) of each image before and after alignment.
    pub sizes: [(u64, u64); 2],
    /// The pair was aligned already (only verified again; no counts or sizes).
    pub fresh: bool,
}

/// The file name rustc linked `image` as: cargo copies (hard-links) `deps/<name>-<hash>`
/// to the image's path.
pub fn link_name(image: &Path) -> Result<String> {
    if !image.exists() {
        return Err(Error::io(image, std::io::ErrorKind::NotFound.into()));
    }
    let path = fsutil::uplifted_from(image).unwrap_or_else(|| image.to_path_buf());
    Ok(path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned())
}

/// The loaded bytes of an ELF image (its `PT_LOAD` file sizes), 0 if it does not parse.
pub fn loaded_bytes(data: &[u8]) -> u64 {
    Elf::parse(data).map_or(0, |elf| {
        elf.program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| p.p_filesz)
            .sum()
    })
}

/// The version of the alignment: a pair aligned by another is aligned again.
const FORMAT: &str = "pop-align 3\n";

/// File of a link record saying which [`FORMAT`] aligned it.
const STAMP: &str = "aligned.stamp";

/// Whether both images are aligned links of their current natural links already.
fn up_to_date(images: [&Path; 2], naturals: [&Path; 2]) -> bool {
    let newest = naturals.iter().filter_map(|n| fsutil::mtime(n)).max();
    let stamped = naturals.iter().all(|n| {
        n.parent()
            .and_then(|d| std::fs::read_to_string(d.join(STAMP)).ok())
            .is_some_and(|s| s == FORMAT)
    });
    stamped
        && newest.is_some()
        && images.iter().all(|image| {
            fsutil::mtime(image) >= newest && fsutil::mtime(&verify::map_of(image)) >= newest
        })
}

/// Aligns the pair `images` (x86-64, aarch64), whose links were recorded in `links`
/// (per image, its architecture's directory), in place: each image is replaced by its
/// aligned link, with its link map beside it ([`verify::map_of`]). A pair aligned since
/// its last links is only verified again.
pub fn align_pair(toolchain: &Toolchain, images: [&Path; 2], links: [&Path; 2]) -> Result<Aligned> {
    let mut records = Vec::new();
    let mut naturals = Vec::new();
    let mut names = Vec::new();
    for (image, dir) in images.iter().zip(links) {
        let name = link_name(image)?;
        let record = LinkRecord::load(dir, &name)?;
        names.push(name);
        records.push(record);
    }
    let name = images[0].file_name().unwrap_or_default().to_string_lossy();
    let checked = || {
        verify::verify(images[0], images[1]).map_err(|e| match e {
            Error::Misaligned(why) => Error::Misaligned(format!("{name}: {why}")),
            e => e,
        })
    };
    // What cannot cross is written beside the x86-64 image, one line each (empty: all can).
    let verified = || -> Result<verify::Report> {
        let report = checked()?;
        let path = hazards_of(images[0]);
        let mut text = report.refusals().join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        fsutil::write_if_changed(&path, text.as_bytes())?;
        Ok(report)
    };
    let natural_paths = [records[0].natural_image(), records[1].natural_image()];
    if up_to_date(images, [&natural_paths[0], &natural_paths[1]]) {
        return Ok(Aligned {
            counts: plan::Counts::default(),
            unpaired: Vec::new(),
            report: verified()?,
            sizes: [(0, 0); 2],
            fresh: true,
        });
    }
    for record in &records {
        let elf_path = record.natural_image();
        let data = std::fs::read(&elf_path).map_err(|e| Error::io(&elf_path, e))?;
        let map_path = record.natural_map();
        let text = std::fs::read_to_string(&map_path).map_err(|e| Error::io(&map_path, e))?;
        naturals.push((data, units::Image::new(map::parse(&text)?)));
    }
    let [(data_a, mut image_a), (data_b, mut image_b)]: [(Vec<u8>, units::Image); 2] =
        naturals.try_into().expect("two images");
    {
        let bad = |e: goblin::error::Error| Error::UnexpectedOutput(format!("natural image: {e}"));
        let elf_a = Elf::parse(&data_a).map_err(bad)?;
        let elf_b = Elf::parse(&data_b).map_err(bad)?;
        units::classify(
            [&mut image_a, &mut image_b],
            [(&elf_a, &data_a), (&elf_b, &data_b)],
        )?;
    }
    let plan = plan::plan([&image_a, &image_b]);
    let mut sizes = [(0, 0); 2];
    for side in 0..2 {
        let record = &records[side];
        let script = record.dir.join("aligned.ld");
        fsutil::write_if_changed(
            &script,
            plan::script(&plan, [&image_a, &image_b], side).as_bytes(),
        )?;
        let output = fsutil::temp_sibling(images[side]);
        let map = verify::map_of(images[side]);
        record.relink(&toolchain.rust_lld(), &script, &output, &map)?;
        fsutil::rename(&output, images[side])?;
        // Cargo's copy in `deps/` becomes the aligned image too (the same file again).
        if let Some(deps) = images[side]
            .parent()
            .map(|d| d.join("deps").join(&names[side]))
            && deps.is_file()
        {
            std::fs::remove_file(&deps).map_err(|e| Error::io(&deps, e))?;
            std::fs::hard_link(images[side], &deps).map_err(|e| Error::io(&deps, e))?;
        }
        fsutil::write_if_changed(&record.dir.join(STAMP), FORMAT.as_bytes())?;
        let natural = if side == 0 { &data_a } else { &data_b };
        let aligned = std::fs::read(images[side]).map_err(|e| Error::io(images[side], e))?;
        sizes[side] = (loaded_bytes(natural), loaded_bytes(&aligned));
    }
    Ok(Aligned {
        counts: plan.counts,
        unpaired: plan.unpaired,
        report: verified()?,
        sizes,
        fresh: false,
    })
}

/// Where the build writes what of a pair cannot cross ISAs (beside its x86-64 image).
pub fn hazards_of(image: &Path) -> PathBuf {
    fsutil::with_suffix(image, ".hazards")
}

/// The images of both architectures (as each build listed them) paired by file name.
pub fn pairs(x86_64: &[PathBuf], aarch64: &[PathBuf]) -> Vec<[PathBuf; 2]> {
    x86_64
        .iter()
        .filter_map(|a| {
            let b = aarch64.iter().find(|b| b.file_name() == a.file_name())?;
            Some([a.clone(), b.clone()])
        })
        .collect()
}

/// One line about an aligned pair, for the build's output.
pub fn summary(image: &Path, done: &Aligned) -> String {
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    // Without type information the line says so; hazards get a warning of their own.
    let hazards = match done.report.hazards.len() {
        0 => String::new(),
        n => format!(
            "\nwarning: {name} cannot cross ISAs ({n} hazard(s), see {}): {}",
            hazards_of(image).display(),
            done.report.hazards[0]
        ),
    };
    if done.fresh {
        return format!(
            "aligned {name} (up to date): verified: {}{hazards}",
            done.report
        );
    }
    let growth = |(before, after): (u64, u64)| {
        if before == 0 {
            0.0
        } else {
            (after as f64 / before as f64 - 1.0) * 100.0
        }
    };
    format!(
        "aligned {name}: {} pairs ({} by name, {} by contents); own units x86_64 {}, aarch64 {}; \
         ISA-dependent statics kept apart: {}; verified: {}; loaded size +{:.0}% / +{:.0}%",
        done.counts.named + done.counts.anonymous,
        done.counts.named,
        done.counts.anonymous,
        done.counts.own[0],
        done.counts.own[1],
        if done.unpaired.is_empty() {
            "none".to_owned()
        } else {
            done.unpaired
                .iter()
                .map(|u| format!("`{}` ({} / {} bytes)", u.name, u.sizes[0], u.sizes[1]))
                .collect::<Vec<_>>()
                .join(", ")
        },
        done.report,
        growth(done.sizes[0]),
        growth(done.sizes[1]),
    ) + &hazards
}
