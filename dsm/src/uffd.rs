//! userfaultfd(2) over a range of the VMM's guest-memory mapping. In MISSING mode (post-copy)
//! a page the guest or the VMM touches before it arrived blocks the toucher until
//! [`Uffd::copy`] fills it, or [`Uffd::move_in`] moves it in from a [`Staging`] block. With
//! write-protect mode too ([`Uffd::register_coherent`], for the DSM) a read copy is placed
//! write-protected ([`Uffd::copy_protected`]), a write to it faults until
//! [`Uffd::write_protect`] lifts the protection, and [`Uffd::drop_pages`] invalidates pages
//! (the next touch faults as missing); [`Uffd::next_event`] says which kind a fault is. A
//! kernel without write-protect for this memory (arm64 before Linux 6.10) registers missing
//! mode only ([`Uffd::can_protect`]); then [`Uffd::take_out`] takes pages away atomically
//! (`mremap` with `MREMAP_DONTUNMAP`, Linux 5.7), which is what a recall needs. The
//! `userfaultfd` crate's `-sys` part is not in this machine's crate cache, so the few ioctls
//! are declared here.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const UFFD_API: u64 = 0xaa;
// `ioctl`'s request is a `c_ulong` with glibc and a `c_int` with musl (`libc::Ioctl`): the
// values are the kernel's 32-bit request numbers either way.
const UFFDIO_API: libc::Ioctl = 0xc018_aa3f_u32 as libc::Ioctl;
const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00_u32 as libc::Ioctl;
const UFFDIO_UNREGISTER: libc::Ioctl = 0x8010_aa01_u32 as libc::Ioctl;
const UFFDIO_COPY: libc::Ioctl = 0xc028_aa03_u32 as libc::Ioctl;
const UFFDIO_MOVE: libc::Ioctl = 0xc028_aa05_u32 as libc::Ioctl;
const UFFDIO_WRITEPROTECT: libc::Ioctl = 0xc018_aa06_u32 as libc::Ioctl;
const UFFDIO_WAKE: libc::Ioctl = 0x8010_aa02_u32 as libc::Ioctl;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
const UFFD_PAGEFAULT_FLAG_WP: u64 = 2;
/// `UFFDIO_MOVE` (Linux 6.8): move pages between two mappings of this process, no copy.
const UFFD_FEATURE_MOVE: u64 = 1 << 16;
const UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES: u64 = 1 << 1;
/// `mremap` flag (Linux 5.7): move the pages, keep the old mapping (its range reads as
/// missing afterwards).
const MREMAP_DONTUNMAP: libc::c_int = 4;
/// Huge page size (x86-64 and aarch64 with 4 KiB pages).
pub const HUGE_PAGE: u64 = 2 << 20;
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
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// A fault the kernel reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The faulting address (not rounded).
    pub addr: u64,
    /// The access was a write.
    pub write: bool,
    /// A write to a write-protected page (else: a missing page).
    pub protected: bool,
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
    /// The kernel offers `UFFDIO_MOVE`.
    can_move: bool,
    /// The range is registered for write-protect faults too.
    can_protect: bool,
    /// Where [`Uffd::take_out`] moves pages to, made at its first use.
    scratch: std::sync::Mutex<Option<Staging>>,
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
        Self::register_modes(start, len, UFFDIO_REGISTER_MODE_MISSING)
    }

    /// Registers `[start, start + len)` (private anonymous, page-aligned) for missing-page
    /// faults and for writes to write-protected pages: what the DSM needs to hold pages
    /// Shared (read-only) or Modified. A kernel that cannot write-protect this memory (it
    /// refuses the mode) gets missing mode only: see [`Uffd::can_protect`].
    pub fn register_coherent(start: u64, len: u64) -> std::io::Result<Uffd> {
        match Self::register_modes(
            start,
            len,
            UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Self::register_modes(start, len, UFFDIO_REGISTER_MODE_MISSING)
            }
            other => other,
        }
    }

    fn register_modes(start: u64, len: u64, mode: u64) -> std::io::Result<Uffd> {
        // Asks for `UFFDIO_MOVE`; a kernel without it refuses the feature (and that fd).
        let (fd, can_move) = match Self::open(UFFD_FEATURE_MOVE) {
            Ok(fd) => (fd, true),
            Err(_) => (Self::open(0)?, false),
        };
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a pointer to a live `uffdio_register`; the range is
        // the caller's mapping.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) })?;
        Ok(Uffd {
            fd,
            start,
            len,
            can_move,
            can_protect: mode & UFFDIO_REGISTER_MODE_WP != 0,
            scratch: std::sync::Mutex::new(None),
        })
    }

    /// Whether pages can be write-protected ([`Uffd::copy_protected`],
    /// [`Uffd::write_protect`]): the range was registered for write-protect faults.
    pub fn can_protect(&self) -> bool {
        self.can_protect
    }

    /// Takes the pages of `[start, start + into.len())` (page-aligned, in the range) away
    /// atomically, their contents into `into` (a page that held nothing gives zeros): no
    /// write by anyone can land after its page was taken, and each page reads as missing
    /// afterwards (the next touch faults). What a recall needs where pages cannot be
    /// write-protected first.
    pub fn take_out(&self, start: u64, into: &mut [u8]) -> std::io::Result<()> {
        let len = into.len() as u64;
        self.check_range(start, len)?;
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if scratch.as_ref().is_none_or(|s| s.len < len) {
            *scratch = Some(Staging::new(len.next_multiple_of(HUGE_PAGE))?);
        }
        let area = scratch.as_mut().expect("made above");
        // SAFETY: the source is `len` bytes of the registered range (checked), private
        // anonymous memory; the target is the start of the scratch area, this value's own
        // mapping (MREMAP_FIXED replaces that part of it). With MREMAP_DONTUNMAP the source
        // mapping stays, registered, and its pages move: it reads as missing afterwards.
        let moved = unsafe {
            libc::mremap(
                start as *mut libc::c_void,
                len as usize,
                len as usize,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED | MREMAP_DONTUNMAP,
                area.addr as *mut libc::c_void,
            )
        };
        if moved == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        into.copy_from_slice(&area.bytes()[..len as usize]);
        // The scratch pages go (the area stays mapped for the next time).
        area.clear()
    }

    /// A new userfaultfd with `features` enabled.
    fn open(features: u64) -> std::io::Result<OwnedFd> {
        // Non-blocking: a fault that `poll` reported may be resolved (by a pushed page) before
        // it is read, and a blocking read would then wait for the next fault, which after
        // `unregister` never comes.
        // SAFETY: a plain system call with flags; it returns a new fd or -1.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) }
                as i32;
        check(raw)?;
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a pointer to a live `uffdio_api`.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) })?;
        Ok(fd)
    }

    /// Fills the missing pages of `[dst, dst + src.len())` (page-aligned, in the range) with
    /// the pages of `src` (this process's private anonymous memory, page-aligned) at the same
    /// offsets, and wakes whoever waits on them. With `UFFDIO_MOVE` the pages move without a
    /// copy (a whole huge page at once where both sides are aligned) and `src` is left empty;
    /// pages `src` does not have stay missing. Without it, the pages at `present` offsets are
    /// copied. Pages already present at `dst` are left alone. Returns whether `src` still
    /// holds pages (left behind, or copied).
    pub fn move_in(&self, dst: u64, src: &mut [u8], present: &[u64]) -> std::io::Result<bool> {
        let len = src.len() as u64;
        if !len.is_multiple_of(4096)
            || !dst.is_multiple_of(4096)
            || !(src.as_ptr() as u64).is_multiple_of(4096)
            || dst < self.start
            || dst + len > self.start + self.len
            || present.iter().any(|&o| o + 4096 > len)
        {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        if !self.can_move {
            for &offset in present {
                self.copy_run(dst + offset, &src[offset as usize..][..4096])?;
            }
            return Ok(true);
        }
        let mut done = 0;
        let mut left_behind = false;
        while done < len {
            let mut m = UffdioMove {
                dst: dst + done,
                src: src.as_ptr() as u64 + done,
                len: len - done,
                mode: UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
                moved: 0,
            };
            // SAFETY: UFFDIO_MOVE takes a pointer to a live `uffdio_move`; `src` is the rest
            // of `src` (private anonymous memory, borrowed mutably: nothing else accesses it)
            // and `dst` that many bytes of the registered range.
            let r = check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_MOVE, &mut m) });
            let moved = u64::try_from(m.moved).unwrap_or(0);
            match r {
                Ok(()) => break,
                // A page that is there already: it stays; the page in `src` is left behind.
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    left_behind = true;
                    done += moved + 4096;
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => done += moved,
                Err(e) => return Err(e),
            }
        }
        Ok(left_behind)
    }

    /// A huge page of fresh memory registered with this userfaultfd (missing faults), for
    /// [`Uffd::move_out`]: pages moved there have left the region and are read there. (Its
    /// registration ends with its mapping.)
    pub fn out_area(&self) -> std::io::Result<Staging> {
        let area = Staging::new(HUGE_PAGE)?;
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: area.addr,
                len: area.len,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a pointer to a live `uffdio_register`; the range is
        // the area's own mapping, which nothing else uses.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) })?;
        Ok(area)
    }

    /// Moves the huge page at `src` (in the registered range, aligned) into `area` (from
    /// [`Uffd::out_area`], empty) without a copy: afterwards it reads as missing at `src`
    /// and its contents are in `area`. All or nothing: `Ok(false)` if not every page could
    /// move (what moved is moved back; the caller write-protects it again if it was).
    pub fn move_out(&self, src: u64, area: &mut Staging) -> std::io::Result<bool> {
        let len = area.len;
        if !self.can_move
            || !src.is_multiple_of(HUGE_PAGE)
            || src < self.start
            || src + len > self.start + self.len
        {
            return Ok(false);
        }
        let mut done = 0;
        while done < len {
            let mut m = UffdioMove {
                dst: area.addr + done,
                src: src + done,
                len: len - done,
                mode: 0,
                moved: 0,
            };
            // SAFETY: UFFDIO_MOVE takes a pointer to a live `uffdio_move`; `src` is part of
            // the registered range whose pages the caller gives up, `dst` the caller's empty
            // area, registered with this userfaultfd.
            let r = check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_MOVE, &mut m) });
            done += u64::try_from(m.moved).unwrap_or(0);
            match r {
                Ok(()) => return Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                Err(_) => break,
            }
        }
        if done > 0 {
            let mut back = UffdioMove {
                dst: src,
                src: area.addr,
                len: done,
                mode: UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES,
                moved: 0,
            };
            // SAFETY: as above, the other way: the pages just moved go back where they were.
            check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_MOVE, &mut back) })?;
        }
        Ok(false)
    }

    /// Whether [`Uffd::move_in`] moves pages (a whole huge page at once) rather than copying.
    pub fn can_move(&self) -> bool {
        self.can_move
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
        self.copy_mode(dst, pages, 0)
    }

    /// [`Uffd::copy`] for a read copy (a range registered with
    /// [`Uffd::register_coherent`]): the page is placed write-protected, so a write to it
    /// faults.
    pub fn copy_protected(&self, dst: u64, page: &[u8]) -> std::io::Result<()> {
        self.copy_mode(dst, page, UFFDIO_COPY_MODE_WP)
    }

    /// Write-protects (`protect`) or unprotects `[start, start + len)` (page-aligned, in the
    /// range; registered with [`Uffd::register_coherent`]); unprotecting wakes the writers
    /// waiting on those pages.
    pub fn write_protect(&self, start: u64, len: u64, protect: bool) -> std::io::Result<()> {
        self.check_range(start, len)?;
        let mut wp = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode: if protect {
                UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a pointer to a live `uffdio_writeprotect`; the
        // range is in the registered range (checked).
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut wp) })
    }

    /// Wakes whoever waits on a fault in `[start, start + len)` (page-aligned, in the range)
    /// without placing anything: they retry their access (and fault again if it still
    /// cannot go ahead).
    pub fn wake(&self, start: u64, len: u64) -> std::io::Result<()> {
        self.check_range(start, len)?;
        let mut range = UffdioRange { start, len };
        // SAFETY: UFFDIO_WAKE takes a pointer to a live `uffdio_range` in the registered range.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &mut range) })
    }

    /// Invalidates `[start, start + len)` (page-aligned, in the range): the pages are dropped
    /// and the next touch of each faults as missing. Each call makes KVM flush the VM's TLB
    /// (its MMU notifier), so callers batch.
    pub fn drop_pages(&self, start: u64, len: u64) -> std::io::Result<()> {
        self.check_range(start, len)?;
        // SAFETY: MADV_DONTNEED on part of the registered range, which is this process's own
        // private anonymous mapping: its pages read as missing afterwards, nothing else
        // changes.
        check(unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                len as usize,
                libc::MADV_DONTNEED,
            )
        })
    }

    fn check_range(&self, start: u64, len: u64) -> std::io::Result<()> {
        if len == 0
            || !len.is_multiple_of(4096)
            || !start.is_multiple_of(4096)
            || start < self.start
            || start + len > self.start + self.len
        {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    fn copy_mode(&self, dst: u64, pages: &[u8], mode: u64) -> std::io::Result<()> {
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
                mode,
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
        Ok(self.next_event(timeout_ms)?.map(|f| f.addr))
    }

    /// The next fault, waiting at most `timeout_ms`; `None` when there is none.
    pub fn next_event(&self, timeout_ms: i32) -> std::io::Result<Option<Fault>> {
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
        let word = |at: usize| u64::from_le_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
        let flags = word(8);
        Ok(Some(Fault {
            addr: word(16),
            write: flags & UFFD_PAGEFAULT_FLAG_WRITE != 0,
            protected: flags & UFFD_PAGEFAULT_FLAG_WP != 0,
        }))
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

/// Which pages of `[start, start + len)` (page-aligned, this process's memory) hold data: in
/// memory or swapped out (from `/proc/self/pagemap`). A page that holds none reads as zeros
/// and, in a registered range, faults as missing.
pub fn resident_pages(start: u64, len: u64) -> std::io::Result<Vec<bool>> {
    use std::io::{Read, Seek, SeekFrom};
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    let pages = (len / 4096) as usize;
    let mut file = std::fs::File::open("/proc/self/pagemap")?;
    file.seek(SeekFrom::Start(start / 4096 * 8))?;
    let mut out = Vec::with_capacity(pages);
    let mut buf = vec![0u8; 8 * 4096];
    while out.len() < pages {
        let want = (pages - out.len()).min(4096) * 8;
        file.read_exact(&mut buf[..want])?;
        out.extend(buf[..want].chunks_exact(8).map(|e| {
            let entry = u64::from_le_bytes(e.try_into().expect("8 bytes"));
            entry & (PRESENT | SWAPPED) != 0
        }));
    }
    Ok(out)
}

/// Replaces `[start, start + len)` (page-aligned) of this process's private anonymous
/// read-write memory with fresh memory of the same kind: every page reads as zero, and the
/// page tables under it are gone too (dropping pages keeps them), so that whole huge pages
/// can be moved in ([`Uffd::move_in`]); transparent huge pages are preferred. A range
/// registered with userfaultfd is no longer registered afterwards.
///
/// # Safety
///
/// The range must be private anonymous read-write memory that this process owns and that
/// nothing reads or writes meanwhile (its contents are dropped; the mapping stays valid).
pub unsafe fn replace_with_fresh(start: u64, len: u64) -> std::io::Result<()> {
    if !start.is_multiple_of(4096) || !len.is_multiple_of(4096) || len == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the caller's range is its own private anonymous read-write memory; a fixed
    // mapping of the same kind replaces it atomically (no gap another mapping could take).
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: MADV_HUGEPAGE changes no contents or permissions; only a hint.
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            len as usize,
            libc::MADV_HUGEPAGE,
        )
    };
    Ok(())
}

/// A private anonymous mapping aligned to [`HUGE_PAGE`], preferring transparent huge pages:
/// where pushed pages are read and checked before [`Uffd::move_in`] moves them into a VM.
#[derive(Debug)]
pub struct Staging {
    addr: u64,
    len: u64,
    /// The whole mapping (`addr` is the first huge-page boundary in it).
    map: (u64, u64),
}

impl Staging {
    /// Maps `len` bytes (a multiple of [`HUGE_PAGE`]).
    pub fn new(len: u64) -> std::io::Result<Staging> {
        let map_len = len + HUGE_PAGE;
        // SAFETY: a new private anonymous mapping at an address of the kernel's choosing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let addr = (p as u64).next_multiple_of(HUGE_PAGE);
        // SAFETY: MADV_HUGEPAGE changes no contents or permissions of this new mapping; it is
        // only a hint (an error, e.g. no THP, is ignored).
        unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_HUGEPAGE) };
        Ok(Staging {
            addr,
            len,
            map: (p as u64, map_len),
        })
    }

    /// The staging bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `[addr, addr + len)` lies in the live mapping this value owns, and the
        // mutable borrow of `self` makes the slice the only access to it.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len as usize) }
    }

    /// Empties it (every page reads as zero again).
    pub fn clear(&mut self) -> std::io::Result<()> {
        // SAFETY: drops the pages of this value's own mapping.
        check(unsafe {
            libc::madvise(
                self.addr as *mut libc::c_void,
                self.len as usize,
                libc::MADV_DONTNEED,
            )
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping this value owns; no slice of it outlives `self`.
        unsafe { libc::munmap(self.map.0 as *mut libc::c_void, self.map.1 as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A huge-page-aligned mapping of `len` bytes registered for missing faults.
    fn registered(len: u64) -> (Staging, Uffd) {
        let target = Staging::new(len).unwrap();
        let uffd = Uffd::register(target.addr, len).unwrap();
        (target, uffd)
    }

    #[test]
    fn staged_pages_move_in_and_present_pages_stay() {
        let (target, uffd) = registered(2 * HUGE_PAGE);
        assert!(uffd.can_move, "this kernel has UFFDIO_MOVE (Linux 6.8+)");
        staged_pages_arrive(target, uffd);
    }

    #[test]
    fn without_uffdio_move_staged_pages_are_copied() {
        let (target, mut uffd) = registered(2 * HUGE_PAGE);
        uffd.can_move = false;
        staged_pages_arrive(target, uffd);
    }

    fn staged_pages_arrive(mut target: Staging, uffd: Uffd) {
        // A page the guest fetched before the push: it must survive.
        uffd.copy(target.addr + 3 * 4096, &[7; 4096]).unwrap();
        let mut staging = Staging::new(HUGE_PAGE).unwrap();
        let present: Vec<u64> = [0u64, 3, 4, 511].iter().map(|i| i * 4096).collect();
        for &o in &present {
            staging.bytes()[o as usize..][..4096].fill((o / 4096 % 200) as u8 + 1);
        }
        if uffd
            .move_in(target.addr, staging.bytes(), &present)
            .unwrap()
        {
            staging.clear().unwrap();
        }
        let t = target.bytes();
        assert_eq!(t[0], 1);
        assert_eq!(t[3 * 4096], 7, "a present page was overwritten");
        assert_eq!(t[4 * 4096], 5);
        assert_eq!(t[511 * 4096 + 4095], (511 % 200) as u8 + 1);
        assert!(
            staging.bytes().iter().all(|&b| b == 0),
            "staging not emptied"
        );
        // The next block, from the now empty staging again.
        staging.bytes()[..4096].fill(9);
        uffd.move_in(target.addr + HUGE_PAGE, staging.bytes(), &[0])
            .unwrap();
        assert_eq!(target.bytes()[HUGE_PAGE as usize], 9);
        // Outside the registered range, or a present page outside the source.
        let mut big = Staging::new(2 * HUGE_PAGE).unwrap();
        let outside = target.addr + 2 * HUGE_PAGE;
        assert!(
            uffd.move_in(outside, &mut staging.bytes()[..4096], &[0])
                .is_err()
        );
        assert!(uffd.move_in(target.addr + 4096, big.bytes(), &[0]).is_err());
        assert!(
            uffd.move_in(target.addr, &mut staging.bytes()[..4096], &[4096])
                .is_err()
        );
        uffd.unregister().unwrap();
    }

    /// Shared and Modified as the DSM will use them, on a real userfaultfd: a read of a
    /// missing page faults as missing and gets a write-protected copy; a write to it faults as
    /// protected until the protection is lifted; protecting it again and dropping it makes
    /// the next read fault as missing again.
    #[test]
    fn pages_go_shared_modified_and_invalid() {
        use std::sync::mpsc;
        use std::time::Duration;
        let mut target = Staging::new(HUGE_PAGE).unwrap();
        let base = target.bytes().as_mut_ptr() as u64;
        let uffd = std::sync::Arc::new(Uffd::register_coherent(base, HUGE_PAGE).unwrap());
        let page = base + 5 * 4096;
        let (done_tx, done_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let toucher = {
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                let p = page as *mut u64;
                // SAFETY: `target` lives until the thread is joined; every access faults into
                // the test's handler below until it is allowed.
                unsafe {
                    let first = p.read_volatile();
                    done_tx.send(("read", first)).unwrap();
                    p.write_volatile(first + 1);
                    done_tx.send(("wrote", first + 1)).unwrap();
                    // The third access only once the page was invalidated.
                    go_rx.recv().unwrap();
                    let again = p.read_volatile();
                    done_tx.send(("read again", again)).unwrap();
                }
            })
        };
        // Bounded: a fault that never comes fails the test instead of hanging it.
        let next = |uffd: &Uffd| {
            for _ in 0..10 {
                if let Some(f) = uffd.next_event(1000).unwrap() {
                    return f;
                }
            }
            panic!("no fault came");
        };
        // 1. The read faults as missing; a protected copy (a read copy) answers it.
        let f = next(&uffd);
        assert_eq!((f.addr & !4095, f.write, f.protected), (page, false, false));
        let mut copy = vec![0u8; 4096];
        copy[..8].copy_from_slice(&41u64.to_le_bytes());
        uffd.copy_protected(page, &copy).unwrap();
        assert_eq!(done_rx.recv().unwrap(), ("read", 41));
        // 2. The write faults as protected and waits...
        let f = next(&uffd);
        assert_eq!((f.addr & !4095, f.write, f.protected), (page, true, true));
        assert!(done_rx.recv_timeout(Duration::from_millis(50)).is_err());
        // ...until the page is the writer's (Modified).
        uffd.write_protect(page, 4096, false).unwrap();
        assert_eq!(done_rx.recv().unwrap(), ("wrote", 42));
        // 3. Invalidated (protected first, as a node giving up a page would be, then
        // dropped): the next read faults as missing again.
        uffd.write_protect(page, 4096, true).unwrap();
        uffd.drop_pages(page, 4096).unwrap();
        go_tx.send(()).unwrap();
        let f = next(&uffd);
        assert_eq!((f.addr & !4095, f.write, f.protected), (page, false, false));
        copy[..8].copy_from_slice(&42u64.to_le_bytes());
        uffd.copy_protected(page, &copy).unwrap();
        assert_eq!(done_rx.recv().unwrap(), ("read again", 42));
        toucher.join().unwrap();
        drop(done_tx);
        // Ranges outside the registration are refused.
        assert!(uffd.write_protect(base + HUGE_PAGE, 4096, true).is_err());
        assert!(uffd.drop_pages(base + 1, 4096).is_err());
        uffd.unregister().unwrap();
        let _ = target.bytes()[0];
    }

    /// Where pages cannot be write-protected, a recall takes them out atomically: the
    /// contents come out, and the next touch of each faults as missing (the range stays
    /// registered).
    #[test]
    fn pages_taken_out_come_with_their_contents_and_fault_as_missing_afterwards() {
        let (mut target, uffd) = registered(HUGE_PAGE);
        let base = target.addr;
        uffd.copy_run(base + 4096, &[7u8; 2 * 4096]).unwrap();
        let mut out = vec![1u8; 3 * 4096];
        uffd.take_out(base, &mut out).unwrap();
        assert!(
            out[..4096].iter().all(|&b| b == 0),
            "a page that held nothing"
        );
        assert!(out[4096..].iter().all(|&b| b == 7));
        let toucher = std::thread::spawn(move || {
            // SAFETY: `target` lives until the thread is joined; the read faults into the
            // handler below.
            unsafe { (base as *const u8).add(4096).read_volatile() }
        });
        let mut fault = None;
        for _ in 0..10 {
            fault = uffd.next_event(1000).unwrap();
            if fault.is_some() {
                break;
            }
        }
        let f = fault.expect("the page taken out faults again");
        assert_eq!((f.addr & !4095, f.protected), (base + 4096, false));
        uffd.copy(base + 4096, &[9u8; 4096]).unwrap();
        assert_eq!(toucher.join().unwrap(), 9);
        assert!(uffd.take_out(base + HUGE_PAGE, &mut out).is_err());
        let _ = target.bytes()[0];
    }
}
