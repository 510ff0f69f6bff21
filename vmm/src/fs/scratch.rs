//! The guest's scratch `/tmp`: a fresh, empty directory private to one VM, in memory where
//! the host has a `tmpfs` at `/dev/shm`, seen by the guest at `/tmp` and removed with the VM.
//!
//! std programs expect a writable temporary directory (`std::env::temp_dir()` is `/tmp` on
//! the hermit targets). It belongs to the VM's [`HomeFiles`](super::HomeFiles), like every
//! host file the guest uses, so a VM that moved on keeps using it from its home.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::Mount;

/// Where the guest sees its scratch directory.
pub const GUEST_DIR: &str = "/tmp";

/// One VM's scratch directory on the host; removed, with all it holds, when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Makes a fresh directory (mode 0700) under `/dev/shm` if the host has it, else under
    /// the host's temporary directory.
    pub fn create() -> io::Result<Scratch> {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Self::create_in(&parent)
    }

    /// Makes a fresh directory (mode 0700) in `parent`.
    pub fn create_in(parent: &Path) -> io::Result<Scratch> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "popvmm-tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        // The resolver compares canonical host paths.
        let dir = std::fs::canonicalize(&dir)?;
        Ok(Scratch { dir })
    }

    /// The host directory.
    pub fn host_dir(&self) -> &Path {
        &self.dir
    }

    /// The read-write mount that shows it to the guest at [`GUEST_DIR`].
    pub fn mount(&self) -> Mount {
        Mount {
            host_dir: self.dir.clone(),
            guest_dir: GUEST_DIR.into(),
            writable: true,
        }
    }

    /// Removes the directory and all it holds now (done again when dropped: nothing then).
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove the guest's /tmp {}: {e}", self.dir.display());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_directory_is_private_and_goes_away_with_all_it_holds() {
        use std::os::unix::fs::PermissionsExt;
        let s = Scratch::create().unwrap();
        let dir = s.host_dir().to_path_buf();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(s.mount().guest_dir, "/tmp");
        assert!(s.mount().writable);
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/file"), b"x").unwrap();
        let other = Scratch::create().unwrap();
        assert_ne!(other.host_dir(), dir);
        drop(s);
        assert!(!dir.exists());
        assert!(other.host_dir().exists());
    }
}
