//! Building the libos and turning it into one object that links into any std application.
//!
//! The libos is a `no_std` staticlib with its own copy of `core` and `alloc`. Linked as-is
//! next to the application's `std`, those copies would clash. So the archive is prelinked
//! into a single relocatable object (`rust-lld -r --whole-archive`) in which every symbol
//! but the ABI (`sys_*`, `pop_*`, `_start`) is then made local (`rust-objcopy`).

use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::process;
use crate::repo::RepoPaths;
use crate::toolchain::Toolchain;

/// Global symbols the prelinked libos keeps: the hermit ABI, the pop API and the entry.
pub const EXPORTED_SYMBOLS: [&str; 3] = ["sys_*", "pop_*", "_start"];

/// File name of the prelinked object with every symbol still global.
const FULL_OBJECT: &str = "libos-full.o";
/// File name of the object linked into applications.
const OBJECT: &str = "libos.o";

/// Builds the libos for `arch` (cargo decides whether anything changed) and returns the
/// path of the prelinked `libos.o`, redoing the prelink only when the archive is newer.
pub fn build(toolchain: &Toolchain, repo: &RepoPaths, arch: Arch) -> Result<PathBuf> {
    let manifest = repo.libos_manifest();
    if !manifest.is_file() {
        return Err(Error::NoLibos(manifest));
    }
    compile(toolchain, repo, arch)?;
    let archive = repo.libos_archive(arch);
    if !archive.is_file() {
        return Err(Error::NoLibosArchive(archive));
    }
    let dir = repo.link_dir(arch);
    fsutil::create_dir_all(&dir)?;
    let object = dir.join(OBJECT);
    if !fsutil::is_up_to_date(&object, &archive) {
        prelink(toolchain, &archive, &dir.join(FULL_OBJECT), &object)?;
    }
    Ok(object)
}

/// `cargo build --release` of the libos for `arch`, in its own target directory. It runs in
/// the libos's directory so that the cargo configuration of the application being built
/// does not apply to it.
fn compile(toolchain: &Toolchain, repo: &RepoPaths, arch: Arch) -> Result<()> {
    let manifest = repo.libos_manifest();
    let mut cargo = toolchain.cargo_command();
    cargo
        .current_dir(manifest.parent().unwrap_or(repo.root()))
        .env_remove("RUSTFLAGS")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            crate::app::PAIRING_FLAGS.join("\x1f"),
        )
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["--target", arch.triple()])
        .arg("-Zbuild-std=core,alloc")
        .arg("--target-dir")
        .arg(repo.libos_target_dir());
    process::run(&mut cargo, &format!("building the libos for {arch}"))
}

/// Prelinks `archive` into `full` and localizes all but [`EXPORTED_SYMBOLS`] into `object`.
/// Both files are built under temporary names and renamed into place, so concurrent builds
/// never link a half-written object.
fn prelink(toolchain: &Toolchain, archive: &Path, full: &Path, object: &Path) -> Result<()> {
    let full_tmp = fsutil::temp_sibling(full);
    let mut lld = std::process::Command::new(toolchain.rust_lld());
    lld.args(["-flavor", "gnu", "-r", "--whole-archive"])
        .arg(archive)
        .arg("-o")
        .arg(&full_tmp);
    process::run(&mut lld, "prelinking the libos (rust-lld -r)")?;

    let object_tmp = fsutil::temp_sibling(object);
    let mut objcopy = toolchain.objcopy_command();
    objcopy.arg("--wildcard");
    for symbol in EXPORTED_SYMBOLS {
        objcopy.arg(format!("--keep-global-symbol={symbol}"));
    }
    objcopy.arg(&full_tmp).arg(&object_tmp);
    process::run(
        &mut objcopy,
        "localizing the libos's symbols (rust-objcopy)",
    )?;

    fsutil::rename(&full_tmp, full)?;
    fsutil::rename(&object_tmp, object)
}
