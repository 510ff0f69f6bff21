//! Post-copy as a DSM in which one remote node (the VM's source) owns every page that is not
//! here yet: the shared region is registered with userfaultfd before the VM runs; a fault is
//! served by fetching the page from the owner ([`PostcopyRegion::serve_faults`]) while the
//! owner pushes every page in 2 MiB blocks ([`PostcopyRegion::place_block`]); when the owner
//! says all pages were pushed, [`PostcopyRegion::finish`] stops catching faults. Which page
//! needs what is decided by the [`PageDirectory`].

use std::sync::atomic::{AtomicBool, Ordering};

use crate::directory::{Action, Counts, Event, PageDirectory};
use crate::uffd::Uffd;
use crate::{Error, PAGE_SIZE};

/// A region of guest memory whose pages arrive from one owner.
pub struct PostcopyRegion {
    uffd: Uffd,
    guest_base: u64,
    host_base: u64,
    len: u64,
    pages: PageDirectory,
    done: AtomicBool,
    /// Keeps the mapping `[host_base, host_base + len)` alive as long as the region is.
    _owner: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for PostcopyRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostcopyRegion")
            .field("guest_base", &self.guest_base)
            .field("len", &self.len)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl PostcopyRegion {
    /// Registers the region at guest address `guest_base`, mapped at `host_base` in this
    /// process for `len` bytes (page-aligned, private anonymous memory, nothing in it yet);
    /// `owner` is what keeps that mapping alive.
    pub fn register(
        guest_base: u64,
        host_base: u64,
        len: u64,
        owner: Box<dyn Send + Sync>,
    ) -> Result<PostcopyRegion, Error> {
        let uffd = Uffd::register(host_base, len).map_err(|source| Error::Os {
            what: "registering guest memory with userfaultfd",
            source,
        })?;
        Ok(PostcopyRegion {
            uffd,
            guest_base,
            host_base,
            len,
            pages: PageDirectory::new((len / PAGE_SIZE) as usize),
            done: AtomicBool::new(false),
            _owner: owner,
        })
    }

    /// Where the block of `block_len` bytes at guest address `block` is in this process, and
    /// its length (the region's last block may be shorter).
    pub fn block(&self, block: u64, block_len: u64) -> Result<(u64, u64), Error> {
        let end = self.guest_base + self.len;
        if block < self.guest_base || block >= end {
            return Err(Error::OutsideRegion {
                what: "pushed pages",
                addr: block,
            });
        }
        let len = (end - block).min(block_len);
        Ok((self.host_base + (block - self.guest_base), len))
    }

    /// Places pushed pages at host address `dst` (from [`PostcopyRegion::block`]): the pages
    /// of `src` at the offsets `present` (the other pages of `src` are zero, as the owner's
    /// are), except where a page is here already (a fetch was faster). Returns whether `src`
    /// still holds pages (see [`Uffd::move_in`]).
    pub fn place_block(&self, dst: u64, src: &mut [u8], present: &[u64]) -> Result<bool, Error> {
        let left = self
            .uffd
            .move_in(dst, src, present)
            .map_err(|source| Error::Os {
                what: "placing pushed pages",
                source,
            })?;
        let first = ((dst - self.host_base) / PAGE_SIZE) as usize;
        for &offset in present {
            self.pages
                .apply(first + (offset / PAGE_SIZE) as usize, Event::Pushed);
        }
        Ok(left)
    }

    /// Serves faults until [`PostcopyRegion::finish`] (or the userfaultfd fails): each fault
    /// on a page not here is answered with `fetch(guest page address)` (the owner's copy, one
    /// page). A fetch that fails, or returns the wrong size, is passed to `lost` with the
    /// reason and the page is zero-filled so that the toucher does not wait forever: the VM
    /// cannot go on correctly, and `lost` should end it.
    pub fn serve_faults(
        &self,
        mut fetch: impl FnMut(u64) -> Result<Vec<u8>, String>,
        mut lost: impl FnMut(String),
    ) {
        while !self.is_done() {
            // A short wait: after `finish` the caller lets go of the region soon.
            let host_addr = match self.uffd.next_fault(10) {
                Ok(Some(a)) => a & !(PAGE_SIZE - 1),
                Ok(None) => continue,
                Err(_) => break,
            };
            if host_addr < self.host_base || host_addr >= self.host_base + self.len {
                continue;
            }
            let index = ((host_addr - self.host_base) / PAGE_SIZE) as usize;
            if self.pages.apply(index, Event::Fault) != Some(Action::Fetch) {
                continue;
            }
            let guest = self.guest_base + (host_addr - self.host_base);
            let event = match fetch(guest) {
                Ok(page) if page.len() == PAGE_SIZE as usize => {
                    let _ = self.uffd.copy(host_addr, &page);
                    Event::Arrived
                }
                _ if self.is_done() => Event::Arrived,
                other => {
                    let why = match other {
                        Err(e) => e,
                        Ok(page) => format!("a page of {} bytes", page.len()),
                    };
                    lost(why);
                    let _ = self.uffd.copy(host_addr, &[0; PAGE_SIZE as usize]);
                    Event::Lost
                }
            };
            self.pages.apply(index, event);
        }
    }

    /// Every page was pushed and placed: stop catching faults (pages never written read as
    /// zero, as they do at the owner).
    pub fn finish(&self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.uffd.unregister();
    }

    /// Whether [`PostcopyRegion::finish`] was called.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    /// Faults, fetches and pushes so far.
    pub fn counts(&self) -> Counts {
        self.pages.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uffd::{HUGE_PAGE, Staging};
    use std::sync::{Arc, Mutex};

    /// A real userfaultfd over a real mapping: a thread touching pages that are not there is
    /// served by the fetch closure (once per page), pushes fill the rest, `finish` releases.
    #[test]
    fn faults_are_fetched_once_and_pushes_fill_the_rest() {
        let mut target = Staging::new(HUGE_PAGE).unwrap();
        let host = target.bytes().as_mut_ptr() as u64;
        let guest_base = 0x4000_0000;
        let region =
            Arc::new(PostcopyRegion::register(guest_base, host, HUGE_PAGE, Box::new(())).unwrap());
        let fetched = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (region, fetched) = (region.clone(), fetched.clone());
            std::thread::spawn(move || {
                region.serve_faults(
                    |guest| {
                        fetched.lock().unwrap().push(guest);
                        Ok(vec![((guest - guest_base) / PAGE_SIZE) as u8 + 1; 4096])
                    },
                    |why| panic!("lost: {why}"),
                )
            })
        };
        // SAFETY: the staging mapping is live for the whole test; reads fault into the server.
        let read = |page: u64| unsafe { ((host + page * PAGE_SIZE) as *const u8).read_volatile() };
        assert_eq!(read(3), 4);
        assert_eq!(read(3), 4);
        assert_eq!(read(7), 8);
        // The owner pushes pages 3 (already here: kept) and 9.
        let mut staging = Staging::new(HUGE_PAGE).unwrap();
        staging.bytes()[3 * 4096..4 * 4096].fill(99);
        staging.bytes()[9 * 4096..10 * 4096].fill(50);
        let (dst, len) = region.block(guest_base, HUGE_PAGE).unwrap();
        assert_eq!((dst, len), (host, HUGE_PAGE));
        region
            .place_block(dst, staging.bytes(), &[3 * 4096, 9 * 4096])
            .unwrap();
        assert_eq!(read(3), 4, "a fetched page was overwritten by the push");
        assert_eq!(read(9), 50);
        region.finish();
        server.join().unwrap();
        assert_eq!(read(100), 0);
        assert_eq!(
            *fetched.lock().unwrap(),
            vec![guest_base + 3 * 4096, guest_base + 7 * 4096]
        );
        let c = region.counts();
        assert_eq!((c.fetched, c.pushed), (2, 1));
        assert!(region.block(guest_base + HUGE_PAGE, HUGE_PAGE).is_err());
        assert!(region.block(guest_base - 1, HUGE_PAGE).is_err());
    }

    /// A fetch that fails is reported once and the toucher is released (with zeros).
    #[test]
    fn a_failed_fetch_is_reported_and_releases_the_toucher() {
        let mut target = Staging::new(HUGE_PAGE).unwrap();
        let host = target.bytes().as_mut_ptr() as u64;
        let region = Arc::new(PostcopyRegion::register(0, host, HUGE_PAGE, Box::new(())).unwrap());
        let lost = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (region, lost) = (region.clone(), lost.clone());
            std::thread::spawn(move || {
                region.serve_faults(
                    |_| Err("the owner is gone".to_string()),
                    |why| lost.lock().unwrap().push(why),
                )
            })
        };
        // SAFETY: as above.
        let value = unsafe { ((host + 5 * PAGE_SIZE) as *const u8).read_volatile() };
        assert_eq!(value, 0);
        region.finish();
        server.join().unwrap();
        assert_eq!(*lost.lock().unwrap(), vec!["the owner is gone".to_string()]);
    }
}
