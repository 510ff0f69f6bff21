//! QEMU's human monitor over its Unix socket: used to add port forwards to a running board.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const PROMPT: &[u8] = b"(qemu) ";

/// Runs one monitor command and returns what it printed (without the echo and the prompt).
pub fn command(socket: &Path, line: &str) -> Result<String> {
    let fail = |e: std::io::Error| Error::Channel(format!("monitor {}: {e}", socket.display()));
    let mut stream = UnixStream::connect(socket).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    read_to_prompt(&mut stream)?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(fail)?;
    let reply = read_to_prompt(&mut stream)?;
    let text = String::from_utf8_lossy(&reply).replace('\r', "");
    // The monitor echoes the command line first (with terminal escapes); drop that line.
    let body = text.split_once('\n').map_or("", |(_, rest)| rest);
    Ok(body.trim().to_string())
}

fn read_to_prompt(stream: &mut UnixStream) -> Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.ends_with(PROMPT) {
        if Instant::now() > deadline {
            return Err(Error::Channel("monitor: no prompt within 10 s".into()));
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| Error::Channel(format!("monitor: {e}")))?;
        if n == 0 {
            return Err(Error::Channel("monitor closed the connection".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.truncate(buf.len() - PROMPT.len());
    Ok(buf)
}
