//! Migration points: moments a long computation offers at which its task may be moved.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

/// Non-zero while a move of the application is pending: for the VMM to set (the symbol is
/// exported, at the same address in both images of an aligned pair); a task at a
/// [`migration_point`] then yields to its worker.
#[unsafe(no_mangle)]
pub static POP_CROSSING_PENDING: AtomicU32 = AtomicU32::new(0);

/// Whether a move is pending.
pub(super) fn pending() -> bool {
    POP_CROSSING_PENDING.load(Ordering::Relaxed) != 0
}

/// Offers a migration point: if a move is pending the task yields (its worker gets back to
/// the executor, between polls, where the move can take place), else this is ready at once,
/// at the cost of one atomic load.
pub fn migration_point() -> MigrationPoint {
    MigrationPoint { yielded: false }
}

/// The future of [`migration_point`].
#[derive(Debug)]
#[must_use = "a migration point is offered only when awaited"]
pub struct MigrationPoint {
    yielded: bool,
}

impl Future for MigrationPoint {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded || !pending() {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
