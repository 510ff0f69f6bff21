//! Where the guest's standard output and error go: the VMM's own, unbuffered, or a buffer
//! (for tests).

use std::io::Write;
use std::sync::{Arc, Mutex};

/// The buffer of an [`Output::Capture`].
pub type Captured = Arc<Mutex<Vec<u8>>>;

/// A destination for guest output (fd 1 or 2) and for VMM reports about the guest.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// The VMM's standard error.
    Stderr,
    /// An in-memory buffer (for tests).
    Capture(Captured),
    /// Somewhere else, e.g. the VM's home node (see [`Sink`]).
    Sink(Arc<dyn Sink>),
}

/// A destination of output outside this process (the home node of a migrated VM).
pub trait Sink: std::fmt::Debug + Send + Sync {
    /// Writes `bytes`; returns how many were taken.
    fn write(&self, bytes: &[u8]) -> std::io::Result<usize>;
}

impl Output {
    /// A new capturing output and the buffer it fills.
    pub fn capture() -> (Output, Captured) {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        (Output::Capture(buffer.clone()), buffer)
    }

    /// Writes `bytes` at once (no buffering in the VMM); returns how many were written.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stdout => crate::sys::stdout().write(bytes),
            Output::Stderr => crate::sys::stderr().write(bytes),
            Output::Capture(buffer) => {
                crate::sync::lock(buffer).extend_from_slice(bytes);
                Ok(bytes.len())
            }
            Output::Sink(sink) => sink.write(bytes),
        }
    }

    /// Writes all of `bytes`, ignoring errors.
    pub fn write_all_bytes(&self, mut rest: &[u8]) {
        while !rest.is_empty() {
            match self.write(rest) {
                Ok(0) | Err(_) => return,
                Ok(n) => rest = &rest[n..],
            }
        }
    }

    /// Writes all of `text`, ignoring errors (for reports: there is nowhere else to say it).
    pub fn write_all_lossy(&self, text: &str) {
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            match self.write(rest) {
                Ok(0) | Err(_) => return,
                Ok(n) => rest = &rest[n..],
            }
        }
    }
}
