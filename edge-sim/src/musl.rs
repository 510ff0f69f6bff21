//! Building static `aarch64-unknown-linux-musl` programs (popvmm for the board, test probes)
//! with the project's pinned nightly.
//!
//! rustup has no prebuilt std for `aarch64-unknown-linux-musl` in the pinned nightly
//! (`rustup target add` says "unavailable for download"), so std is built from `rust-src` with
//! `-Zbuild-std`, and the C runtime it links against comes from Debian's arm64 packages:
//! `musl-dev` (crt1.o, crti.o, crtn.o, libc.a and its stub libraries) and `libunwind-14-dev`
//! (LLVM's libunwind.a). When the toolchain does have the target installed, its own
//! self-contained files are used instead and std is not rebuilt.
//!
//! Debian's libunwind.a was built against glibc with `_FORTIFY_SOURCE` and calls
//! `__fprintf_chk`; `fortify-shim.o` (see `fortify_shim`) supplies it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cache::{self, CacheLock};
use crate::error::{Error, Result};
use crate::host;

/// The Rust target of programs that run on the board.
pub const TARGET: &str = "aarch64-unknown-linux-musl";

const FILES: &[(&str, &str)] = &[
    ("musl-dev", "./usr/lib/aarch64-linux-musl/crt1.o"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/crti.o"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/crtn.o"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/libc.a"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/libdl.a"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/libpthread.a"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/libm.a"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/librt.a"),
    ("musl-dev", "./usr/lib/aarch64-linux-musl/libutil.a"),
    ("libunwind-14-dev", "./usr/lib/llvm-14/lib/libunwind.a"),
];

/// How to build for [`TARGET`] with the active toolchain.
#[derive(Debug, Clone)]
pub enum Recipe {
    /// The toolchain ships std for the target (`rustup target add` worked).
    Prebuilt,
    /// std is built from source and linked against the C runtime in this directory.
    BuildStd {
        /// Directory with crt1.o, crti.o, crtn.o, libc.a, libunwind.a, ...
        link_dir: PathBuf,
    },
}

impl Recipe {
    /// Finds out how to build for [`TARGET`] with the toolchain that `rustc` in `dir` (where the
    /// build runs, which picks the rust-toolchain.toml) resolves to; downloads Debian's musl
    /// files into the cache (or [`crate::cache_dir`]) when needed.
    pub fn for_dir(dir: &Path, cache_dir: Option<&Path>, install: bool) -> Result<Recipe> {
        let sysroot = host::run_quiet(
            Command::new("rustc")
                .args(["--print", "sysroot"])
                .current_dir(dir),
            "rustc --print sysroot",
        )?;
        let target_lib = Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(TARGET)
            .join("lib");
        if target_lib.join("self-contained").join("crt1.o").is_file() {
            return Ok(Recipe::Prebuilt);
        }
        let cache = cache_dir.map_or_else(cache::default_dir, Path::to_path_buf);
        Ok(Recipe::BuildStd {
            link_dir: link_dir(&cache, install)?,
        })
    }

    /// The flags for `CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS`.
    pub fn rustflags(&self) -> String {
        match self {
            Recipe::Prebuilt => "-C linker=rust-lld -C link-self-contained=yes".into(),
            Recipe::BuildStd { link_dir } => {
                let d = link_dir.display();
                format!(
                    "-C linker=rust-lld -C link-self-contained=no -L {d} \
                     -Z pre-link-arg={d}/crt1.o -Z pre-link-arg={d}/crti.o \
                     -C link-arg={d}/fortify-shim.o -C link-arg={d}/crtn.o"
                )
            }
        }
    }

    /// `cargo build --release --target aarch64-unknown-linux-musl` for the crate at
    /// `manifest`, into `target_dir`, with the flags this recipe needs. Add `-p`/`--bin` etc.
    /// to the returned command as needed, then run it.
    pub fn cargo_build(&self, manifest: &Path, target_dir: &Path) -> Command {
        let mut cmd = self.cargo_build_here();
        cmd.arg("--manifest-path")
            .arg(manifest)
            .arg("--target-dir")
            .arg(target_dir);
        if let Some(dir) = manifest.parent() {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// `cargo build --release --target aarch64-unknown-linux-musl` with this recipe's flags,
    /// for the package in the current directory (add cargo's own arguments).
    pub fn cargo_build_here(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.arg("build")
            .arg("--release")
            .args(["--target", TARGET])
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS",
                self.rustflags(),
            );
        if let Recipe::BuildStd { .. } = self {
            cmd.arg("-Zbuild-std=std,panic_unwind,panic_abort");
        }
        cmd
    }
}

/// The directory of Debian's arm64 musl C runtime and libunwind under the cache, filled on
/// first use.
pub fn link_dir(cache: &Path, install: bool) -> Result<PathBuf> {
    let dir = cache.join("musl-aarch64-v2");
    let complete = dir.join("complete");
    if complete.is_file() {
        return Ok(dir);
    }
    let _lock = CacheLock::acquire(cache, Duration::from_secs(900))?;
    if complete.is_file() {
        return Ok(dir);
    }
    host::ensure_arm64_lists(install)?;
    let debs = cache.join("debs");
    let scratch = cache.join("musl-extract");
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    for package in ["musl-dev", "libunwind-14-dev"] {
        let deb = host::download(package, &debs)?;
        let members: Vec<String> = FILES
            .iter()
            .filter(|(p, _)| *p == package)
            .map(|(_, f)| f.to_string())
            .collect();
        host::extract(&deb, &members, &scratch)?;
        for member in &members {
            let from = scratch.join(member);
            let to = dir.join(Path::new(member).file_name().unwrap_or_default());
            std::fs::rename(&from, &to).map_err(|e| Error::io("moving to", &to, e))?;
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    cache::write_atomic(&dir.join("fortify-shim.o"), &crate::fortify_shim::object())?;
    cache::write_atomic(&complete, b"")?;
    Ok(dir)
}
