//! Thin wrappers around the host system calls that `std` does not offer. Every `unsafe` call
//! into the host C library of this crate (except KVM memory slot registration) lives here.

use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::Once;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// A `File` for one of the process's standard streams, never closed.
fn std_stream(fd: i32) -> ManuallyDrop<File> {
    // SAFETY: fds 0, 1 and 2 stay open for the life of the process (nothing in popvmm closes
    // them), and `ManuallyDrop` makes sure this `File` never closes the descriptor it borrows.
    ManuallyDrop::new(unsafe { File::from_raw_fd(fd) })
}

/// The process's standard input, unbuffered.
pub fn stdin() -> ManuallyDrop<File> {
    std_stream(0)
}

/// The process's standard output, unbuffered.
pub fn stdout() -> ManuallyDrop<File> {
    std_stream(1)
}

/// The process's standard error, unbuffered.
pub fn stderr() -> ManuallyDrop<File> {
    std_stream(2)
}

/// Result of [`futex_wait`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FutexWait {
    /// Woken (or spuriously returned).
    Woken,
    /// The word did not hold the expected value.
    ValueChanged,
    /// The timeout elapsed.
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// `FUTEX_WAIT_PRIVATE` on `word`: sleeps while it holds `expected`, at most `timeout`.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call, `ts_ptr` is null or
    // points at a live timespec; FUTEX_WAIT reads both and writes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if ret == 0 {
        return FutexWait::Woken;
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => FutexWait::ValueChanged,
        Some(libc::ETIMEDOUT) => FutexWait::TimedOut,
        Some(libc::EINTR) => FutexWait::Interrupted,
        _ => FutexWait::Woken,
    }
}

/// `FUTEX_WAKE_PRIVATE` on `word`: wakes up to `count` waiters, returns how many woke.
pub fn futex_wake(word: &AtomicU32, count: i32) -> i64 {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE only uses its address as a key.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if ret < 0 { -i64::from(errno()) } else { ret }
}

/// Fills `buf` with random bytes from the host (`getrandom(2)`); returns how many.
pub fn getrandom(buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let ret = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Reads a host clock in nanoseconds.
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clocks used here always exist.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Host `CLOCK_REALTIME` in nanoseconds.
pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Host `CLOCK_MONOTONIC` in nanoseconds.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The signal used to kick a vCPU thread out of `KVM_RUN` or a blocking system call.
fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_signal: libc::c_int) {}

/// Installs the (empty) handler of the kick signal, without `SA_RESTART`, so that the signal
/// makes blocking calls in the target thread return `EINTR`.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is
        // an `extern "C"` function that does nothing, so it is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// Sends the kick signal to `thread` (see [`install_kick_handler`]).
pub fn kick(thread: std::os::unix::thread::RawPthread) {
    // SAFETY: `thread` comes from a `JoinHandle` that has not been joined yet, so it names a
    // live (or finished but not yet reaped) thread; the signal has a handler installed.
    unsafe { libc::pthread_kill(thread as libc::pthread_t, kick_signal()) };
}

/// Asks the kernel to back the mapping at `[addr, addr + len)` with transparent huge pages
/// where it can (a hint: errors are ignored, e.g. on kernels without THP).
pub fn advise_huge_pages(addr: u64, len: u64) {
    // SAFETY: MADV_HUGEPAGE changes no contents and no permissions; on a range that is not a
    // whole private anonymous mapping the kernel only refuses with an error.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_HUGEPAGE);
    }
}

/// Lets the calling thread, and every thread it starts afterwards, run only on `cpus` (called
/// first thing, before the process has other threads).
pub fn run_on_cpus(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: an all-zero `cpu_set_t` is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cpu` is below the set's size (checked above).
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed; the call only reads it.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// How much freed memory the allocator keeps at the top of its heaps before giving it back
/// to the kernel (see [`keep_freed_memory`]).
#[cfg(target_env = "gnu")]
const KEEP_FREED: libc::c_int = 64 << 20;

/// Tells the C allocator to keep freed memory for reuse instead of giving it back at once,
/// and to serve buffers of up to 64 MiB from its heaps: the buffers of page messages
/// (a few hundred KiB, made and freed many thousand times a second) then reuse memory
/// already there, rather than each costing fresh pages the kernel must zero (and, on a
/// virtual machine whose host reclaims freed memory, fault in again). Called first thing,
/// before the process has other threads. Only glibc has these knobs (musl: nothing done).
pub fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only changes the allocator's tunables; called before any other
    // thread exists, so no allocation runs concurrently.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED);
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP_FREED);
        libc::mallopt(libc::M_TOP_PAD, 4 << 20);
    }
}
