//! Error numbers returned (negated) by hypercalls and `sys_*` functions. They are the values of
//! `hermit_abi::errno`, which equal Linux's, so a host `errno` passes through unchanged.

/// Operation not permitted.
pub const EPERM: i32 = 1;
/// No such file or directory.
pub const ENOENT: i32 = 2;
/// No such process (unknown thread id).
pub const ESRCH: i32 = 3;
/// Interrupted call.
pub const EINTR: i32 = 4;
/// I/O error.
pub const EIO: i32 = 5;
/// Bad file descriptor.
pub const EBADF: i32 = 9;
/// Try again (futex value did not match).
pub const EAGAIN: i32 = 11;
/// Out of memory.
pub const ENOMEM: i32 = 12;
/// Permission denied.
pub const EACCES: i32 = 13;
/// Bad address (a guest pointer outside guest memory).
pub const EFAULT: i32 = 14;
/// File exists.
pub const EEXIST: i32 = 17;
/// Not a directory.
pub const ENOTDIR: i32 = 20;
/// Is a directory.
pub const EISDIR: i32 = 21;
/// Invalid argument.
pub const EINVAL: i32 = 22;
/// Too many open files.
pub const EMFILE: i32 = 24;
/// Read-only file system (a write to a mount without `:rw`).
pub const EROFS: i32 = 30;
/// File name too long.
pub const ENAMETOOLONG: i32 = 36;
/// Function not implemented.
pub const ENOSYS: i32 = 38;
/// Exec format error (a node of another instruction set).
pub const ENOEXEC: i32 = 8;
/// No route to host (a node that is down or cannot take a thread).
pub const EHOSTUNREACH: i32 = 113;
/// Directory not empty.
pub const ENOTEMPTY: i32 = 39;
/// Timed out (futex wait).
pub const ETIMEDOUT: i32 = 110;
