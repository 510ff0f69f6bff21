//! The crate's error type: every failure is one line that says what to do.

use std::io;
use std::path::Path;

/// Why the simulator could not be prepared, started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host tool or package is missing and could not be installed.
    #[error("{0}")]
    Setup(String),
    /// A file-system or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The board did not answer on its command channel before the boot timeout.
    #[error("board not ready after {secs} s{detail}")]
    BootTimeout {
        /// The timeout in seconds.
        secs: u64,
        /// The last lines of QEMU's stderr and of the console, with the logs' paths.
        detail: String,
    },
    /// QEMU stopped, during boot or afterwards.
    #[error("QEMU exited ({status}){detail}")]
    QemuExited {
        /// QEMU's exit status.
        status: String,
        /// QEMU's last error line (or the console's), then the last lines of both logs with
        /// their paths.
        detail: String,
    },
    /// The command channel to the board's agent failed.
    #[error("command channel: {0}")]
    Channel(String),
    /// A command ran longer than its timeout.
    #[error("command did not finish within {0} s")]
    CommandTimeout(u64),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] about `path`.
    pub(crate) fn io(what: impl std::fmt::Display, path: &Path, source: io::Error) -> Error {
        Error::Io {
            what: format!("{what} {}", path.display()),
            source,
        }
    }
}
