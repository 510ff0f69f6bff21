//! The coherence protocol at work on one node: a VM's shared region mapped here, kept
//! coherent with the other nodes' copies by [`crate::protocol`]'s state machines, with the
//! effects carried out on real memory through userfaultfd and the messages carried by a
//! [`Link`].
//!
//! * A touch the node's state does not allow (a vCPU's, or the VMM's own through its
//!   mapping) faults: a missing page asks the home for a read copy (`GetS`) or the page
//!   (`GetM`), a write to a read copy asks for the page; the toucher sleeps in the kernel
//!   until the answer is placed (`UFFDIO_COPY`, write-protected for a read copy) or the
//!   protection lifted (`UFFDIO_WRITEPROTECT`). Concurrent faults on a page coalesce.
//! * The home's directory answers requests, invalidates read copies (`MADV_DONTNEED` on the
//!   holder) and recalls the owner's page (write-protected first, so no write is lost, then
//!   read, and dropped unless a read copy stays); it keeps a page's contents while no node
//!   owns it.
//! * [`Coherent::acquire`] gives the VMM pages in the state it needs and pins them: an
//!   invalidation or recall of a pinned page waits until the pin ends, so a buffer the VMM
//!   reads for a hypercall, or a futex word it checks, does not change under it. Pins are
//!   taken all at once when every page is there (never one while waiting for another), so
//!   two nodes pinning pages in opposite orders cannot deadlock.
//!
//! The fault-serving thread never touches a page of the region through the mapping unless
//! the page holds data (it tracks which do), so it never faults on itself.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::PAGE_SIZE;
use crate::message::{PageMsg, carries_page};
use crate::protocol::{Cache, Envelope, Home, Msg, NodeId, ProtocolError, State};
use crate::uffd::{Fault, Uffd, resident_pages};

const PAGE: usize = PAGE_SIZE as usize;
/// Pages asked for ahead of a sequential read.
const READ_AHEAD: u32 = 128;
static ZEROS: [u8; PAGE] = [0; PAGE];

/// How protocol messages reach the other nodes.
pub trait Link: Send + Sync {
    /// Sends `msg` to node `to` (never this node), with `page` (4 KiB) when the message
    /// carries contents. Messages to one node must arrive in the order they were sent; the
    /// call must not wait for this node's own region (it is made with the region locked).
    fn send(&self, to: NodeId, msg: &PageMsg, page: Option<&[u8]>) -> Result<(), String>;
}

/// Why the DSM could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CoherenceError {
    /// A message its receiver's state cannot take: a peer that does not follow the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A message that is not one, or not for this region.
    #[error("bad page message: {0}")]
    BadMessage(String),
    /// A message could not be sent.
    #[error("cannot reach node {to}: {reason}")]
    Link {
        /// The node.
        to: NodeId,
        /// Why.
        reason: String,
    },
    /// A memory operation failed.
    #[error(transparent)]
    Memory(#[from] crate::Error),
    /// The region stopped working earlier (a peer was lost, or one of the above); the VM
    /// cannot go on.
    #[error("the shared region failed: {0}")]
    Failed(String),
}

/// Where one node's copy of a VM's shared region is, and whose it is.
#[derive(Clone, Copy, Debug)]
pub struct RegionConfig {
    /// This node.
    pub node: NodeId,
    /// The node keeping the directory (the VM's origin). If it is this node, the region's
    /// pages are this node's at the start (held Modified); else none are here.
    pub home: NodeId,
    /// The VM's cluster-wide id, in every message.
    pub vm: u64,
    /// Where the region is mapped in this process (page-aligned, private anonymous).
    pub host_base: u64,
    /// Its size (a multiple of [`PAGE_SIZE`]).
    pub len: u64,
}

/// What the region has done (counts since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoherenceStats {
    /// Faults that asked for a read copy.
    pub read_faults: u64,
    /// Faults that asked for the page to write.
    pub write_faults: u64,
    /// Pages that arrived with contents (`Data`, `DataM`).
    pub fetched: u64,
    /// Read copies made writable with no data moved (`Grant`).
    pub upgrades: u64,
    /// Read copies dropped on the home's word (`Inv`).
    pub invalidated: u64,
    /// Owned pages sent back to the home (`Recall`).
    pub recalled: u64,
    /// Requests the directory here served (`GetS`, `GetM`), from any node.
    pub served: u64,
}

#[derive(Default)]
struct Counters {
    read_faults: AtomicU64,
    write_faults: AtomicU64,
    fetched: AtomicU64,
    upgrades: AtomicU64,
    invalidated: AtomicU64,
    recalled: AtomicU64,
    served: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One node's copy of a VM's shared region, kept coherent. Dropping it stops the fault
/// thread and unregisters the range.
pub struct Coherent {
    shared: Arc<Shared>,
    faults: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Coherent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coherent")
            .field("node", &self.shared.cfg.node)
            .field("home", &self.shared.cfg.home)
            .field("vm", &self.shared.cfg.vm)
            .finish_non_exhaustive()
    }
}

struct Shared {
    cfg: RegionConfig,
    pages: u32,
    uffd: Uffd,
    link: Arc<dyn Link>,
    state: Mutex<Inner>,
    changed: Condvar,
    stop: AtomicBool,
    counters: Counters,
}

struct Inner {
    caches: Vec<Cache>,
    /// Which pages hold data here (so the fault thread can read them without faulting).
    present: Vec<bool>,
    /// Pin counts of pinned pages.
    pins: HashMap<u32, u32>,
    /// Invalidations and recalls of pinned pages, in arrival order.
    deferred: Vec<(u32, Msg)>,
    /// The directory, on the home node.
    home: Option<HomeSide>,
    failed: Option<String>,
    /// The page of the last read fault (sequential reads ask ahead).
    last_read: Option<u32>,
}

struct HomeSide {
    dir: Home,
    /// A page's contents while no node owns it (`None`: zeros).
    backing: Vec<Option<PageBox>>,
}

/// One message to act on: from `from`, about `page`, with the page's contents if it carries
/// them.
struct Work {
    from: NodeId,
    page: u32,
    msg: Msg,
    bytes: Option<PageBox>,
}

/// A page's contents, beside the message that carries them.
type PageBox = Box<[u8; PAGE]>;

/// A message this node's cache or directory produced, with the page it carries.
type Outgoing = (Envelope, Option<PageBox>);

/// Pages of a region pinned by [`Coherent::acquire`]; dropping it ends the pin.
#[derive(Debug)]
#[must_use = "the pin ends when this is dropped"]
pub struct Pinned<'a> {
    region: &'a Coherent,
    pages: std::ops::Range<u32>,
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.region.unpin(self.pages.clone());
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Coherent {
    /// Registers the region with userfaultfd and starts serving its faults. On the home,
    /// every page is this node's (held Modified, its contents what the mapping has); on any
    /// other node nothing is (the mapping is emptied).
    pub fn start(cfg: RegionConfig, link: Arc<dyn Link>) -> Result<Coherent, CoherenceError> {
        let os = |what| move |source| crate::Error::Os { what, source };
        if cfg.len == 0
            || !cfg.len.is_multiple_of(PAGE_SIZE)
            || cfg.len / PAGE_SIZE > u32::MAX as u64
        {
            return Err(CoherenceError::BadMessage(format!(
                "a region of {} bytes",
                cfg.len
            )));
        }
        let pages = (cfg.len / PAGE_SIZE) as u32;
        let uffd = Uffd::register_coherent(cfg.host_base, cfg.len)
            .map_err(os("registering the shared region"))?;
        let at_home = cfg.node == cfg.home;
        let (caches, present, home) = if at_home {
            let present = resident_pages(cfg.host_base, cfg.len)
                .map_err(os("reading which shared pages are here"))?;
            let caches = (0..pages).map(|p| Cache::owned(cfg.node, p)).collect();
            let home = HomeSide {
                dir: Home::owning(cfg.node, pages as usize),
                backing: (0..pages).map(|_| None).collect(),
            };
            (caches, present, Some(home))
        } else {
            uffd.drop_pages(cfg.host_base, cfg.len)
                .map_err(os("emptying the shared region"))?;
            let caches = (0..pages)
                .map(|p| Cache::new(cfg.node, cfg.home, p))
                .collect();
            (caches, vec![false; pages as usize], None)
        };
        let shared = Arc::new(Shared {
            cfg,
            pages,
            uffd,
            link,
            state: Mutex::new(Inner {
                caches,
                present,
                pins: HashMap::new(),
                deferred: Vec::new(),
                home,
                failed: None,
                last_read: None,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let serving = shared.clone();
        let faults = std::thread::Builder::new()
            .name(format!("dsm-faults-{}", cfg.vm))
            .spawn(move || serving.serve_faults())
            .map_err(os("starting the fault thread"))?;
        Ok(Coherent {
            shared,
            faults: Some(faults),
        })
    }

    /// Acts on a message from node `from` (its bytes as [`PageMsg::encode`] wrote them).
    /// An error means the peer broke the protocol or the region cannot go on: the region is
    /// failed and the VM must end.
    pub fn deliver(&self, from: NodeId, bytes: &[u8]) -> Result<(), CoherenceError> {
        let (m, contents) =
            PageMsg::decode(bytes).map_err(|e| CoherenceError::BadMessage(e.to_string()))?;
        let s = &self.shared;
        if m.vm != s.cfg.vm || m.page >= s.pages || from == s.cfg.node {
            return Err(CoherenceError::BadMessage(format!(
                "page {} of VM {} from node {from}",
                m.page, m.vm
            )));
        }
        let bytes = contents.map(|c| Box::new(<[u8; PAGE]>::try_from(c).expect("4 KiB")));
        let mut inner = lock(&s.state);
        s.check_failed(&inner)?;
        let work = Work {
            from,
            page: m.page,
            msg: m.msg,
            bytes,
        };
        s.run_or_fail(&mut inner, work)
    }

    /// Brings the pages of guest range `[offset, offset + len)` of the region (an offset
    /// from its start) here in a state that allows reads (or writes, `write`) and pins them
    /// until the returned value is dropped. Waits for the pages as a fault would; fails if
    /// the region has failed or does not have the range.
    pub fn acquire(
        &self,
        offset: u64,
        len: u64,
        write: bool,
    ) -> Result<Pinned<'_>, CoherenceError> {
        let s = &self.shared;
        let end = offset.checked_add(len.max(1)).filter(|&e| e <= s.cfg.len);
        let Some(end) = end else {
            return Err(CoherenceError::Memory(crate::Error::OutsideRegion {
                what: "an acquired range",
                addr: offset,
            }));
        };
        let pages = (offset / PAGE_SIZE) as u32..end.div_ceil(PAGE_SIZE) as u32;
        let mut inner = lock(&s.state);
        loop {
            s.check_failed(&inner)?;
            if pages
                .clone()
                .all(|p| inner.caches[p as usize].allows(write))
            {
                for p in pages.clone() {
                    s.fill_if_empty(&mut inner, p)?;
                    *inner.pins.entry(p).or_insert(0) += 1;
                }
                return Ok(Pinned {
                    region: self,
                    pages,
                });
            }
            for p in pages.clone() {
                if inner.caches[p as usize].allows(write) {
                    continue;
                }
                if let Some(request) = inner.caches[p as usize].fault(write) {
                    s.count_fault(write);
                    s.route_or_fail(&mut inner, request, None)?;
                }
            }
            inner = s
                .changed
                .wait_timeout(inner, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Asks ahead for the pages of the ranges (offsets from the region's start, lengths) in
    /// a state that allows reads (or writes, `write`), without waiting: requests for all of
    /// them go out at once, and a touch of one still on its way waits for that request
    /// (faults coalesce) instead of making another. Ranges outside the region are ignored.
    pub fn request_ahead(&self, ranges: &[(u64, u64)], write: bool) -> Result<(), CoherenceError> {
        let s = &self.shared;
        let mut inner = lock(&s.state);
        s.check_failed(&inner)?;
        for &(offset, len) in ranges {
            let Some(end) = offset
                .checked_add(len)
                .filter(|&e| e <= s.cfg.len && len > 0)
            else {
                continue;
            };
            for p in (offset / PAGE_SIZE) as u32..end.div_ceil(PAGE_SIZE) as u32 {
                if inner.caches[p as usize].allows(write) {
                    continue;
                }
                if let Some(request) = inner.caches[p as usize].fault(write) {
                    s.count_fault(write);
                    s.route_or_fail(&mut inner, request, None)?;
                }
            }
        }
        Ok(())
    }

    fn unpin(&self, pages: std::ops::Range<u32>) {
        let s = &self.shared;
        let mut inner = lock(&s.state);
        let mut freed = Vec::new();
        for p in pages {
            if let Some(n) = inner.pins.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    inner.pins.remove(&p);
                    freed.push(p);
                }
            }
        }
        if freed.is_empty() || inner.deferred.is_empty() {
            return;
        }
        let deferred = std::mem::take(&mut inner.deferred);
        let (now, later): (Vec<_>, Vec<_>) =
            deferred.into_iter().partition(|(p, _)| freed.contains(p));
        inner.deferred = later;
        for (page, msg) in now {
            let work = Work {
                from: s.cfg.home,
                page,
                msg,
                bytes: None,
            };
            if s.run_or_fail(&mut inner, work).is_err() {
                return;
            }
        }
    }

    /// What this node holds of page `page` (`None`: no such page).
    pub fn state(&self, page: u32) -> Option<State> {
        lock(&self.shared.state)
            .caches
            .get(page as usize)
            .map(|c| c.state)
    }

    /// On the home: how many pages only node `node` holds (Modified there; lost if it ends).
    pub fn held_only_by(&self, node: NodeId) -> u64 {
        let inner = lock(&self.shared.state);
        let Some(home) = &inner.home else { return 0 };
        (0..home.dir.len() as u32)
            .filter(|&p| home.dir.holders(p).is_some_and(|(o, _)| o == Some(node)))
            .count() as u64
    }

    /// Marks the region failed (e.g. a node holding pages of it was lost): every waiting
    /// and later [`Coherent::acquire`] fails with `reason`, and touches that would fault are
    /// let through (the range is unregistered: they see zeros) so no vCPU stays blocked in
    /// the kernel; the VM must end.
    pub fn fail(&self, reason: &str) {
        let s = &self.shared;
        let mut inner = lock(&s.state);
        s.fail_locked(&mut inner, reason.to_string());
    }

    /// Why the region failed, if it did.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.state).failed.clone()
    }

    /// The counts so far.
    pub fn stats(&self) -> CoherenceStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CoherenceStats {
            read_faults: get(&c.read_faults),
            write_faults: get(&c.write_faults),
            fetched: get(&c.fetched),
            upgrades: get(&c.upgrades),
            invalidated: get(&c.invalidated),
            recalled: get(&c.recalled),
            served: get(&c.served),
        }
    }
}

impl Drop for Coherent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.faults.take() {
            let _ = t.join();
        }
        let _ = self.shared.uffd.unregister();
    }
}

impl Shared {
    fn serve_faults(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let fault = match self.uffd.next_event(50) {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => {
                    let mut inner = lock(&self.state);
                    self.fail_locked(&mut inner, format!("reading faults: {e}"));
                    return;
                }
            };
            let mut inner = lock(&self.state);
            if inner.failed.is_some() {
                continue;
            }
            let _ = self.on_fault(&mut inner, fault);
        }
    }

    fn on_fault(&self, inner: &mut Inner, f: Fault) -> Result<(), CoherenceError> {
        let base = self.cfg.host_base;
        if f.addr < base || f.addr >= base + self.cfg.len {
            return Ok(());
        }
        let page = ((f.addr - base) / PAGE_SIZE) as u32;
        let cache = &mut inner.caches[page as usize];
        if cache.allows(f.write) {
            // Served already (the event was read after its answer), or a page this node
            // holds that never had data: give it zeros.
            if inner.present[page as usize] {
                let _ = self.uffd.wake(self.addr(page), PAGE_SIZE);
                return Ok(());
            }
            return self.fill_if_empty(inner, page);
        }
        let Some(request) = cache.fault(f.write) else {
            return Ok(());
        };
        self.count_fault(f.write);
        self.route_or_fail(inner, request, None)?;
        // A read of the page after the one read last: a sequential scan, whose next pages
        // are asked for now (their answers come back while this one is used).
        if !f.write {
            let sequential = inner.last_read == page.checked_sub(1);
            inner.last_read = Some(page);
            if sequential {
                let end = (page + 1 + READ_AHEAD).min(self.pages);
                for q in page + 1..end {
                    if inner.caches[q as usize].allows(false) {
                        continue;
                    }
                    if let Some(request) = inner.caches[q as usize].fault(false) {
                        self.route_or_fail(inner, request, None)?;
                    }
                }
                inner.last_read = Some(end - 1);
            }
        }
        Ok(())
    }

    fn count_fault(&self, write: bool) {
        bump(if write {
            &self.counters.write_faults
        } else {
            &self.counters.read_faults
        });
    }

    fn addr(&self, page: u32) -> u64 {
        self.cfg.host_base + page as u64 * PAGE_SIZE
    }

    fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> CoherenceError {
        move |source| CoherenceError::Memory(crate::Error::Os { what, source })
    }

    /// Gives a page this node may touch but that holds no data zeros (write-protected if it
    /// is a read copy).
    fn fill_if_empty(&self, inner: &mut Inner, page: u32) -> Result<(), CoherenceError> {
        if inner.present[page as usize] {
            return Ok(());
        }
        let addr = self.addr(page);
        if inner.caches[page as usize].state == State::Shared {
            self.uffd.copy_protected(addr, &ZEROS)
        } else {
            self.uffd.copy(addr, &ZEROS)
        }
        .map_err(Self::os("placing a zero page"))?;
        inner.present[page as usize] = true;
        Ok(())
    }

    fn check_failed(&self, inner: &Inner) -> Result<(), CoherenceError> {
        match &inner.failed {
            Some(why) => Err(CoherenceError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn fail_locked(&self, inner: &mut Inner, reason: String) {
        if inner.failed.is_none() {
            inner.failed = Some(reason);
            let _ = self.uffd.unregister();
        }
        self.changed.notify_all();
    }

    /// Runs `first` and what follows from it; on an error the region fails.
    fn run_or_fail(&self, inner: &mut Inner, first: Work) -> Result<(), CoherenceError> {
        let r = self.run(inner, first);
        self.changed.notify_all();
        if let Err(e) = &r {
            self.fail_locked(inner, e.to_string());
        }
        r
    }

    /// Sends (or, to this node, runs) a message this node's cache or home produced.
    fn route_or_fail(
        &self,
        inner: &mut Inner,
        env: Envelope,
        bytes: Option<PageBox>,
    ) -> Result<(), CoherenceError> {
        if env.to == self.cfg.node {
            let work = Work {
                from: env.from,
                page: env.page,
                msg: env.msg,
                bytes,
            };
            return self.run_or_fail(inner, work);
        }
        let r = self.send(&env, bytes.as_deref().map(|b| &b[..]));
        if let Err(e) = &r {
            self.fail_locked(inner, e.to_string());
        }
        r
    }

    fn send(&self, env: &Envelope, page: Option<&[u8]>) -> Result<(), CoherenceError> {
        let m = PageMsg {
            vm: self.cfg.vm,
            page: env.page,
            msg: env.msg,
        };
        self.link
            .send(env.to, &m, page)
            .map_err(|reason| CoherenceError::Link { to: env.to, reason })
    }

    fn run(&self, inner: &mut Inner, first: Work) -> Result<(), CoherenceError> {
        let mut queue = VecDeque::from([first]);
        while let Some(w) = queue.pop_front() {
            let out = if w.msg.to_home() {
                self.at_home(inner, w)?
            } else {
                if w.from != self.cfg.home {
                    return Err(CoherenceError::BadMessage(format!(
                        "{:?} for page {} from node {}, not the home",
                        w.msg, w.page, w.from
                    )));
                }
                let pinned = inner.pins.contains_key(&w.page);
                if pinned && matches!(w.msg, Msg::Inv | Msg::Recall { .. }) {
                    inner.deferred.push((w.page, w.msg));
                    continue;
                }
                self.at_cache(inner, w)?
            };
            for (env, bytes) in out {
                if env.to == self.cfg.node {
                    queue.push_back(Work {
                        from: env.from,
                        page: env.page,
                        msg: env.msg,
                        bytes,
                    });
                } else {
                    self.send(&env, bytes.as_deref().map(|b| &b[..]))?;
                }
            }
        }
        Ok(())
    }

    /// The directory's part: requests and answers to the home.
    fn at_home(&self, inner: &mut Inner, w: Work) -> Result<Vec<Outgoing>, CoherenceError> {
        let Some(home) = inner.home.as_mut() else {
            return Err(CoherenceError::BadMessage(format!(
                "{:?} for page {} from node {}: this node is not the home",
                w.msg, w.page, w.from
            )));
        };
        if matches!(w.msg, Msg::GetS | Msg::GetM) {
            bump(&self.counters.served);
        }
        let out = home.dir.handle(w.from, w.page, w.msg)?;
        if let Msg::Flush(_) = w.msg {
            home.backing[w.page as usize] = w.bytes;
        }
        Ok(out
            .into_iter()
            .map(|env| {
                let bytes = carries_page(env.msg).then(|| {
                    home.backing[env.page as usize]
                        .clone()
                        .unwrap_or_else(|| Box::new([0; PAGE]))
                });
                (env, bytes)
            })
            .collect())
    }

    /// This node's part: the home's word on a page, carried out on memory.
    fn at_cache(&self, inner: &mut Inner, w: Work) -> Result<Vec<Outgoing>, CoherenceError> {
        let p = w.page as usize;
        let addr = self.addr(w.page);
        let out = inner.caches[p].handle(w.msg)?;
        let present = inner.present[p];
        let mut flushed = None;
        match w.msg {
            Msg::Inv => {
                bump(&self.counters.invalidated);
                if present {
                    self.uffd
                        .drop_pages(addr, PAGE_SIZE)
                        .map_err(Self::os("dropping a read copy"))?;
                    inner.present[p] = false;
                }
            }
            Msg::Recall { keep } => {
                bump(&self.counters.recalled);
                let mut page = Box::new([0u8; PAGE]);
                if present {
                    // Protected first: no write can land after the copy is taken.
                    self.uffd
                        .write_protect(addr, PAGE_SIZE, true)
                        .map_err(Self::os("write-protecting a recalled page"))?;
                    // SAFETY: the page holds data (`present`), so reading it does not
                    // fault; it is write-protected, so nothing writes it meanwhile; `page`
                    // is a separate 4 KiB buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(addr as *const u8, page.as_mut_ptr(), PAGE)
                    };
                    if !keep {
                        self.uffd
                            .drop_pages(addr, PAGE_SIZE)
                            .map_err(Self::os("dropping a recalled page"))?;
                        inner.present[p] = false;
                    }
                }
                flushed = Some(page);
            }
            Msg::Data(_) => {
                bump(&self.counters.fetched);
                let page = w.bytes.as_deref().ok_or_else(no_contents)?;
                self.uffd
                    .copy_protected(addr, page)
                    .map_err(Self::os("placing a read copy"))?;
                inner.present[p] = true;
            }
            Msg::DataM(_) => {
                bump(&self.counters.fetched);
                let page = w.bytes.as_deref().ok_or_else(no_contents)?;
                if present {
                    self.uffd
                        .drop_pages(addr, PAGE_SIZE)
                        .map_err(Self::os("replacing a stale copy"))?;
                }
                self.uffd
                    .copy(addr, page)
                    .map_err(Self::os("placing a page"))?;
                inner.present[p] = true;
            }
            Msg::Grant => {
                bump(&self.counters.upgrades);
                if present {
                    self.uffd
                        .write_protect(addr, PAGE_SIZE, false)
                        .map_err(Self::os("making a read copy writable"))?;
                } else {
                    self.fill_if_empty(inner, w.page)?;
                }
            }
            Msg::GetS | Msg::GetM | Msg::InvAck | Msg::Flush(_) => {}
        }
        Ok(out
            .into_iter()
            .map(|env| {
                let bytes = matches!(env.msg, Msg::Flush(_))
                    .then(|| flushed.take())
                    .flatten();
                (env, bytes)
            })
            .collect())
    }
}

fn no_contents() -> CoherenceError {
    CoherenceError::BadMessage("a page message without its page".into())
}
