//! The one way this project takes a lock: a thread that panicked while holding it leaves the
//! data as it was between two statements (every lock here guards plain tables, queues and
//! flags), so the others go on with it instead of panicking in turn.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering it from a panicked holder.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
