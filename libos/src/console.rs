//! Minimal output for the libos's own messages (std writes through `sys_write`).

use core::fmt::{self, Write};

use pop_abi::Hypercall;

use crate::hypercall::call;

/// Writes raw bytes to the VMM's stderr.
pub fn write_stderr(bytes: &[u8]) {
    call(
        Hypercall::Write,
        2,
        bytes.as_ptr() as u64,
        bytes.len() as u64,
        0,
        0,
    );
}

struct Stderr;

impl Write for Stderr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_stderr(s.as_bytes());
        Ok(())
    }
}

/// Formats to the VMM's stderr without allocating.
pub fn write_fmt_stderr(args: fmt::Arguments<'_>) {
    let _ = Stderr.write_fmt(args);
}
