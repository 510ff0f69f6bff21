//! The errors `cargo pop` reports.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a build. Each error renders as one line of text (without the
/// `cargo-pop: error:` prefix, which the binary adds).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--arch` named an architecture this crate does not know.
    #[error("unknown architecture `{0}` (expected x86_64, aarch64 or all)")]
    UnknownArch(String),
    /// The popcorn-rs repository (which holds the libos) was not found.
    #[error("no libos found: {0} does not exist (set POP_REPO to the popcorn-rs repository)")]
    NoLibos(PathBuf),
    /// The libos was built but its static library is missing.
    #[error("no libos found: the libos build did not produce {0}")]
    NoLibosArchive(PathBuf),
    /// A program could not be started.
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("{what} failed ({status})")]
    Failed {
        /// What was being done, e.g. "building the libos".
        what: String,
        /// How the program exited.
        status: ExitStatus,
    },
    /// A program's output was not what was expected.
    #[error("{0}")]
    UnexpectedOutput(String),
    /// A path that must be passed to rustc inside a flag is not UTF-8.
    #[error("path is not UTF-8: {0}")]
    NonUtf8Path(PathBuf),
    /// An image pair does not line up (or is not a pair).
    #[error("the image pair is not aligned: {0}")]
    Misaligned(String),
    /// An aligned pair holds types that cannot cross ISAs.
    #[error("the image pair cannot cross ISAs: {0}")]
    CannotCross(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl Error {
    /// Wraps an I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
