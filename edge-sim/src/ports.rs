//! Host ports for forwards: free ports on 127.0.0.1 chosen by the kernel.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::{Error, Result};

/// A TCP port on 127.0.0.1 that is free right now (QEMU binds it a moment later; a start that
/// loses the race is retried with new ports).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| Error::Io {
        what: "finding a free port on 127.0.0.1".into(),
        source: e,
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Io {
            what: "finding a free port on 127.0.0.1".into(),
            source: e,
        })?
        .port();
    Ok(port)
}
