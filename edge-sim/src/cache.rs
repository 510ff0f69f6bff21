//! Where edge-sim keeps what it downloads and builds, and the lock that serialises filling it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The cache directory: `$EDGE_SIM_CACHE`, else `$XDG_CACHE_HOME/popcorn-rs/edge-sim`, else
/// `~/.cache/popcorn-rs/edge-sim`, else a directory under the system's temporary directory.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EDGE_SIM_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("popcorn-rs").join("edge-sim")
}

/// An exclusive `flock` on `DIR/lock`, held until dropped.
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Takes the lock, waiting at most `timeout` for another process to release it.
    pub fn acquire(dir: &Path, timeout: Duration) -> Result<CacheLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        let path = dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("opening", &path, e))?;
        let deadline = Instant::now() + timeout;
        let mut told = false;
        loop {
            // SAFETY: the descriptor belongs to `file`, which outlives the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(CacheLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(Error::io("locking", &path, err));
            }
            if Instant::now() >= deadline {
                return Err(Error::Setup(format!(
                    "another edge-sim holds {} for over {} s",
                    path.display(),
                    timeout.as_secs()
                )));
            }
            if !told {
                eprintln!("edge-sim: waiting for another edge-sim filling the cache");
                told = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see half.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming to", path, e))
}

/// FNV-1a, 64 bits: a stable key for cached files built from known inputs.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
