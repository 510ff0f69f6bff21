//! A task: a boxed future and the state that keeps it polled by one worker at a time.

use std::boxed::Box;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use super::{RUNTIME, lock};

/// Not queued, not being polled: a wake queues it.
const IDLE: u8 = 0;
/// In the queue.
const QUEUED: u8 = 1;
/// Being polled.
const POLLING: u8 = 2;
/// Woken while being polled: queued again when the poll ends.
const WOKEN: u8 = 3;
/// Finished.
const DONE: u8 = 4;

/// A boxed future of the executor.
type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A spawned future.
pub(super) struct Task {
    state: AtomicU8,
    future: Mutex<Option<BoxFuture>>,
}

impl Task {
    /// A task for `future`, marked queued (the caller queues it).
    pub(super) fn new(future: BoxFuture) -> Arc<Task> {
        Arc::new(Task {
            state: AtomicU8::new(QUEUED),
            future: Mutex::new(Some(future)),
        })
    }

    /// Polls the future once (the task came out of the queue).
    pub(super) fn poll(self: Arc<Task>) {
        self.state.store(POLLING, Ordering::Release);
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        let mut slot = lock(&self.future);
        let Some(future) = slot.as_mut() else {
            return;
        };
        if future.as_mut().poll(&mut cx).is_ready() {
            *slot = None;
            self.state.store(DONE, Ordering::Release);
            return;
        }
        drop(slot);
        // Pending: idle, unless it was woken while being polled.
        if self
            .state
            .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.state.store(QUEUED, Ordering::Release);
            RUNTIME.schedule(self);
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let next = match state {
                IDLE => QUEUED,
                POLLING => WOKEN,
                _ => return, // queued, woken or done already
            };
            match self
                .state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        if state == IDLE {
            RUNTIME.schedule(Arc::clone(self));
        }
    }
}
