//! Hypercalls: how the libos asks the VMM for what only the host can do.
//!
//! # Calling convention
//! A hypercall has a number ([`Hypercall`]), up to five 64-bit arguments and one signed 64-bit
//! result; a negative result is a negated [`crate::errno`] value. Pointers are guest addresses
//! (equal to guest physical addresses); the VMM checks every one against guest memory and
//! answers `-EFAULT` for a bad one.
//!
//! * **x86-64**: `out dx, eax` with `dx` = [`X86_PORT_BASE`] + number; arguments in
//!   `rdi, rsi, rcx, r8, r9`; the result comes back in `rax`. Every other register is
//!   preserved.
//! * **aarch64**: a 64-bit store of `x0` to [`crate::layout::HYPERCALL_MMIO_ADDR`] + 8 * number
//!   (a page with no memory behind it, so KVM hands the store to the VMM); arguments in
//!   `x0..x4`; the result comes back in `x0`.
//!
//! Calls marked "does not return" end the vCPU's thread (or the whole VM).

/// x86-64: port of hypercall 0; hypercall `n` uses port `X86_PORT_BASE + n`.
pub const X86_PORT_BASE: u16 = 0x500;
/// x86-64: number of ports reserved for hypercalls.
pub const X86_PORT_COUNT: u16 = 0x100;

/// Sentinel timeout meaning "wait forever" for [`Hypercall::FutexWait`].
pub const NO_TIMEOUT: u64 = u64::MAX;

/// Hypercall numbers.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hypercall {
    /// `exit(status)`: ends the VM with `status`. Does not return.
    Exit = 1,
    /// `abort()`: ends the VM with [`crate::EXIT_ABORT`]. Does not return.
    Abort = 2,
    /// `write(fd, buf, len) -> written`. fd 1 and 2 are the VMM's stdout and stderr.
    Write = 3,
    /// `read(fd, buf, len) -> read`. fd 0 is the VMM's stdin.
    Read = 4,
    /// `open(path, flags, mode) -> fd`: `path` a NUL-terminated string (at most 4096 bytes),
    /// `flags` in [`crate::open_flags`]. Only paths under a mount are visible.
    Open = 5,
    /// `close(fd) -> 0`.
    Close = 6,
    /// `lseek(fd, offset, whence) -> new offset`.
    Lseek = 7,
    /// `fstat(fd, stat: *mut Stat) -> 0`.
    Fstat = 8,
    /// `stat(path, stat: *mut Stat) -> 0`, following symbolic links.
    Stat = 9,
    /// `lstat(path, stat: *mut Stat) -> 0`, not following a final symbolic link.
    Lstat = 10,
    /// `getdents64(fd, buf, len) -> bytes`: all entries of the directory at once, as
    /// [`crate::dirent`] records; `-EINVAL` if `len` is too small for all of them.
    Getdents64 = 11,
    /// `mkdir(path, mode) -> 0`.
    Mkdir = 12,
    /// `unlink(path) -> 0`.
    Unlink = 13,
    /// `rmdir(path) -> 0`.
    Rmdir = 14,
    /// `dup(fd) -> new fd`.
    Dup = 15,
    /// `futex_wait(addr, expected, timeout_ns) -> 0`: blocks while the 32-bit word at `addr`
    /// equals `expected`, at most `timeout_ns` (relative; [`NO_TIMEOUT`] for none).
    /// `-EAGAIN` if the word differed, `-ETIMEDOUT` on timeout.
    FutexWait = 20,
    /// `futex_wake(addr, count) -> woken`: wakes up to `count` waiters (`i32::MAX`: all).
    FutexWake = 21,
    /// `sleep(ns) -> 0`.
    Sleep = 22,
    /// `yield() -> 0`.
    Yield = 23,
    /// `spawn(entry, func, arg, stack_top, thread_pointer) -> tid`: starts a thread on a new
    /// vCPU at `entry` with the first two argument registers set to `func` and `arg`, the
    /// stack pointer to `stack_top` and the thread pointer (x86-64: `FS.base`; aarch64:
    /// `TPIDR_EL0`) to `thread_pointer`. `-EAGAIN` when `--max-threads` are running.
    Spawn = 24,
    /// `join(tid) -> 0`: blocks until thread `tid` has exited; `-ESRCH` for an unknown tid.
    Join = 25,
    /// `thread_exit()`: ends the calling thread and frees its vCPU. Does not return.
    ThreadExit = 26,
    /// `entropy(buf, len) -> len`: fills `buf` with random bytes from the host.
    Entropy = 27,
    /// `fault(frame)`: the guest took an exception it cannot handle; `frame` points at the
    /// saved registers (x86-64: [`crate::X86FaultFrame`]). The VMM reports it and ends the VM
    /// with [`crate::EXIT_FAULT`]. Does not return.
    Fault = 30,
}

impl Hypercall {
    /// All hypercalls, for dispatch tables and tests.
    pub const ALL: [Hypercall; 24] = [
        Hypercall::Exit,
        Hypercall::Abort,
        Hypercall::Write,
        Hypercall::Read,
        Hypercall::Open,
        Hypercall::Close,
        Hypercall::Lseek,
        Hypercall::Fstat,
        Hypercall::Stat,
        Hypercall::Lstat,
        Hypercall::Getdents64,
        Hypercall::Mkdir,
        Hypercall::Unlink,
        Hypercall::Rmdir,
        Hypercall::Dup,
        Hypercall::FutexWait,
        Hypercall::FutexWake,
        Hypercall::Sleep,
        Hypercall::Yield,
        Hypercall::Spawn,
        Hypercall::Join,
        Hypercall::ThreadExit,
        Hypercall::Entropy,
        Hypercall::Fault,
    ];

    /// The hypercall with number `nr`, if there is one.
    pub fn from_number(nr: u16) -> Option<Hypercall> {
        Self::ALL.iter().copied().find(|h| *h as u16 == nr)
    }

    /// The x86-64 port that issues this hypercall.
    pub const fn x86_port(self) -> u16 {
        X86_PORT_BASE + self as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_fit_the_port_range() {
        for h in Hypercall::ALL {
            assert_eq!(Hypercall::from_number(h as u16), Some(h));
            assert!((h as u16) < X86_PORT_COUNT);
        }
        assert_eq!(Hypercall::from_number(0), None);
        assert_eq!(Hypercall::from_number(999), None);
    }
}
