//! The guest's file descriptor table: stdio at 0..=2, then the lowest free number.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use pop_abi::errno::{EBADF, EMFILE};

/// Most file descriptors the guest may hold at once.
pub const MAX_FDS: usize = 1024;

/// An open directory.
#[derive(Debug)]
pub struct Directory {
    /// The open directory (for fstat).
    pub file: File,
    /// Its host path (for listing).
    pub path: PathBuf,
    /// Whether its entries were returned already (the next getdents64 returns 0).
    pub listed: AtomicBool,
}

/// What a guest file descriptor refers to. Clones share the host file (and its offset).
#[derive(Clone, Debug)]
pub enum Handle {
    /// The VMM's standard input.
    Stdin,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// A host file.
    File(Arc<File>),
    /// A host directory.
    Directory(Arc<Directory>),
}

/// File descriptor numbers to handles.
#[derive(Debug)]
pub struct FdTable {
    slots: Vec<Option<Handle>>,
}

impl Default for FdTable {
    fn default() -> Self {
        FdTable {
            slots: vec![
                Some(Handle::Stdin),
                Some(Handle::Stdout),
                Some(Handle::Stderr),
            ],
        }
    }
}

impl FdTable {
    /// The handle of `fd`.
    pub fn get(&self, fd: i64) -> Result<Handle, i32> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get(i)?.clone())
            .ok_or(EBADF)
    }

    /// Installs `handle` at the lowest free number from 3 (0..=2 once closed, too).
    pub fn insert(&mut self, handle: Handle) -> Result<i64, i32> {
        if let Some(free) = self.slots.iter().position(Option::is_none) {
            self.slots[free] = Some(handle);
            return Ok(free as i64);
        }
        if self.slots.len() >= MAX_FDS {
            return Err(EMFILE);
        }
        self.slots.push(Some(handle));
        Ok(self.slots.len() as i64 - 1)
    }

    /// Removes `fd`.
    pub fn remove(&mut self, fd: i64) -> Result<Handle, i32> {
        let slot = usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(EBADF)?;
        let handle = slot.take().ok_or(EBADF)?;
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Handle {
        Handle::File(Arc::new(File::open("/proc/self/exe").unwrap()))
    }

    #[test]
    fn lowest_free_number_and_limit() {
        let mut t = FdTable::default();
        assert_eq!(t.insert(file()), Ok(3));
        assert_eq!(t.insert(file()), Ok(4));
        assert!(t.remove(3).is_ok());
        assert_eq!(t.remove(3).unwrap_err(), EBADF);
        assert_eq!(t.insert(file()), Ok(3));
        assert_eq!(t.get(-1).unwrap_err(), EBADF);
        assert_eq!(t.get(99).unwrap_err(), EBADF);
        for _ in 5..MAX_FDS {
            t.insert(Handle::Stdin).unwrap();
        }
        assert_eq!(t.insert(Handle::Stdin), Err(EMFILE));
        assert!(matches!(t.get(1), Ok(Handle::Stdout)));
    }
}
