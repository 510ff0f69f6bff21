//! An executor for migratable applications: async tasks on worker threads, whose whole
//! state lives on the heap and in statics.
//!
//! ```no_run
//! pop::run(async {
//!     let part = pop::spawn(async { (0..1000u64).sum::<u64>() });
//!     pop::migration_point().await;
//!     println!("{}", part.await);
//!     0 // the exit status
//! });
//! ```
//!
//! A task is a future in a box on the heap; between two polls no native frame of it exists,
//! so a moment at which every worker is between polls (a *migration point*) is one at which
//! the application is nothing but memory: what a move between ISAs will carry (DESIGN
//! decision 4). [`migration_point`] lets a long computation offer such a moment: it returns
//! at once when no move is pending (one atomic load), and otherwise makes the task yield, so
//! that its worker gets back between polls. (Stopping every worker there while the move
//! happens is the crossing's part, still to come.) The executor keeps all its state in
//! statics and on the heap, so the images of an aligned pair (`cargo pop build --arch all`)
//! read it the same way on both ISAs.

mod point;
mod task;

use std::boxed::Box;
use std::collections::VecDeque;
use std::format;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

pub use point::{MigrationPoint, migration_point};
use task::Task;

/// Environment variable that sets the number of worker threads (default: the available
/// parallelism, at least 1).
pub const WORKERS_ENV: &str = "POP_WORKERS";

/// The executor: one per process, in a static (its addresses are the same in both images of
/// an aligned pair).
struct Runtime {
    /// Tasks ready to be polled, oldest first.
    queue: Mutex<VecDeque<Arc<Task>>>,
    /// Signalled when a task is queued or the run ends.
    ready: Condvar,
    /// Set once the root task has finished: workers stop.
    finished: AtomicBool,
    /// Tasks alive (spawned and not finished).
    alive: AtomicUsize,
    /// Polls done, for statistics.
    polls: AtomicUsize,
}

static RUNTIME: Runtime = Runtime {
    queue: Mutex::new(VecDeque::new()),
    ready: Condvar::new(),
    finished: AtomicBool::new(false),
    alive: AtomicUsize::new(0),
    polls: AtomicUsize::new(0),
};

/// Whether [`run`] has started (spawning needs a running executor).
static STARTED: AtomicBool = AtomicBool::new(false);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Runtime {
    fn schedule(&self, task: Arc<Task>) {
        lock(&self.queue).push_back(task);
        self.ready.notify_one();
    }

    /// The next task to poll, waiting for one; `None` once the run is over.
    fn next(&self) -> Option<Arc<Task>> {
        let mut queue = lock(&self.queue);
        loop {
            if self.finished.load(Ordering::Acquire) {
                return None;
            }
            if let Some(task) = queue.pop_front() {
                return Some(task);
            }
            queue = self
                .ready
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A worker: polls tasks until the run is over.
    fn work(&self) {
        while let Some(task) = self.next() {
            self.polls.fetch_add(1, Ordering::Relaxed);
            task.poll();
        }
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        let _guard = lock(&self.queue);
        self.ready.notify_all();
    }
}

/// The number of workers a run starts: `POP_WORKERS`, else the available parallelism.
pub fn workers() -> usize {
    std::env::var(WORKERS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `main` to completion on [`workers`] threads (the calling thread is one of them),
/// then flushes stdout and ends the process with `main`'s exit status. It never returns:
/// after a move to another ISA no native frame of the caller exists to return into, so the
/// application ends from the executor, on whatever ISA it is then.
pub fn run<F>(main: F) -> !
where
    F: Future<Output = i32> + Send + 'static,
{
    if STARTED.swap(true, Ordering::AcqRel) {
        panic!("pop::run: the executor runs already");
    }
    let status = Arc::new(Mutex::new(None::<i32>));
    let out = Arc::clone(&status);
    spawn(async move {
        let code = main.await;
        *lock(&out) = Some(code);
        RUNTIME.finish();
    })
    .detach();
    for i in 1..workers() {
        std::thread::Builder::new()
            .name(format!("pop-worker-{i}"))
            .spawn(|| RUNTIME.work())
            .expect("pop::run: starting a worker thread");
    }
    RUNTIME.work();
    // Not joining the other workers: one may be inside a long poll of a task nobody waits
    // for, and the process ends with the root future's status all the same.
    let code = lock(&status).unwrap_or(101);
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Starts `future` as a task of the running executor; its output comes from the returned
/// handle (a future). Panics if [`run`] has not started.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    assert!(
        STARTED.load(Ordering::Acquire),
        "pop::spawn outside pop::run"
    );
    let slot = Arc::new(Slot {
        value: Mutex::new(None),
        waiter: Mutex::new(None),
    });
    let filled = Arc::clone(&slot);
    RUNTIME.alive.fetch_add(1, Ordering::Relaxed);
    let task = Task::new(Box::pin(async move {
        let value = future.await;
        *lock(&filled.value) = Some(value);
        if let Some(w) = lock(&filled.waiter).take() {
            w.wake();
        }
        RUNTIME.alive.fetch_sub(1, Ordering::Relaxed);
    }));
    RUNTIME.schedule(task);
    JoinHandle { slot }
}

/// Counts of the running executor: (tasks alive, polls so far).
pub fn stats() -> (usize, usize) {
    (
        RUNTIME.alive.load(Ordering::Relaxed),
        RUNTIME.polls.load(Ordering::Relaxed),
    )
}

/// Where a task's output waits for its [`JoinHandle`].
struct Slot<T> {
    value: Mutex<Option<T>>,
    waiter: Mutex<Option<Waker>>,
}

/// The output of a task started with [`spawn`]: await it. Dropping it lets the task run on.
pub struct JoinHandle<T> {
    slot: Arc<Slot<T>>,
}

impl<T> JoinHandle<T> {
    /// Lets the task run on without anyone waiting for its output.
    pub fn detach(self) {}
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut waiter = lock(&self.slot.waiter);
        if let Some(v) = lock(&self.slot.value).take() {
            return Poll::Ready(v);
        }
        *waiter = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Gives the other tasks a turn: the task is queued again behind them.
pub async fn yield_now() {
    struct YieldNow(bool);
    impl Future for YieldNow {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.0 {
                return Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
    YieldNow(false).await
}
