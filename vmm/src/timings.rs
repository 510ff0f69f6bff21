//! Phase timings for `--timings`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When each phase of a launch started and ended.
#[derive(Debug)]
pub struct Timings {
    process_start: Instant,
    kvm: Mutex<Duration>,
    load: Mutex<Duration>,
    boot: Mutex<Option<Instant>>,
    exit: Mutex<Option<Instant>>,
}

impl Timings {
    /// Timings of a process that started at `process_start`.
    pub fn new(process_start: Instant) -> Timings {
        Timings {
            process_start,
            kvm: Mutex::default(),
            load: Mutex::default(),
            boot: Mutex::default(),
            exit: Mutex::default(),
        }
    }

    /// Runs `f`, counting its time as KVM setup.
    pub fn kvm<T>(&self, f: impl FnOnce() -> T) -> T {
        time(&self.kvm, f)
    }

    /// Runs `f`, counting its time as image loading.
    pub fn load<T>(&self, f: impl FnOnce() -> T) -> T {
        time(&self.load, f)
    }

    /// Marks the first `KVM_RUN`.
    pub fn mark_boot(&self) {
        crate::sync::lock(&self.boot).get_or_insert_with(Instant::now);
    }

    /// Marks the end of the guest.
    pub fn mark_exit(&self) {
        crate::sync::lock(&self.exit).get_or_insert_with(Instant::now);
    }

    /// The one-line summary: `popvmm: timings: kvm 0.4 ms, load 0.8 ms, boot-to-exit 2.1 ms,
    /// total 3.5 ms`.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let boot = *crate::sync::lock(&self.boot);
        let exit = *crate::sync::lock(&self.exit);
        let boot_to_exit = match (boot, exit) {
            (Some(b), Some(e)) => e.saturating_duration_since(b),
            _ => Duration::ZERO,
        };
        format!(
            "popvmm: timings: kvm {:.1} ms, load {:.1} ms, boot-to-exit {:.1} ms, total {:.1} ms",
            ms(*crate::sync::lock(&self.kvm)),
            ms(*crate::sync::lock(&self.load)),
            ms(boot_to_exit),
            ms(self.process_start.elapsed()),
        )
    }
}

fn time<T>(total: &Mutex<Duration>, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let result = f();
    *crate::sync::lock(total) += start.elapsed();
    result
}
