//! userfaultfd(2) in MISSING mode over a range of the VMM's guest-memory mapping (post-copy:
//! a page the guest or the VMM touches before it arrived blocks the toucher until
//! [`Uffd::copy`] fills it). The `userfaultfd` crate's `-sys` part is not in this machine's
//! crate cache, so the few ioctls are declared here.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const UFFD_API: u64 = 0xaa;
// `ioctl`'s request is a `c_ulong` with glibc and a `c_int` with musl (`libc::Ioctl`): the
// values are the kernel's 32-bit request numbers either way.
const UFFDIO_API: libc::Ioctl = 0xc018_aa3f_u32 as libc::Ioctl;
const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00_u32 as libc::Ioctl;
const UFFDIO_UNREGISTER: libc::Ioctl = 0x8010_aa01_u32 as libc::Ioctl;
const UFFDIO_COPY: libc::Ioctl = 0xc028_aa03_u32 as libc::Ioctl;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd registered over one range.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    start: u64,
    len: u64,
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// Registers `[start, start + len)` of this process's memory (a private anonymous
    /// mapping, page-aligned) for missing-page faults.
    pub fn register(start: u64, len: u64) -> std::io::Result<Uffd> {
        // SAFETY: a plain system call with flags; it returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) } as i32;
        check(raw)?;
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a pointer to a live `uffdio_api`.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) })?;
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a pointer to a live `uffdio_register`; the range is
        // the caller's mapping.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) })?;
        Ok(Uffd { fd, start, len })
    }

    /// Fills the missing page at `dst` (page-aligned, in the range) with `page` (4 KiB) and
    /// wakes whoever waits on it. A page already present is left alone (not an error).
    pub fn copy(&self, dst: u64, page: &[u8]) -> std::io::Result<()> {
        self.copy_run(dst, page)
    }

    /// Fills the missing pages of `[dst, dst + pages.len())` (page-aligned, in the range) from
    /// `pages` (whole 4 KiB pages) with as few ioctls as it can, and wakes whoever waits on
    /// them. Pages already present are left alone (not an error).
    pub fn copy_run(&self, dst: u64, pages: &[u8]) -> std::io::Result<()> {
        let len = pages.len() as u64;
        if len == 0
            || !len.is_multiple_of(4096)
            || !dst.is_multiple_of(4096)
            || dst < self.start
            || dst + len > self.start + self.len
        {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut done = 0;
        while done < len {
            let mut c = UffdioCopy {
                dst: dst + done,
                src: pages[done as usize..].as_ptr() as u64,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY takes a pointer to a live `uffdio_copy`; `src` is `len -
            // done` bytes of readable memory (the rest of `pages`) and `dst` that many bytes of
            // the registered range.
            let r = check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut c) });
            // `copy` says how much was placed before a stop (or is a negated errno).
            let placed = u64::try_from(c.copy).unwrap_or(0);
            match r {
                Ok(()) => return Ok(()),
                // A page that is there already: skip it, place the rest.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => done += placed + 4096,
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => done += placed,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The next faulting address, waiting at most `timeout_ms`; `None` when there is none.
    pub fn next_fault(&self, timeout_ms: i32) -> std::io::Result<Option<u64>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n <= 0 {
            return Ok(None);
        }
        let mut msg = [0u8; 32];
        // SAFETY: reads at most 32 bytes into `msg` (one `uffd_msg`).
        let r = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), 32) };
        if r != 32 || msg[0] != UFFD_EVENT_PAGEFAULT {
            return Ok(None);
        }
        Ok(Some(u64::from_le_bytes(
            msg[16..24].try_into().expect("8 bytes"),
        )))
    }

    /// Stops catching faults: missing pages become ordinary zero-filled ones.
    pub fn unregister(&self) -> std::io::Result<()> {
        let mut range = UffdioRange {
            start: self.start,
            len: self.len,
        };
        // SAFETY: UFFDIO_UNREGISTER takes a pointer to a live `uffdio_range`.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut range) })
    }
}
