//! `cargo pop`: builds unmodified Rust `std` applications into images that `popvmm` runs.
//!
//! An image is the application compiled for `<arch>-unknown-hermit` with `-Zbuild-std`,
//! linked with the pop library OS and laid out at the fixed addresses of `pop-abi`'s memory
//! map. [`build`] does what `cargo pop build` does:
//!
//! 1. builds the libos (`libos/` of the popcorn-rs repository, see [`repo`]) and prelinks it
//!    into one object whose only global symbols are its ABI ([`libos`]);
//! 2. writes the architecture's linker script next to it ([`link`]);
//! 3. runs `cargo build` for the application with both linked in ([`app`]), through a
//!    linker wrapper that records each link ([`link::wrapper`]);
//! 4. with `--arch all`, links each program's two images again aligned, so that what
//!    application state can point at has one address on both ISAs, and verifies the pair
//!    ([`align`]); and returns the paths of the images.
//!
//! Every `rustc` and `cargo` runs with the toolchain pinned by the repository
//! ([`toolchain`]).

pub mod align;
pub mod app;
pub mod arch;
pub mod error;
pub mod libos;
pub mod link;
pub mod messages;
pub mod options;
pub mod repo;
pub mod toolchain;

mod fsutil;
mod process;

use std::path::PathBuf;

pub use arch::{Arch, ArchSelection};
pub use error::{Error, Result};
pub use options::BuildOptions;
pub use toolchain::{Toolchain, sysroot};

/// Builds the images `options` ask for and returns their paths, in build order.
pub fn build(options: &BuildOptions) -> Result<Vec<PathBuf>> {
    let arches = options.arch.arches();
    let repo = repo::RepoPaths::new(options.repo.clone().unwrap_or_else(repo::root));
    if !repo.libos_manifest().is_file() {
        return Err(Error::NoLibos(repo.libos_manifest()));
    }
    let toolchain = Toolchain::pinned(repo.root())?;
    // One build at a time per checkout: builds share the libos, the recorded links and the
    // alignment of their images.
    let lock_dir = repo.root().join("target/pop");
    fsutil::create_dir_all(&lock_dir)?;
    let lock_path = lock_dir.join("build.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
    lock.lock().map_err(|e| Error::io(&lock_path, e))?;
    let mut by_arch = Vec::new();
    for arch in arches {
        let libos = libos::build(&toolchain, &repo, arch)?;
        let dir = repo.link_dir(arch);
        let script = link::write(&dir, arch)?;
        let linker = link::wrapper::write(&dir, &toolchain.rust_lld())?;
        let inputs = app::LinkInputs {
            libos,
            script,
            linker,
            links: dir.join("links"),
        };
        by_arch.push((arch, app::build(&toolchain, options, arch, &inputs)?));
    }
    if let [(Arch::X86_64, x86_64), (Arch::Aarch64, aarch64)] = &by_arch[..] {
        let links =
            [repo.link_dir(Arch::X86_64), repo.link_dir(Arch::Aarch64)].map(|d| d.join("links"));
        for [a, b] in align::pairs(x86_64, aarch64) {
            let done = align::align_pair(&toolchain, [&a, &b], [&links[0], &links[1]])?;
            eprintln!("{}", align::summary(&a, &done));
        }
    }
    Ok(by_arch.into_iter().flat_map(|(_, images)| images).collect())
}
