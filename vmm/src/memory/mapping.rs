//! The host mapping of one guest region: anonymous memory at a huge-page-aligned address,
//! with an inaccessible guard on either side.
//!
//! Both matter once transparent huge pages are on. The kernel merges adjacent anonymous
//! mappings with the same flags into one, and a huge page may then straddle where one
//! region ends and the next begins: a write to the first page of one region would fault in
//! (as zeros) the last pages of its neighbour — another region of the VM, or another VM's
//! memory. Pages that appear without being written break what the VMM relies on: an
//! arriving VM's shared region must be empty until userfaultfd catches its faults, and a
//! fault must come for every page not yet placed. Linux before 6.7 does not align large
//! anonymous mappings itself (the boards' 6.1 did exactly this). With the guards no
//! neighbour can merge, and with the alignment a huge page of the region is all its own.

use std::io;

/// Huge page size (2 MiB) the region is aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// An owned reservation: `[base, base + len)` of address space, with the region mapped
/// read-write at `region` inside it and the rest inaccessible. Unmapped when dropped.
#[derive(Debug)]
pub struct Mapping {
    base: usize,
    len: usize,
    region: usize,
}

impl Mapping {
    /// Maps `size` bytes (a multiple of the page size) of private anonymous memory, reserved
    /// without swap (`MAP_NORESERVE`), nothing touched.
    pub fn new(size: usize) -> io::Result<Mapping> {
        // One huge page of slack for the alignment, at least one more on each side as guard.
        let len = size
            .checked_add(3 * HUGE_PAGE)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a new inaccessible mapping at an address of the kernel's choosing.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mapping = Mapping {
            base: base as usize,
            len,
            region: (base as usize + HUGE_PAGE).next_multiple_of(HUGE_PAGE),
        };
        // SAFETY: `[region, region + size)` lies inside the reservation just made, which this
        // value owns and nothing else uses; MAP_FIXED replaces that part of it only.
        let at = unsafe {
            libc::mmap(
                mapping.region as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(mapping)
    }

    /// Host address of the region's first byte (a multiple of 2 MiB).
    pub fn addr(&self) -> *mut u8 {
        self.region as *mut u8
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the reservation this value owns; the guest memory that points into
        // it is dropped before it (see `GuestMem`).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_huge_page_aligned_and_guarded() {
        let a = Mapping::new(6 << 20).unwrap();
        let b = Mapping::new(4 << 20).unwrap();
        for m in [&a, &b] {
            assert_eq!(m.addr() as usize % HUGE_PAGE, 0);
            assert!(m.region - m.base >= HUGE_PAGE);
            // SAFETY: inside the mapping just made, read-write.
            unsafe { m.addr().write(7) };
        }
        // The page below each region belongs to an inaccessible guard mapping.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for m in [&a, &b] {
            let below = m.region - 4096;
            let line = maps
                .lines()
                .find(|l| {
                    let range = l.split(' ').next().unwrap();
                    let (lo, hi) = range.split_once('-').unwrap();
                    let lo = usize::from_str_radix(lo, 16).unwrap();
                    let hi = usize::from_str_radix(hi, 16).unwrap();
                    (lo..hi).contains(&below)
                })
                .unwrap_or_else(|| panic!("no mapping holds {below:#x}"));
            assert!(line.contains(" ---p "), "{line}");
        }
    }
}
