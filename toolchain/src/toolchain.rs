//! The pinned Rust toolchain and the tools that ship with it (`rust-lld`, `rust-objcopy`).
//!
//! The libos and the application must be compiled by the same nightly (both use
//! `-Zbuild-std`), whatever toolchain the directory `cargo pop` runs in would select. So
//! every `rustc` and `cargo` this crate starts runs with `RUSTUP_TOOLCHAIN` set to the
//! channel pinned in the repository's `rust-toolchain.toml`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::process;

/// The pinned toolchain: its rustup channel, sysroot and host triple.
#[derive(Clone, Debug)]
pub struct Toolchain {
    channel: Option<String>,
    sysroot: PathBuf,
    host: String,
}

impl Toolchain {
    /// Finds the toolchain pinned by `<repo>/rust-toolchain.toml` (or, without that file,
    /// the one `rustc` selects) by asking its `rustc` for its sysroot and host triple.
    pub fn pinned(repo: &Path) -> Result<Toolchain> {
        let file = repo.join("rust-toolchain.toml");
        let channel = match std::fs::read_to_string(&file) {
            Ok(text) => pinned_channel(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(file, e)),
        };
        let mut rustc = Command::new("rustc");
        rustc.args(["--print", "sysroot", "--print", "host-tuple"]);
        if let Some(channel) = &channel {
            rustc.env("RUSTUP_TOOLCHAIN", channel);
        }
        let out = process::output(&mut rustc, "asking rustc for its sysroot")?;
        let mut lines = out.lines();
        let (Some(sysroot), Some(host)) = (lines.next(), lines.next()) else {
            return Err(Error::UnexpectedOutput(format!(
                "rustc --print sysroot --print host-tuple printed {out:?}"
            )));
        };
        Ok(Toolchain {
            channel,
            sysroot: PathBuf::from(sysroot.trim()),
            host: host.trim().to_owned(),
        })
    }

    /// The rustup channel pinned by the repository, if any.
    pub fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    /// The toolchain's sysroot (`rustc --print sysroot`).
    pub fn sysroot(&self) -> &Path {
        &self.sysroot
    }

    /// The triple of the machine the toolchain runs on.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Directory holding the toolchain's own binutils (`rust-lld`, `rust-objcopy`).
    fn tool_dir(&self) -> PathBuf {
        self.sysroot
            .join("lib/rustlib")
            .join(&self.host)
            .join("bin")
    }

    /// Path of the toolchain's `rust-lld`.
    pub fn rust_lld(&self) -> PathBuf {
        self.tool_dir().join("rust-lld")
    }

    /// Path of the toolchain's `rust-objcopy`.
    pub fn rust_objcopy(&self) -> PathBuf {
        self.tool_dir().join("rust-objcopy")
    }

    /// A command running the toolchain's `rust-objcopy`, which needs the toolchain's
    /// `lib/` (its LLVM) on `LD_LIBRARY_PATH`.
    pub fn objcopy_command(&self) -> Command {
        let mut cmd = Command::new(self.rust_objcopy());
        let mut paths = vec![self.sysroot.join("lib")];
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            paths.extend(std::env::split_paths(&old));
        }
        let joined = std::env::join_paths(paths).unwrap_or_else(|_| OsString::new());
        cmd.env("LD_LIBRARY_PATH", joined);
        cmd
    }

    /// A `cargo` command of this toolchain.
    pub fn cargo_command(&self) -> Command {
        let mut cmd = Command::new("cargo");
        if let Some(channel) = &self.channel {
            cmd.env("RUSTUP_TOOLCHAIN", channel);
        }
        cmd
    }
}

/// The sysroot of the toolchain pinned by the repository at `repo`.
pub fn sysroot(repo: &Path) -> Result<PathBuf> {
    Ok(Toolchain::pinned(repo)?.sysroot)
}

/// The `channel = "..."` of a `rust-toolchain.toml`, if it has one.
pub fn pinned_channel(toolchain_toml: &str) -> Option<String> {
    toolchain_toml.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        if key.trim() != "channel" {
            return None;
        }
        let value = value.split('#').next()?.trim();
        let value = value.strip_prefix('"')?.strip_suffix('"')?;
        Some(value.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_channel() {
        let toml = "[toolchain]\n# Pinned\nchannel = \"nightly-2026-05-20\" # why\ncomponents = [\"rust-src\"]\n";
        assert_eq!(pinned_channel(toml).as_deref(), Some("nightly-2026-05-20"));
        assert_eq!(pinned_channel("[toolchain]\n"), None);
    }

    #[test]
    fn finds_the_repository_toolchain() {
        let toolchain = Toolchain::pinned(&crate::repo::default_root()).unwrap();
        assert!(toolchain.sysroot().join("lib/rustlib").is_dir());
        assert!(toolchain.rust_lld().is_file(), "{:?}", toolchain.rust_lld());
        assert!(toolchain.rust_objcopy().is_file());
    }
}
