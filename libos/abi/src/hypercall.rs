//! Hypercalls: how the libos asks the VMM for what only the host can do.
//!
//! # Calling convention
//! A hypercall has a number ([`Hypercall`]), up to five 64-bit arguments and one signed 64-bit
//! result; a negative result is a negated [`crate::errno`] value. Pointers are guest addresses
//! (equal to guest physical addresses); the VMM checks every one against guest memory and
//! answers `-EFAULT` for a bad one.
//!
//! A hypercall is a 64-bit store to the hypercall page, at
//! [`crate::layout::HYPERCALL_MMIO_ADDR`] + 8 * number. No memory backs that page, so KVM
//! hands the store to the VMM as an MMIO exit (on every host: hardware-assisted KVM and
//! software-virtualised ones such as PVM, where port I/O from user mode is not available).
//! The stored value is ignored.
//!
//! * **x86-64**: the application (libos included) runs in ring 3 (see [`crate::layout::gdt`]);
//!   arguments in `rdi, rsi, rdx, r10, r8` (Linux's system call order); the result comes back
//!   in `rax`. Every other register is preserved.
//! * **aarch64**: the stored value is the guest address of a [`HypercallBlock`] holding the
//!   arguments; the VMM writes the result into the block before the guest resumes. (Reading
//!   registers costs an ioctl each on aarch64 KVM; the store's value comes with the exit.)
//!
//! Calls marked "does not return" end the vCPU's thread (or the whole VM).

/// Number of hypercall slots in the hypercall page (one 8-byte slot each).
pub const SLOTS: u16 = 0x200;

/// aarch64: the arguments and result of one hypercall, in guest memory (see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallBlock {
    /// The five arguments, in order.
    pub args: [u64; 5],
    /// The result, written by the VMM.
    pub result: i64,
}

/// Sentinel timeout meaning "wait forever" for [`Hypercall::FutexWait`].
pub const NO_TIMEOUT: u64 = u64::MAX;

/// [`Hypercall::Migrate`] flag: the thread asks from a call boundary, where its
/// floating-point and vector registers are dead (its caller saved what it needs, as the C
/// calling convention has it) and it restores its floating-point control words (x86-64:
/// MXCSR and the x87 control word) itself once it runs again. Those registers do not travel
/// with it, and its counter comes as the hypercall's third argument: the thread's state then
/// costs the VMM no vCPU ioctl at the source.
pub const MIGRATE_AT_CALL: u64 = 1;

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
    /// [`crate::dirent`] records (then 0); `-EINVAL` if `len` is too small for all of them.
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
    /// `thread_exit(done)`: ends the calling thread and frees its vCPU. If `done` is not 0, the
    /// VMM then stores 1 in the 32-bit word at `done` and wakes every futex waiter on it, so
    /// that joiners can wait on that word without a [`Hypercall::Join`]. Does not return.
    ThreadExit = 26,
    /// `entropy(buf, len) -> len`: fills `buf` with random bytes from the host.
    Entropy = 27,
    /// `set_thread_pointer(tp) -> 0`: sets the calling vCPU's thread pointer (x86-64:
    /// `FS.base`, which ring 3 cannot write itself without `FSGSBASE`).
    SetThreadPointer = 28,
    /// `nodes(buf, max) -> count`: the cluster's nodes as [`crate::NodeEntry`]s, at most `max`
    /// of them written at `buf`; returns how many there are (a VM alone: one, itself).
    Nodes = 29,
    /// `fault(frame)`: the guest took an exception it cannot handle; `frame` points at the
    /// saved registers (x86-64: [`crate::X86FaultFrame`]; aarch64: [`crate::Aarch64FaultFrame`]). The VMM reports it and ends the VM
    /// with [`crate::EXIT_FAULT`]. Does not return.
    Fault = 30,
    /// `migrate(node, flags, counter) -> 0`: moves the calling thread to node `node` of the
    /// cluster and returns there (to its own node: at once). `-EINVAL` for a node the cluster
    /// does not have, `-EHOSTUNREACH` for one that is down or cannot take it, `-ENOEXEC` for a
    /// node of another ISA, `-ENOSYS` for a VM not in a cluster; on an error the thread goes
    /// on where it was. With [`MIGRATE_AT_CALL`] in `flags` the thread asks from a call
    /// boundary and `counter` is its counter (x86-64: the TSC) read just before; the VMM then
    /// leaves its floating-point and vector registers where they are (see the flag).
    Migrate = 31,
}

impl Hypercall {
    /// All hypercalls, for dispatch tables and tests.
    pub const ALL: [Hypercall; 27] = [
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
        Hypercall::SetThreadPointer,
        Hypercall::Nodes,
        Hypercall::Fault,
        Hypercall::Migrate,
    ];

    /// The hypercall with number `nr`, if there is one.
    pub fn from_number(nr: u16) -> Option<Hypercall> {
        Self::ALL.iter().copied().find(|h| *h as u16 == nr)
    }

    /// The guest address a store to which issues this hypercall.
    pub const fn address(self) -> u64 {
        crate::layout::HYPERCALL_MMIO_ADDR + 8 * self as u64
    }

    /// The hypercall a store to guest physical `addr` issues, if any.
    pub fn from_address(addr: u64) -> Option<Hypercall> {
        let offset = addr.checked_sub(crate::layout::HYPERCALL_MMIO_ADDR)?;
        if offset % 8 != 0 || offset / 8 >= u64::from(SLOTS) {
            return None;
        }
        Self::from_number((offset / 8) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_fit_the_port_range() {
        for h in Hypercall::ALL {
            assert_eq!(Hypercall::from_number(h as u16), Some(h));
            assert!((h as u16) < SLOTS);
            assert_eq!(Hypercall::from_address(h.address()), Some(h));
        }
        assert_eq!(
            Hypercall::from_address(Hypercall::Write.address() + 1),
            None
        );
        assert_eq!(Hypercall::from_address(0x1000), None);
        assert_eq!(Hypercall::from_number(0), None);
        assert_eq!(Hypercall::from_number(999), None);
    }
}
