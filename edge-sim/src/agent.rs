//! The host side of the command channel: one TCP connection per command to the agent in the
//! board's `/init` (`src/guest/agent.sh`), through a QEMU `hostfwd` on 127.0.0.1.
//!
//! Request: `EDGE1 TIMEOUT_SECS SCRIPT_LEN\n`, the shell script, then the command's stdin until
//! the host half-closes. Response: `EDGE1 STATUS STDOUT_LEN STDERR_LEN\n`, stdout, stderr.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

/// What a command run in the board gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status as the board's shell reports it: the command's exit code, 128 + N when it
    /// was killed by signal N (137 when its timeout killed it), 127 when it was not found.
    pub status: i32,
    /// Everything the command wrote to stdout, byte for byte.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr, byte for byte.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// How a request failed.
#[derive(Debug)]
pub enum RequestError {
    /// The connection closed before any reply: the agent is not listening (yet). QEMU accepts
    /// forwarded connections itself and closes them when nothing listens in the guest.
    NotListening,
    /// No reply within the deadline.
    TimedOut,
    /// Anything else (malformed reply, I/O error).
    Failed(String),
}

/// Sends one command to the agent at `addr` and waits up to `wait` for its reply.
/// `guest_timeout` (seconds, 0 = none) is enforced inside the board by killing the command.
pub fn request(
    addr: SocketAddr,
    script: &[u8],
    stdin: &[u8],
    guest_timeout: u64,
    wait: Duration,
) -> Result<Output, RequestError> {
    let fail = |what: &str, e: io::Error| -> RequestError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => RequestError::TimedOut,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => RequestError::NotListening,
            _ => RequestError::Failed(format!("{what}: {e}")),
        }
    };
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| fail("connect", e))?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| fail("socket", e))?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| fail("socket", e))?;
    let mut writer = &stream;
    let header = format!("EDGE1 {guest_timeout} {}\n", script.len());
    writer
        .write_all(header.as_bytes())
        .and_then(|()| writer.write_all(script))
        .and_then(|()| writer.write_all(stdin))
        .map_err(|e| fail("send", e))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| fail("send", e))?;

    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    let n = reader
        .read_until(b'\n', &mut line)
        .map_err(|e| fail("receive", e))?;
    if n == 0 {
        return Err(RequestError::NotListening);
    }
    let text = String::from_utf8_lossy(&line);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let parse = |s: &str| s.parse::<u64>().ok();
    let (status, out_len, err_len) = match fields.as_slice() {
        ["EDGE1", st, o, e] => match (st.parse::<i32>().ok(), parse(o), parse(e)) {
            (Some(st), Some(o), Some(e)) => (st, o, e),
            _ => return Err(RequestError::Failed(format!("bad reply {text:?}"))),
        },
        _ => return Err(RequestError::Failed(format!("bad reply {text:?}"))),
    };
    let mut read_exact = |len: u64| -> Result<Vec<u8>, RequestError> {
        let mut buf = Vec::with_capacity(len.min(1 << 26) as usize);
        (&mut reader)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| fail("receive", e))?;
        if buf.len() as u64 != len {
            return Err(RequestError::Failed(format!(
                "reply cut short: {} of {len} bytes",
                buf.len()
            )));
        }
        Ok(buf)
    };
    let stdout = read_exact(out_len)?;
    let stderr = read_exact(err_len)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// One argument quoted for the POSIX shell: `'...'`, with `'` written as `'\''`. Exact for
/// any bytes but NUL, which no argument can hold.
pub fn shell_quote(arg: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(arg.len() + 2);
    out.push(b'\'');
    for &b in arg.as_bytes() {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// The script that runs `argv` exactly (no shell expansion), after setting `env` and `cwd`.
pub fn script_for(argv: &[&OsStr], env: &[(String, String)], cwd: Option<&str>) -> Vec<u8> {
    let mut script = Vec::new();
    if let Some(cwd) = cwd {
        script.extend_from_slice(b"cd ");
        script.extend(shell_quote(OsStr::new(cwd)));
        script.extend_from_slice(b" || exit 126\n");
    }
    for (k, v) in env {
        script.extend_from_slice(b"export ");
        script.extend_from_slice(k.as_bytes());
        script.push(b'=');
        script.extend(shell_quote(OsStr::new(v)));
        script.push(b'\n');
    }
    script.extend_from_slice(b"exec");
    for arg in argv {
        script.push(b' ');
        script.extend(shell_quote(arg));
    }
    script.push(b'\n');
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_newlines() {
        assert_eq!(shell_quote(OsStr::new("a b")), b"'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), b"'it'\\''s'");
        assert_eq!(shell_quote(OsStr::new("x\ny")), b"'x\ny'");
    }

    #[test]
    fn script_sets_env_and_execs() {
        let s = script_for(
            &[OsStr::new("/payload/probe"), OsStr::new("$HOME")],
            &[("K".into(), "v w".into())],
            Some("/tmp"),
        );
        assert_eq!(
            String::from_utf8(s).unwrap(),
            "cd '/tmp' || exit 126\nexport K='v w'\nexec '/payload/probe' '$HOME'\n"
        );
    }
}
