//! Where a VM's descriptor table is kept: here (a VM on one node, or a whole VM that moved),
//! or at its origin (a node its threads moved to: every node of a VM that spans sees one
//! table, so a descriptor one thread opened works in every other thread, wherever they run).

use std::sync::Mutex;

use super::fd_table::{Fd, FdTable};

/// The operations on a descriptor table, each atomic where the table is.
pub trait Descriptors: std::fmt::Debug + Send + Sync {
    /// What `fd` refers to.
    fn get(&self, fd: i64) -> Result<Fd, i32>;
    /// Gives `target` the lowest free descriptor.
    fn insert(&self, target: Fd) -> Result<i64, i32>;
    /// Frees `fd`: what it referred to, and whether another descriptor still refers to it.
    fn remove(&self, fd: i64) -> Result<(Fd, bool), i32>;
    /// Gives what `fd` refers to the lowest free descriptor too.
    fn dup(&self, fd: i64) -> Result<i64, i32>;
    /// A copy of the whole table (what moves with a VM).
    fn table(&self) -> Result<FdTable, i32>;
}

/// A table kept here.
#[derive(Debug, Default)]
pub struct LocalDescriptors(Mutex<FdTable>);

impl LocalDescriptors {
    /// A table holding `table`.
    pub fn new(table: FdTable) -> LocalDescriptors {
        LocalDescriptors(Mutex::new(table))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FdTable> {
        crate::sync::lock(&self.0)
    }
}

impl Descriptors for LocalDescriptors {
    fn get(&self, fd: i64) -> Result<Fd, i32> {
        self.lock().get(fd)
    }

    fn insert(&self, target: Fd) -> Result<i64, i32> {
        self.lock().insert(target)
    }

    fn remove(&self, fd: i64) -> Result<(Fd, bool), i32> {
        let mut table = self.lock();
        let removed = table.remove(fd)?;
        let still = match removed {
            Fd::Home(handle) => table.refers_to(handle),
            Fd::Stdout | Fd::Stderr => false,
        };
        Ok((removed, still))
    }

    fn dup(&self, fd: i64) -> Result<i64, i32> {
        let mut table = self.lock();
        let target = table.get(fd)?;
        table.insert(target)
    }

    fn table(&self) -> Result<FdTable, i32> {
        Ok(self.lock().clone())
    }
}
