//! What this libos does not provide (yet): networking, polling, eventfd, ioctl, and the legacy
//! HermitCore task and queue API. Each fails with `ENOSYS`; the functions that cannot report
//! an error (they return nothing) end the program with a message instead of pretending.

use core::ffi::c_void;

use pop_abi::errno::ENOSYS;

use super::fail;

/// `getaddrinfo` error: system error (see errno).
const EAI_SYSTEM: i32 = 11;

macro_rules! enosys {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        #[unsafe(no_mangle)]
        extern "C" fn $name($(_: $ty),*) -> $ret {
            fail(ENOSYS) as $ret
        }
    )*};
}

enosys! {
    sys_socket(domain: i32, ty: i32, protocol: i32) -> i32;
    sys_accept(s: i32, addr: *mut c_void, addrlen: *mut u32) -> i32;
    sys_bind(s: i32, name: *const c_void, namelen: u32) -> i32;
    sys_connect(s: i32, name: *const c_void, namelen: u32) -> i32;
    sys_listen(s: i32, backlog: i32) -> i32;
    sys_recv(s: i32, buf: *mut u8, len: usize, flags: i32) -> isize;
    sys_recvfrom(s: i32, buf: *mut u8, len: usize, flags: i32, addr: *mut c_void, addrlen: *mut u32) -> isize;
    sys_send(s: i32, buf: *const c_void, len: usize, flags: i32) -> isize;
    sys_sendto(s: i32, buf: *const c_void, len: usize, flags: i32, to: *const c_void, tolen: u32) -> isize;
    sys_shutdown(s: i32, how: i32) -> i32;
    sys_shutdown_socket(s: i32, how: i32) -> i32;
    sys_getpeername(s: i32, name: *mut c_void, namelen: *mut u32) -> i32;
    sys_getsockname(s: i32, name: *mut c_void, namelen: *mut u32) -> i32;
    sys_getsockopt(s: i32, level: i32, optname: i32, optval: *mut c_void, optlen: *mut u32) -> i32;
    sys_setsockopt(s: i32, level: i32, optname: i32, optval: *const c_void, optlen: u32) -> i32;
    sys_getaddrbyname(name: *const u8, inaddr: *mut u8, len: usize) -> i32;
    sys_network_init() -> i32;
    sys_ioctl(s: i32, cmd: i32, argp: *mut c_void) -> i32;
    sys_eventfd(initval: u64, flags: i16) -> i32;
    sys_poll(fds: *mut c_void, nfds: usize, timeout: i32) -> i32;
    sys_notify(id: usize, count: i32) -> i32;
    sys_add_queue(id: usize, timeout_ns: i64) -> i32;
    sys_wait(id: usize) -> i32;
    sys_init_queue(id: usize) -> i32;
    sys_destroy_queue(id: usize) -> i32;
}

#[unsafe(no_mangle)]
extern "C" fn sys_getaddrinfo(
    _node: *const u8,
    _service: *const u8,
    _hints: *const c_void,
    _res: *mut *mut c_void,
) -> i32 {
    fail(ENOSYS);
    EAI_SYSTEM
}

/// Nothing is ever allocated by `sys_getaddrinfo`, so there is nothing to free.
#[unsafe(no_mangle)]
extern "C" fn sys_freeaddrinfo(_ai: *mut c_void) {}

/// Ends the program: a legacy call that cannot report failure was made.
fn unsupported_void(name: &str) -> ! {
    crate::console::write_fmt_stderr(format_args!(
        "libos: {name} is not implemented (function not implemented, os error {ENOSYS})\n"
    ));
    crate::hypercall::abort()
}

#[unsafe(no_mangle)]
extern "C" fn sys_block_current_task() {
    unsupported_void("sys_block_current_task")
}

#[unsafe(no_mangle)]
extern "C" fn sys_block_current_task_with_timeout(_timeout: u64) {
    unsupported_void("sys_block_current_task_with_timeout")
}

#[unsafe(no_mangle)]
extern "C" fn sys_wakeup_taskt(_tid: u32) {
    unsupported_void("sys_wakeup_taskt")
}
