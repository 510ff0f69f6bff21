//! Faults and unimplemented system calls, to check how popvmm reports them.

/// Reads through a null pointer.
pub fn null() {
    let value = crash_here();
    println!("null read returned {value}?!");
}

/// The function a fault backtrace must name.
#[inline(never)]
fn crash_here() -> u64 {
    // SAFETY: none: reading address 0 is the point. It faults (SIGSEGV natively, a page
    // fault reported by popvmm in a VM) before any value is produced.
    unsafe { std::ptr::read_volatile(std::ptr::null::<u64>()) }
}

/// Executes an instruction that is undefined on purpose.
pub fn invalid_instruction() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: none needed: `ud2` raises #UD and never returns.
    unsafe {
        core::arch::asm!("ud2", options(noreturn))
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: none needed: `udf` raises an undefined-instruction exception.
    unsafe {
        core::arch::asm!("udf #0", options(noreturn))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    std::process::abort()
}

/// Binds a TCP socket: the libos has no network yet, so under popvmm this reports the
/// error of an unimplemented `sys_*` (natively the bind succeeds).
pub fn enosys() {
    match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(_) => println!("enosys: bind succeeded"),
        Err(e) => println!(
            "enosys: {:?} os error {}",
            e.kind(),
            e.raw_os_error().unwrap_or(0)
        ),
    }
}
