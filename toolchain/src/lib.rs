//! `cargo pop`: builds unmodified Rust `std` applications into images that `popvmm` runs.
//!
//! An image is the application compiled for `<arch>-unknown-hermit` with `-Zbuild-std`,
//! linked with the pop library OS and laid out at the fixed addresses of `pop-abi`'s memory
//! map. [`build`] does what `cargo pop build` does:
//!
//! 1. builds the libos (`libos/` of the popcorn-rs repository, see [`repo`]) and prelinks it
//!    into one object whose only global symbols are its ABI ([`libos`]);
//! 2. writes the architecture's linker script next to it ([`link`]);
//! 3. runs `cargo build` for the application with both linked in ([`app`]) and returns the
//!    paths of the images it produced.
//!
//! Every `rustc` and `cargo` runs with the toolchain pinned by the repository
//! ([`toolchain`]).

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
    let mut images = Vec::new();
    for arch in arches {
        let libos = libos::build(&toolchain, &repo, arch)?;
        let script = link::write(&repo.link_dir(arch), arch)?;
        let inputs = app::LinkInputs { libos, script };
        images.extend(app::build(&toolchain, options, arch, &inputs)?);
    }
    Ok(images)
}
