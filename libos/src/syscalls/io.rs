//! File descriptors: reads and writes on stdio and on files under mounts, served by the VMM.

use pop_abi::Hypercall;
use pop_abi::errno::{EINVAL, ENOSYS};

use super::{fail, hc};

/// `struct iovec`.
#[repr(C)]
struct IoVec {
    base: *mut u8,
    len: usize,
}

/// `fcntl` commands.
const F_GETFD: i32 = 1;
const F_SETFD: i32 = 2;
const FD_CLOEXEC: i32 = 1;

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_write(fd: i32, buf: *const u8, len: usize) -> isize {
    hc(Hypercall::Write, fd as u64, buf as u64, len as u64, 0, 0) as isize
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_read(fd: i32, buf: *mut u8, len: usize) -> isize {
    hc(Hypercall::Read, fd as u64, buf as u64, len as u64, 0, 0) as isize
}

/// Runs `op` over each buffer until one comes back short; returns the total or the first
/// error (if nothing was transferred before it).
unsafe fn vectored(
    iov: *const IoVec,
    count: usize,
    mut op: impl FnMut(*mut u8, usize) -> isize,
) -> isize {
    if count > 1024 || (iov.is_null() && count > 0) {
        return fail(EINVAL) as isize;
    }
    let mut total: isize = 0;
    for i in 0..count {
        // SAFETY: the caller passes `count` valid iovecs.
        let v = unsafe { &*iov.add(i) };
        if v.len == 0 {
            continue;
        }
        let n = op(v.base, v.len);
        if n < 0 {
            return if total > 0 { total } else { n };
        }
        total += n;
        if (n as usize) < v.len {
            break;
        }
    }
    total
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_writev(fd: i32, iov: *const IoVec, count: usize) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe { vectored(iov, count, |buf, len| sys_write(fd, buf, len)) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_readv(fd: i32, iov: *const IoVec, count: usize) -> isize {
    // SAFETY: forwarded from the caller.
    unsafe { vectored(iov, count, |buf, len| sys_read(fd, buf, len)) }
}

#[unsafe(no_mangle)]
extern "C" fn sys_close(fd: i32) -> i32 {
    hc(Hypercall::Close, fd as u64, 0, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
extern "C" fn sys_dup(fd: i32) -> i32 {
    hc(Hypercall::Dup, fd as u64, 0, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
extern "C" fn sys_lseek(fd: i32, offset: isize, whence: i32) -> isize {
    hc(
        Hypercall::Lseek,
        fd as u64,
        offset as u64,
        whence as u64,
        0,
        0,
    ) as isize
}

/// Only the close-on-exec flag exists (and means nothing without exec); status flags
/// cannot be changed.
#[unsafe(no_mangle)]
extern "C" fn sys_fcntl(_fd: i32, cmd: i32, arg: i32) -> i32 {
    match cmd {
        F_GETFD => FD_CLOEXEC,
        F_SETFD if arg & !FD_CLOEXEC == 0 => 0,
        F_SETFD => fail(EINVAL) as i32,
        _ => fail(ENOSYS) as i32,
    }
}
