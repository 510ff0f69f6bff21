//! Files and directories under the VM's mounts (`popvmm launch --mount`), served by the VMM.

use pop_abi::errno::EINVAL;
use pop_abi::open_flags::{O_DIRECTORY, O_RDONLY};
use pop_abi::{Hypercall, Stat};

use super::{fail, hc};

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_open(name: *const u8, flags: i32, mode: i32) -> i32 {
    hc(
        Hypercall::Open,
        name as u64,
        flags as u64,
        mode as u64,
        0,
        0,
    ) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_opendir(name: *const u8) -> i32 {
    // SAFETY: forwarded from the caller.
    unsafe { sys_open(name, O_RDONLY | O_DIRECTORY, 0) }
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_unlink(name: *const u8) -> i32 {
    hc(Hypercall::Unlink, name as u64, 0, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_rmdir(name: *const u8) -> i32 {
    hc(Hypercall::Rmdir, name as u64, 0, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_mkdir(name: *const u8, mode: u32) -> i32 {
    hc(Hypercall::Mkdir, name as u64, u64::from(mode), 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_stat(name: *const u8, stat: *mut Stat) -> i32 {
    hc(Hypercall::Stat, name as u64, stat as u64, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_lstat(name: *const u8, stat: *mut Stat) -> i32 {
    hc(Hypercall::Lstat, name as u64, stat as u64, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_fstat(fd: i32, stat: *mut Stat) -> i32 {
    hc(Hypercall::Fstat, fd as u64, stat as u64, 0, 0, 0) as i32
}

#[unsafe(no_mangle)]
unsafe extern "C" fn sys_getdents64(fd: i32, dirp: *mut u8, count: usize) -> i64 {
    if dirp.is_null() {
        return fail(EINVAL);
    }
    hc(
        Hypercall::Getdents64,
        fd as u64,
        dirp as u64,
        count as u64,
        0,
        0,
    )
}
