//! The architectures `cargo pop` builds images for.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// An instruction set an image can be built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86-64.
    X86_64,
    /// AArch64.
    Aarch64,
}

impl Arch {
    /// Every architecture, in the order `--arch all` builds them.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The Rust target triple images of this architecture are compiled for.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-hermit",
            Arch::Aarch64 => "aarch64-unknown-hermit",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `--arch` selects: one architecture or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchSelection {
    /// Only this architecture.
    One(Arch),
    /// Every architecture in [`Arch::ALL`].
    All,
}

impl Default for ArchSelection {
    /// x86_64 only.
    fn default() -> Self {
        ArchSelection::One(Arch::X86_64)
    }
}

impl ArchSelection {
    /// The architectures selected, in build order.
    pub fn arches(self) -> Vec<Arch> {
        match self {
            ArchSelection::One(arch) => vec![arch],
            ArchSelection::All => Arch::ALL.to_vec(),
        }
    }
}

impl FromStr for ArchSelection {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(ArchSelection::All),
            "x86_64" | "x86-64" | "amd64" => Ok(ArchSelection::One(Arch::X86_64)),
            "aarch64" | "arm64" => Ok(ArchSelection::One(Arch::Aarch64)),
            _ => Err(Error::UnknownArch(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_names() {
        assert_eq!(
            "x86_64".parse::<ArchSelection>().unwrap().arches(),
            [Arch::X86_64]
        );
        assert_eq!(
            "aarch64".parse::<ArchSelection>().unwrap().arches(),
            [Arch::Aarch64]
        );
        assert_eq!("all".parse::<ArchSelection>().unwrap().arches(), Arch::ALL);
        assert!(matches!(
            "riscv64".parse::<ArchSelection>(),
            Err(Error::UnknownArch(_))
        ));
    }

    #[test]
    fn triples() {
        assert_eq!(Arch::X86_64.triple(), "x86_64-unknown-hermit");
        assert_eq!(Arch::Aarch64.triple(), "aarch64-unknown-hermit");
    }
}
