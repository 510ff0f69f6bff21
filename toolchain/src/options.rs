//! What a `cargo pop build` is asked to do.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::arch::ArchSelection;

/// Options of one build, as `cargo pop build` takes them on its command line.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Build the application with the release profile (the libos is always release).
    pub release: bool,
    /// The architectures to build images for.
    pub arch: ArchSelection,
    /// Packages to build (`-p`); empty builds what plain `cargo build` would.
    pub packages: Vec<String>,
    /// The application's `Cargo.toml` (`--manifest-path`); by default cargo looks in the
    /// current directory and its parents.
    pub manifest_path: Option<PathBuf>,
    /// Further arguments passed to `cargo build` unchanged (e.g. `--bin`, `--features`).
    pub cargo_args: Vec<OsString>,
    /// Directory to run the application's `cargo build` in (default: the current one).
    pub current_dir: Option<PathBuf>,
    /// The popcorn-rs checkout holding the libos (default: [`crate::repo::root`]).
    pub repo: Option<PathBuf>,
}
