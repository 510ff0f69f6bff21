//! Where the popcorn-rs repository is, and where builds put their files inside it.
//!
//! The libos is built from source in the repository `cargo pop` itself was built from,
//! unless the environment variable `POP_REPO` names another checkout.

use std::path::{Path, PathBuf};

use crate::arch::Arch;

/// Environment variable that overrides the repository root.
pub const REPO_ENV: &str = "POP_REPO";

/// The repository this crate was compiled in (the parent of `toolchain/`).
pub fn default_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The repository to take the libos from: `$POP_REPO` if set, else [`default_root`].
pub fn root() -> PathBuf {
    match std::env::var_os(REPO_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => default_root(),
    }
}

/// The files of one repository checkout that a build reads and writes.
#[derive(Clone, Debug)]
pub struct RepoPaths {
    root: PathBuf,
}

impl RepoPaths {
    /// Paths inside the checkout at `root`.
    pub fn new(root: impl Into<PathBuf>) -> RepoPaths {
        RepoPaths { root: root.into() }
    }

    /// The checkout's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The libos's cargo manifest.
    pub fn libos_manifest(&self) -> PathBuf {
        self.root.join("libos/Cargo.toml")
    }

    /// The target directory of libos builds (kept apart from the repository's own).
    pub fn libos_target_dir(&self) -> PathBuf {
        self.root.join("target/pop/libos")
    }

    /// The static library a libos build for `arch` produces.
    pub fn libos_archive(&self, arch: Arch) -> PathBuf {
        self.libos_target_dir()
            .join(arch.triple())
            .join("release/libpop_libos.a")
    }

    /// Where the prelinked libos object and the linker script for `arch` go.
    pub fn link_dir(&self, arch: Arch) -> PathBuf {
        self.root.join("target/pop").join(arch.triple())
    }
}
