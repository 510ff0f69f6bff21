//! The control socket: a Unix-domain socket (mode 0600) on which a node answers requests,
//! one JSON object per line each way.
//!
//! Requests: `{"cmd":"peers"}`, `{"cmd":"stat","reset":false}`,
//! `{"cmd":"ping","to":1,"count":5,"size":64}`, `{"cmd":"shutdown"}`.
//! Answers: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest request or answer line.
pub const MAX_LINE: u64 = 16 * 1024 * 1024;

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The peer list.
    Peers,
    /// The statistics (then zero them if `reset`).
    Stat {
        /// Reset after reading.
        #[serde(default)]
        reset: bool,
    },
    /// Round trips to another node.
    Ping {
        /// The node to ping.
        to: u32,
        /// Round trips.
        count: u32,
        /// Payload bytes.
        size: u32,
    },
    /// A timed bulk stream to another node, received there into fresh memory.
    Stream {
        /// The receiving node.
        to: u32,
        /// Bytes (a multiple of 2 MiB).
        bytes: u64,
    },
    /// Stop the node.
    Shutdown,
    /// The VMs of the cluster (`popvmm ps`).
    Ps,
    /// Every thread of every VM of the cluster (`popvmm ps --threads`).
    Threads,
    /// Move one thread of a VM (`popvmm migrate --thread`), wherever it runs.
    MigrateThread {
        /// VM id or name.
        vm: String,
        /// The thread.
        tid: u32,
        /// Destination node.
        to: u32,
    },
    /// Stop the whole-VM migration of a VM before its switch-over, wherever it runs
    /// (`popvmm migrate --cancel`).
    Cancel {
        /// VM id or name.
        vm: String,
    },
    /// Move a VM running on this node (`popvmm migrate`); progress lines
    /// (`{"progress":{...}}`) come before the answer.
    Migrate {
        /// VM id or name.
        vm: String,
        /// Destination node.
        to: u32,
        /// How.
        mode: pop_migrate::Mode,
        /// Downtime target.
        downtime_ms: u64,
    },
}

/// The directory of default control sockets: `$XDG_RUNTIME_DIR/popvmm`, else
/// `/tmp/popvmm-UID`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("popvmm"),
        _ => {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| m.uid())
                .unwrap_or(0);
            PathBuf::from(format!("/tmp/popvmm-{uid}"))
        }
    }
}

/// The default control socket of node `id`.
pub fn default_path(id: u32) -> PathBuf {
    default_dir().join(format!("node{id}.sock"))
}

/// Sends one request and reads the answer (an error if the answer says `"ok": false`).
pub fn call(path: &Path, req: &Request, timeout: Duration) -> Result<Value, String> {
    let mut s = UnixStream::connect(path)
        .map_err(|e| format!("no node answers on {}: {e}", path.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    BufReader::new(s.take(MAX_LINE))
        .read_line(&mut answer)
        .map_err(|e| format!("reading the node's answer: {e}"))?;
    let v: Value =
        serde_json::from_str(&answer).map_err(|e| format!("bad answer from the node: {e}"))?;
    if v["ok"] == Value::Bool(true) {
        Ok(v)
    } else {
        Err(v["error"]
            .as_str()
            .unwrap_or("the node refused the request")
            .to_string())
    }
}
