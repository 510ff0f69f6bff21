//! Guest memory: two anonymous mappings (node-private and application-writable), and checked
//! access to them. Every guest pointer the VMM is handed goes through here.

mod mapping;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use pop_abi::layout::SHARED_BASE;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MmapRegion, VolatileMemory,
};

use pop_abi::errno::{EFAULT, EINVAL, ENAMETOOLONG};

/// Failure to set up guest memory.
#[derive(Debug, thiserror::Error)]
#[error("cannot map {size} bytes of guest memory: {source}")]
pub struct MapError {
    size: u64,
    #[source]
    source: std::io::Error,
}

/// One contiguous range of guest memory, as KVM needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// KVM memory slot.
    pub slot: u32,
    /// Guest physical address of the first byte.
    pub guest_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host address of the first byte.
    pub host_addr: u64,
}

/// The KVM slot (and index in [`GuestMem::regions`]) of the shared region.
pub const SHARED_SLOT: u32 = 1;

/// The guest's memory: private `[0, private_size)` and shared
/// `[SHARED_BASE, SHARED_BASE + shared_size)`. Cheap to clone (the mappings are shared).
#[derive(Clone, Debug)]
pub struct GuestMem {
    inner: GuestMemoryMmap,
    private_size: u64,
    shared_size: u64,
    host_dirty: Arc<HostDirty>,
    /// The host mappings `inner` points into (private, shared), unmapped when the last
    /// handle goes (declared after `inner`, so dropped after it); its count is the number
    /// of handles (see [`GuestMem::is_only_handle`]).
    mappings: Arc<[mapping::Mapping; 2]>,
}

/// A set of guest pages (one bit per 4 KiB page of each region).
#[derive(Clone, Debug)]
pub struct PageSet {
    private: Vec<u64>,
    shared: Vec<u64>,
}

impl PageSet {
    /// An empty set for `mem`'s pages.
    pub fn new(mem: &GuestMem) -> PageSet {
        let words = |size: u64| vec![0u64; size.div_ceil(PAGE_SIZE * 64) as usize];
        PageSet {
            private: words(mem.private_size),
            shared: words(mem.shared_size),
        }
    }

    /// Adds the page at guest address `addr` (ignored outside guest memory).
    pub fn insert(&mut self, addr: u64) {
        let (bits, page) = if addr >= SHARED_BASE {
            (&mut self.shared, (addr - SHARED_BASE) / PAGE_SIZE)
        } else {
            (&mut self.private, addr / PAGE_SIZE)
        };
        if let Some(w) = bits.get_mut((page / 64) as usize) {
            *w |= 1 << (page % 64);
        }
    }

    /// Whether the page at `addr` is in the set.
    pub fn contains(&self, addr: u64) -> bool {
        let (bits, page) = if addr >= SHARED_BASE {
            (&self.shared, (addr - SHARED_BASE) / PAGE_SIZE)
        } else {
            (&self.private, addr / PAGE_SIZE)
        };
        bits.get((page / 64) as usize)
            .is_some_and(|w| w & (1 << (page % 64)) != 0)
    }
}

/// Size of the pages dirty tracking counts in.
pub const PAGE_SIZE: u64 = 4096;
/// [`GuestMem::zero_except`] gives runs of at least this many pages back to the kernel
/// instead of clearing them (1 MiB).
const ZERO_BY_RELEASE: u64 = 256;

/// Pages the VMM itself wrote (hypercall results, completion words, per-vCPU data) while
/// tracking is on: KVM's dirty log only sees the guest's own writes.
#[derive(Debug)]
struct HostDirty {
    on: AtomicBool,
    private: Vec<AtomicU64>,
    shared: Vec<AtomicU64>,
}

impl HostDirty {
    fn new(private_size: u64, shared_size: u64) -> HostDirty {
        let words = |size: u64| (0..size.div_ceil(PAGE_SIZE * 64)).map(|_| AtomicU64::new(0));
        HostDirty {
            on: AtomicBool::new(false),
            private: words(private_size).collect(),
            shared: words(shared_size).collect(),
        }
    }
}

impl GuestMem {
    /// Maps both regions (anonymous, `MAP_NORESERVE`; nothing is touched up front).
    pub fn new(private_size: u64, shared_size: u64) -> Result<GuestMem, MapError> {
        let map = |size: u64| {
            mapping::Mapping::new(size as usize).map_err(|source| MapError { size, source })
        };
        let mappings = Arc::new([map(private_size)?, map(shared_size)?]);
        let region = |m: &mapping::Mapping, size: u64, at: u64| {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
            // SAFETY: `m` maps `size` bytes read-write at `m.addr()`, and it outlives the
            // region: both are dropped with the last `GuestMem` handle, the region first
            // (field order), and the region never leaves `GuestMem`.
            unsafe {
                MmapRegion::build_raw(
                    m.addr(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                )
            }
            .map_err(|e| MapError {
                size,
                source: std::io::Error::other(e),
            })
            .map(|r| GuestRegionMmap::new(r, GuestAddress(at)))
        };
        let private = region(&mappings[0], private_size, 0)?;
        let shared = region(&mappings[1], shared_size, SHARED_BASE)?;
        let regions = private.into_iter().chain(shared).collect::<Vec<_>>();
        let inner = GuestMemoryMmap::from_regions(regions).expect("disjoint, non-empty regions");
        Ok(GuestMem {
            inner,
            private_size,
            shared_size,
            host_dirty: Arc::new(HostDirty::new(private_size, shared_size)),
            mappings,
        })
    }

    /// Whether this is the only handle on this memory (no VM, thread or other clone uses it).
    pub fn is_only_handle(&self) -> bool {
        Arc::strong_count(&self.mappings) == 1
    }

    /// Zeroes every page not in `keep`: memory that held another VM, made to read as fresh
    /// memory except where the arriving VM's pages were written.
    ///
    /// # Safety
    ///
    /// Nothing else may access the memory meanwhile (an arriving VM, before it starts).
    pub unsafe fn zero_except(&self, keep: &PageSet) {
        for r in self.regions() {
            let pages = r.size / PAGE_SIZE;
            let mut page = 0;
            while page < pages {
                let addr = r.guest_addr + page * PAGE_SIZE;
                if keep.contains(addr) {
                    page += 1;
                    continue;
                }
                let mut run = 1;
                while page + run < pages && !keep.contains(addr + run * PAGE_SIZE) {
                    run += 1;
                }
                let (start, len) = (r.host_addr + page * PAGE_SIZE, run * PAGE_SIZE);
                // Long runs are given back (they read as zero at their next touch, which a
                // guest's unused memory may never see); short ones are cleared in place.
                // SAFETY: `[start, start + len)` lies in the region's live private mapping,
                // and the caller guarantees nothing else accesses it.
                let released = run >= ZERO_BY_RELEASE
                    && unsafe {
                        libc::madvise(
                            start as *mut libc::c_void,
                            len as usize,
                            libc::MADV_DONTNEED,
                        )
                    } == 0;
                if !released {
                    // SAFETY: as above.
                    unsafe { std::ptr::write_bytes(start as *mut u8, 0, len as usize) };
                }
                page += run;
            }
        }
    }

    /// Size of the shared region (from [`SHARED_BASE`]).
    pub fn shared_size(&self) -> u64 {
        self.shared_size
    }

    /// Starts or stops recording the pages the VMM writes (see [`GuestMem::take_host_dirty`]).
    pub fn track_host_writes(&self, on: bool) {
        self.host_dirty.on.store(on, Ordering::SeqCst);
    }

    fn mark_host_write(&self, addr: u64, len: u64) {
        if !self.host_dirty.on.load(Ordering::Relaxed) || len == 0 {
            return;
        }
        let (bitmap, offset) = if addr < self.private_size {
            (&self.host_dirty.private, addr)
        } else {
            (&self.host_dirty.shared, addr - SHARED_BASE)
        };
        for page in offset / PAGE_SIZE..=(offset + len - 1) / PAGE_SIZE {
            if let Some(word) = bitmap.get((page / 64) as usize) {
                word.fetch_or(1 << (page % 64), Ordering::SeqCst);
            }
        }
    }

    /// The pages the VMM wrote since the last call, as a bitmap per region (private first,
    /// like [`GuestMem::regions`]), one bit per 4 KiB page; clears them.
    pub fn take_host_dirty(&self) -> [Vec<u64>; 2] {
        let take = |v: &Vec<AtomicU64>| v.iter().map(|w| w.swap(0, Ordering::SeqCst)).collect();
        [
            take(&self.host_dirty.private),
            take(&self.host_dirty.shared),
        ]
    }

    /// Size of the private region (from guest address 0).
    pub fn private_size(&self) -> u64 {
        self.private_size
    }

    /// One past the last byte of shared memory.
    pub fn shared_end(&self) -> u64 {
        SHARED_BASE + self.shared_size
    }

    /// The shared region (application-writable memory, the only memory nodes ever share).
    pub fn shared_region(&self) -> RegionInfo {
        self.regions()[SHARED_SLOT as usize]
    }

    /// Both regions, for registering them with KVM: the private one (slot 0), then the
    /// shared one ([`SHARED_SLOT`]).
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.inner
            .iter()
            .enumerate()
            .map(|(slot, region)| RegionInfo {
                slot: slot as u32,
                guest_addr: region.start_addr().0,
                size: region.len(),
                host_addr: region.as_ptr() as u64,
            })
            .collect()
    }

    /// Backs guest memory with transparent huge pages where the kernel can: for memory filled
    /// in bulk (an arriving VM), whose first touches would otherwise fault page by page. Not
    /// for new VMs: a huge page costs its whole 2 MiB at the first touch of a small guest.
    pub fn prefer_huge_pages(&self) {
        for r in self.regions() {
            crate::sys::advise_huge_pages(r.host_addr, r.size);
        }
    }

    /// Whether `[addr, addr + len)` lies inside one region of guest memory.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        if addr < self.private_size {
            end <= self.private_size
        } else {
            addr >= SHARED_BASE && end <= self.shared_end()
        }
    }

    /// Copies `buf.len()` bytes of guest memory at `addr` into `buf`.
    pub fn read_into(&self, addr: u64, buf: &mut [u8]) -> Result<(), i32> {
        if !self.contains(addr, buf.len() as u64) {
            return Err(EFAULT);
        }
        self.inner
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| EFAULT)
    }

    /// Whether the 4 KiB page at `addr` (page-aligned) holds only zeros, read in place
    /// (volatile reads: the guest may be writing it). `EFAULT` outside guest memory.
    pub fn page_is_zero(&self, addr: u64) -> Result<bool, i32> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(EFAULT);
        }
        let host = self.host_ptr(addr, PAGE_SIZE)? as *const u64;
        Ok((0..PAGE_SIZE as usize / 8).all(|i| {
            // SAFETY: the page lies in a live mapping owned by `self` (checked above) and is
            // 8-byte aligned; a volatile read of plain memory is sound even while the guest
            // writes it (it may see either value).
            unsafe { host.add(i).read_volatile() == 0 }
        }))
    }

    /// Copies `len` bytes of guest memory at `addr` into a new buffer.
    pub fn read(&self, addr: u64, len: usize) -> Result<Vec<u8>, i32> {
        if !self.contains(addr, len as u64) {
            return Err(EFAULT);
        }
        let mut buf = vec![0; len];
        self.read_into(addr, &mut buf)?;
        Ok(buf)
    }

    /// Copies `bytes` into guest memory at `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), i32> {
        if !self.contains(addr, bytes.len() as u64) {
            return Err(EFAULT);
        }
        self.mark_host_write(addr, bytes.len() as u64);
        self.inner
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|_| EFAULT)
    }

    /// Reads a little-endian u64 at `addr`.
    pub fn read_u64(&self, addr: u64) -> Result<u64, i32> {
        let mut raw = [0; 8];
        self.read_into(addr, &mut raw)?;
        Ok(u64::from_le_bytes(raw))
    }

    /// Writes a little-endian u64 at `addr`.
    pub fn write_u64(&self, addr: u64, value: u64) -> Result<(), i32> {
        self.write(addr, &value.to_le_bytes())
    }

    /// Reads the NUL-terminated string at `addr` (without the NUL), at most `max` bytes
    /// including the NUL: `ENAMETOOLONG` if longer, `EFAULT` if it runs out of guest memory.
    pub fn read_c_string(&self, addr: u64, max: usize) -> Result<Vec<u8>, i32> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        let mut cursor = addr;
        while out.len() < max {
            // Read up to the end of the chunk, but never across the end of guest memory.
            let want = chunk.len().min(max - out.len());
            let mut n = want;
            while n > 0 && !self.contains(cursor, n as u64) {
                n /= 2;
            }
            if n == 0 {
                return Err(EFAULT);
            }
            self.read_into(cursor, &mut chunk[..n])?;
            if let Some(nul) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..n]);
            cursor += n as u64;
        }
        Err(ENAMETOOLONG)
    }

    /// Runs `f` on the guest's u32 at `addr` as a host atomic (its host address is what a host
    /// futex keys on). `EINVAL` if unaligned, `EFAULT` if outside guest memory.
    pub fn with_atomic_u32<T>(&self, addr: u64, f: impl FnOnce(&AtomicU32) -> T) -> Result<T, i32> {
        if !addr.is_multiple_of(4) {
            return Err(EINVAL);
        }
        if !self.contains(addr, 4) {
            return Err(EFAULT);
        }
        self.mark_host_write(addr, 4);
        let slice = self
            .inner
            .get_slice(GuestAddress(addr), 4)
            .map_err(|_| EFAULT)?;
        let atomic = slice.get_atomic_ref::<AtomicU32>(0).map_err(|_| EINVAL)?;
        Ok(f(atomic))
    }

    /// The guest pages at `addrs` (page-aligned, strictly increasing, inside guest memory), as
    /// byte slices to fill in place: an arriving VM's memory read straight from a socket.
    /// `EFAULT` if an address is outside guest memory, `EINVAL` if unaligned or not strictly
    /// increasing (no two slices may overlap).
    ///
    /// # Safety
    ///
    /// Nothing else may read or write these pages while the slices live: the VM must not run
    /// and no other thread may access them (an arriving VM, before it starts).
    #[allow(
        clippy::mut_from_ref,
        reason = "guest memory is shared by design; the caller's contract makes it exclusive"
    )]
    pub unsafe fn pages_mut(&self, addrs: &[u64]) -> Result<Vec<&mut [u8]>, i32> {
        let mut last = None;
        let mut pages = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            if !addr.is_multiple_of(PAGE_SIZE) || last.is_some_and(|l| addr <= l) {
                return Err(EINVAL);
            }
            let host = self.host_ptr(addr, PAGE_SIZE)?;
            last = Some(addr);
            // SAFETY: the page lies inside one live mapping owned by `self` (checked by
            // `host_ptr`); the addresses strictly increase, so no two slices overlap; the
            // caller guarantees nothing else accesses the pages while they live.
            pages.push(unsafe { std::slice::from_raw_parts_mut(host, PAGE_SIZE as usize) });
        }
        Ok(pages)
    }

    /// The bytes of `[addr, addr + len)` (page-aligned, inside one region) to fill in place.
    ///
    /// # Safety
    ///
    /// As for [`GuestMem::pages_mut`]: nothing else may access these bytes while the slice
    /// lives.
    #[allow(
        clippy::mut_from_ref,
        reason = "guest memory is shared by design; the caller's contract makes it exclusive"
    )]
    pub unsafe fn bytes_mut(&self, addr: u64, len: u64) -> Result<&mut [u8], i32> {
        if !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
            return Err(EINVAL);
        }
        let host = self.host_ptr(addr, len)?;
        // SAFETY: the range lies inside one live mapping owned by `self` (checked by
        // `host_ptr`); the caller guarantees nothing else accesses it while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts_mut(host, len as usize) })
    }

    /// The host address of `[addr, addr + len)`, which must lie inside one region (`EFAULT`).
    /// The running guest may write there at any time: read it only through the pointer
    /// (never as a Rust reference) unless nothing runs the guest.
    pub fn host_ptr(&self, addr: u64, len: u64) -> Result<*mut u8, i32> {
        if !self.contains(addr, len) {
            return Err(EFAULT);
        }
        let host = self
            .inner
            .get_host_address(GuestAddress(addr))
            .map_err(|_| EFAULT)?;
        Ok(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMem {
        GuestMem::new(4 << 20, 4 << 20).unwrap()
    }

    #[test]
    fn pages_to_fill_in_place_are_checked_and_distinct() {
        let m = mem();
        let addrs = [0, 4096, SHARED_BASE, SHARED_BASE + 8192];
        // SAFETY: nothing else uses `m` in this test.
        let mut pages = unsafe { m.pages_mut(&addrs) }.unwrap();
        for (i, p) in pages.iter_mut().enumerate() {
            p.fill(i as u8 + 1);
        }
        drop(pages);
        for (i, &a) in addrs.iter().enumerate() {
            assert_eq!(m.read(a, 4096).unwrap(), vec![i as u8 + 1; 4096]);
        }
        for bad in [
            &[4096, 4096][..],          // twice: two slices of one page
            &[8192, 4096],              // not increasing
            &[100],                     // unaligned
            &[4 << 20],                 // past the private region
            &[SHARED_BASE + (4 << 20)], // past the shared region
            &[SHARED_BASE - 4096],      // in the gap
        ] {
            // SAFETY: as above.
            assert!(unsafe { m.pages_mut(bad) }.is_err(), "{bad:x?}");
        }
    }

    #[test]
    fn reused_memory_is_zeroed_except_the_pages_written() {
        let m = mem();
        for r in m.regions() {
            m.write(r.guest_addr, &vec![0xee; r.size as usize]).unwrap();
        }
        let mut keep = PageSet::new(&m);
        // Runs to clear in place (short) and to give back (long) on both sides of these.
        for a in [4096, 3 * 4096, SHARED_BASE, SHARED_BASE + (4 << 20) - 4096] {
            keep.insert(a);
        }
        assert!(keep.contains(SHARED_BASE) && !keep.contains(SHARED_BASE + 4096));
        // SAFETY: nothing else uses `m` in this test.
        unsafe { m.zero_except(&keep) };
        for r in m.regions() {
            for page in 0..r.size / PAGE_SIZE {
                let a = r.guest_addr + page * PAGE_SIZE;
                let want = if keep.contains(a) { 0xee } else { 0 };
                assert_eq!(m.read(a, 4096).unwrap(), vec![want; 4096], "page {a:#x}");
            }
        }
        assert_eq!(m.page_is_zero(SHARED_BASE + 4096), Ok(true));
        assert_eq!(m.page_is_zero(SHARED_BASE), Ok(false));
        assert!(m.page_is_zero(SHARED_BASE + 1).is_err());
        assert!(m.page_is_zero(SHARED_BASE + (4 << 20)).is_err());
        let other = m.clone();
        assert!(!m.is_only_handle());
        drop(other);
        assert!(m.is_only_handle());
    }

    #[test]
    fn bounds_are_checked() {
        let m = mem();
        assert!(m.contains(0, 4 << 20));
        assert!(!m.contains((4 << 20) - 1, 2));
        assert!(!m.contains(8 << 20, 1));
        assert!(m.contains(SHARED_BASE, 4 << 20));
        assert!(!m.contains(SHARED_BASE + (4 << 20), 1));
        assert!(!m.contains(u64::MAX, 2));
        assert_eq!(m.write(SHARED_BASE - 1, &[1]), Err(EFAULT));
        assert_eq!(m.read(m.shared_end() - 1, 2), Err(EFAULT));
    }

    #[test]
    fn strings_and_atomics() {
        let m = mem();
        let end = m.shared_end();
        m.write(end - 3, b"ab\0").unwrap();
        assert_eq!(m.read_c_string(end - 3, 4096), Ok(b"ab".to_vec()));
        m.write(end - 2, b"cd").unwrap();
        assert_eq!(m.read_c_string(end - 2, 4096), Err(EFAULT));
        m.write(SHARED_BASE, &[b'x'; 600]).unwrap();
        assert_eq!(m.read_c_string(SHARED_BASE, 300), Err(ENAMETOOLONG));
        assert_eq!(m.with_atomic_u32(SHARED_BASE + 2, |_| ()), Err(EINVAL));
        assert_eq!(m.with_atomic_u32(end, |_| ()), Err(EFAULT));
        m.write(SHARED_BASE + 8, &7u32.to_le_bytes()).unwrap();
        let v = m.with_atomic_u32(SHARED_BASE + 8, |a| {
            a.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert_eq!(v, Ok(7));
    }
}
