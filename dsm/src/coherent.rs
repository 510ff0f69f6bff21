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
//! * A sequential read is a scan: its faults ask for the next pages ahead, in one message,
//!   with `GetE` (a read copy, or the page itself if no node shares it). Pages a scan is
//!   given arrive writable, so KVM maps several at once; whole huge pages of them are
//!   gathered and moved in with one `UFFDIO_MOVE`, so KVM maps each with one entry. Where
//!   the [`Link`] has page streams, the home sends each whole huge page of a scan's answer as
//!   one streamed run: the frame says which pages, the 2 MiB follow on the stream, written
//!   after the region is unlocked, and are read by the receiver straight into the memory it
//!   moves into the region.
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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::PAGE_SIZE;
use crate::message::{
    Contents, HEADER, MAX_FRAME, PageMsg, RunBuilder, STREAMED_RUN, carries_page,
};
use crate::protocol::{Cache, Envelope, Home, Msg, NodeId, ProtocolError, State};
use crate::uffd::{Fault, HUGE_PAGE, Staging, Uffd, resident_pages};

const PAGE: usize = PAGE_SIZE as usize;
/// Pages in a huge page.
const HUGE_PAGES: u32 = (HUGE_PAGE / PAGE_SIZE) as u32;
/// Pages asked for ahead of the first sequential read fault; each next one of a scan asks for
/// twice as many, up to [`READ_AHEAD_MAX`].
const READ_AHEAD: u32 = 64;
/// Most pages asked for ahead of one read fault (4 MiB).
const READ_AHEAD_MAX: u32 = 1024;
static ZEROS: [u8; PAGE] = [0; PAGE];

/// How protocol messages reach the other nodes.
pub trait Link: Send + Sync {
    /// Sends `message` (a [`PageMsg`]'s bytes) to node `to` (never this node), to be handed
    /// to that node's [`Coherent::deliver`]. Messages to one node must arrive in the order
    /// they were sent; the call must not wait for this node's own region (it is made with
    /// the region locked).
    fn send(&self, to: NodeId, message: Vec<u8>) -> Result<(), String>;

    /// Whether a page stream to node `to` is open ([`Link::send_pages`]): then the whole
    /// huge pages of a scan's answer to it are streamed (see [`crate::message`]). A link
    /// that can open one starts opening it when asked, without waiting (the call is made
    /// with the region locked); until it is open, pages go inline.
    fn has_stream_to(&self, to: NodeId) -> bool {
        let _ = to;
        false
    }

    /// Sends a streamed run's record, `head` and then `pages`, on the region's page stream
    /// to node `to`. Records to one node must arrive in the order they were sent. Called
    /// with the region unlocked; it may wait for the peer to read.
    fn send_pages(&self, to: NodeId, head: &[u8], pages: &[u8]) -> Result<(), String> {
        let _ = (to, head, pages);
        Err("this link has no page streams".into())
    }

    /// Reads the next record of node `from`'s page stream to this region: returns its head
    /// and reads its pages straight into `into` (a record of another length is an error).
    /// Called with the region unlocked, by the deliverer of the frame that announced it; it
    /// must not wait forever for a peer that is gone.
    fn recv_pages(&self, from: NodeId, into: &mut [u8]) -> Result<Vec<u8>, String> {
        let _ = (from, into);
        Err("this link has no page streams".into())
    }
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
    /// Where the region is mapped in this process (page-aligned, private anonymous,
    /// read-write, owned by the caller; on a node other than the home nothing may touch it
    /// while [`Coherent::start`] runs).
    pub host_base: u64,
    /// Its size (a multiple of [`PAGE_SIZE`]).
    pub len: u64,
    /// Use userfaultfd write-protect where the kernel has it (read copies, recalls that
    /// protect before they copy); `false`: never, as on a kernel without it (arm64 before
    /// Linux 6.10), where every fault takes the page itself and a recall takes the page out.
    pub write_protect: bool,
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
    /// Requests the directory here served (`GetS`, `GetM`, `GetE`), from any node.
    pub served: u64,
    /// Huge pages a scan was given whole and that were placed as one.
    pub huge_pages: u64,
    /// Owned pages given back to the home unasked (`PutM`, as a thread left).
    pub given_back: u64,
    /// Pages the home handed to another node unasked (as a thread left the home for it).
    pub pushed: u64,
    /// Whole huge pages sent as streamed runs (their 2 MiB on a page stream).
    pub streamed: u64,
    /// Of those, the home's own huge pages moved out of its mapping whole (no copy).
    pub moved_out: u64,
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
    huge_pages: AtomicU64,
    given_back: AtomicU64,
    pushed: AtomicU64,
    streamed: AtomicU64,
    moved_out: AtomicU64,
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
    /// Streamed runs to write to their page streams once the region is unlocked, in the
    /// order their frames went out.
    outbox: Mutex<VecDeque<Record>>,
    /// Held while the outbox is written out (one writer at a time keeps records in order).
    writing: Mutex<()>,
    /// Buffers of streamed runs, kept for the next ones (their memory stays touched).
    buffers: Mutex<Vec<Vec<u8>>>,
    /// Empty areas registered with the region's userfaultfd, where the home's huge pages are
    /// moved out to be streamed ([`Uffd::move_out`]), kept for the next.
    areas: Mutex<Vec<Staging>>,
}

/// A streamed run's page-stream record waiting to be written.
struct Record {
    to: NodeId,
    head: [u8; HEADER],
    /// The run's header, then its pages (unless they were moved out).
    buffer: Vec<u8>,
    /// The pages, moved out of the region whole (then `buffer`'s are placeholders).
    moved: Option<Staging>,
}

/// The region's lock held: dropping it unlocks the region, then writes out what its holder
/// left in the outbox.
struct Held<'s> {
    shared: &'s Shared,
    guard: Option<MutexGuard<'s, Inner>>,
}

impl std::ops::Deref for Held<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        self.guard.as_ref().expect("held")
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        self.guard.as_mut().expect("held")
    }
}

impl Held<'_> {
    /// Waits on the region's condition variable (the lock released meanwhile) for at most
    /// `timeout`.
    fn wait(&mut self, timeout: Duration) {
        let guard = self.guard.take().expect("held");
        let guard = self
            .shared
            .changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        self.guard = Some(guard);
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.shared.write_out();
    }
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
    /// The last page asked for by a read fault or ahead of one (sequential reads ask
    /// ahead).
    last_read: Option<u32>,
    /// How many pages the next sequential read fault asks for ahead.
    ahead: u32,
    /// Whether the last read fault was a scan's (its window ends at `last_read`).
    scanning: bool,
    /// The huge page being gathered, if one is.
    gather: Option<Gather>,
    /// Where gathered pages wait (made at the first gather, kept for the next).
    staging: Option<Staging>,
}

/// Pages of one huge page given to this node (a scan's requests answered with the pages),
/// gathered before they are placed: once all are here, one `UFFDIO_MOVE` puts them in as one
/// huge page, which KVM maps with one entry (each 4 KiB page placed alone costs the guest an
/// exit at its first touch). Every page of it not here yet is on its way; a toucher of one
/// that is here waits for the rest (they are placed together); anything else on one of them
/// places what is here first.
struct Gather {
    /// Its first page.
    first: u32,
    /// Which of its pages are here (in the staging area, at their offsets).
    have: Vec<bool>,
    /// How many.
    count: u32,
}

struct HomeSide {
    dir: Home,
    /// Each page's contents while no node owns it.
    backing: Vec<Backing>,
}

/// What the home keeps of a page's contents while no node owns it.
enum Backing {
    /// Zeros: the page was never written.
    Zeros,
    /// These bytes (4 KiB).
    Bytes(Box<[u8]>),
    /// What the home's own mapping holds: the home kept a read copy when the page was
    /// recalled from it, and copies it here before that copy goes.
    Mapped,
    /// Nothing: a node owns the page, and its contents come back with its `Flush` or
    /// `PutM` (the home keeps no stale copy of what nodes took).
    AtOwner,
    /// What the home's own mapping holds, write-protected: the page was recalled from the
    /// home to go to a writer, and is copied straight from the mapping into the message
    /// that grants it (then dropped), instead of being copied out first.
    Staged,
}

/// One message to act on: from `from`, about `page`, with the page's contents if it carries
/// them.
struct Work<'a> {
    from: NodeId,
    page: u32,
    msg: Msg,
    bytes: Option<Bytes<'a>>,
}

/// A page's contents: owned, or borrowed from the message that carried them.
type Bytes<'a> = Cow<'a, [u8]>;

/// What one hold of the region's lock does: the messages to act on here, the memory effects
/// gathered from them (carried out together: one ioctl or `madvise` per run of pages), and
/// the run of messages being gathered for a peer (sent as one). Effects are carried out
/// before any message goes out, so no message overtakes what it follows from.
#[derive(Default)]
struct Batch<'a> {
    queue: VecDeque<Work<'a>>,
    /// Pages to place, in increasing page order: read copies (write-protected: `true`) and
    /// pages this node now owns.
    places: Vec<(u32, Bytes<'a>, bool)>,
    /// Pages to drop, in increasing order.
    drops: Vec<u32>,
    /// Pages write-protected ahead of their recalls (one ioctl for a run of recalls).
    protected: std::ops::Range<u32>,
    /// The contents of each run of the frame being delivered, from its first page: where
    /// borrowed pages come from, so a run of them is placed straight from it.
    sources: Vec<(u32, &'a [u8])>,
    /// The run of messages going to a peer.
    run: Option<(NodeId, RunBuilder)>,
    /// Pages of that run (a whole one) whose contents are still only in this node's
    /// mapping, write-protected: moved out with one ioctl if they make the whole huge page,
    /// else copied in before any effect drops them.
    deferred: Vec<u32>,
    /// Finished runs, gathered into frames by peer (in the order they go out), sent when
    /// the batch ends.
    out: Vec<(NodeId, Vec<u8>)>,
}

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

fn lock_plain<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps `item` in `pool` for reuse, unless the pool holds a few already.
fn keep<T>(pool: &Mutex<Vec<T>>, item: T) {
    let mut kept = lock_plain(pool);
    if kept.len() < 4 {
        kept.push(item);
    }
}

impl Coherent {
    /// Registers the region with userfaultfd and starts serving its faults. On the home,
    /// every page is this node's (held Modified, its contents what the mapping has); on any
    /// other node nothing is (the mapping is replaced with fresh memory: nothing may touch
    /// it meanwhile).
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
        let at_home = cfg.node == cfg.home;
        if !at_home {
            // SAFETY: the region is the caller's private anonymous read-write mapping
            // (`RegionConfig`), whose contents are not this node's (none of its pages are),
            // and nothing touches it before the region starts.
            unsafe { crate::uffd::replace_with_fresh(cfg.host_base, cfg.len) }
                .map_err(os("emptying the shared region"))?;
        }
        let register = match cfg.write_protect {
            true => Uffd::register_coherent,
            false => Uffd::register,
        };
        let uffd = register(cfg.host_base, cfg.len).map_err(os("registering the shared region"))?;
        let (caches, present, home) = if at_home {
            let present = resident_pages(cfg.host_base, cfg.len)
                .map_err(os("reading which shared pages are here"))?;
            let caches = (0..pages).map(|p| Cache::owned(cfg.node, p)).collect();
            let home = HomeSide {
                dir: Home::owning(cfg.node, pages as usize),
                backing: (0..pages).map(|_| Backing::Zeros).collect(),
            };
            (caches, present, Some(home))
        } else {
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
                ahead: READ_AHEAD,
                scanning: false,
                gather: None,
                staging: None,
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            outbox: Mutex::default(),
            writing: Mutex::default(),
            buffers: Mutex::default(),
            areas: Mutex::default(),
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

    /// Acts on a frame from node `from`: one or more runs, as [`PageMsg::encode`] wrote
    /// them, back to back (one batch: what it leads to goes out as frames too).
    /// An error means the peer broke the protocol or the region cannot go on: the region is
    /// failed and the VM must end.
    pub fn deliver(&self, from: NodeId, bytes: &[u8]) -> Result<(), CoherenceError> {
        let runs =
            PageMsg::decode_frame(bytes).map_err(|e| CoherenceError::BadMessage(e.to_string()))?;
        let s = &self.shared;
        for (m, _) in &runs {
            if m.vm != s.cfg.vm || m.page + m.count > s.pages || from == s.cfg.node {
                return Err(CoherenceError::BadMessage(format!(
                    "pages {}..{} of VM {} from node {from}",
                    m.page,
                    m.page as u64 + m.count as u64,
                    m.vm
                )));
            }
        }
        if let [(m, Contents::Streamed)] = runs[..] {
            return self.deliver_streamed(from, m);
        }
        let mut inner = s.hold();
        s.check_failed(&inner)?;
        s.within(&mut inner, |_, _, b| {
            for (m, contents) in runs {
                let contents = contents.inline();
                b.sources.extend(contents.map(|c| (m.page, c)));
                for i in 0..m.count {
                    let bytes = contents.map(|c| Cow::Borrowed(&c[i as usize * PAGE..][..PAGE]));
                    b.queue.push_back(Work {
                        from,
                        page: m.page + i,
                        msg: m.msg,
                        bytes,
                    });
                }
            }
            Ok(())
        })
    }

    /// Acts on a streamed run from node `from`: reads its pages from the page stream into
    /// fresh memory and, if every page of the huge page is on its way here as a scan's,
    /// moves that memory into the region whole (else the pages are placed one by one, as
    /// a frame's are).
    fn deliver_streamed(&self, from: NodeId, m: PageMsg) -> Result<(), CoherenceError> {
        let s = &self.shared;
        let first = m.page;
        if s.huge_first(first) != Some(first) {
            return Err(CoherenceError::BadMessage(format!(
                "a streamed run of pages {first}.. from node {from} that is not a huge page"
            )));
        }
        let mut staging = Staging::new(HUGE_PAGE).map_err(Shared::os("making a staging area"))?;
        let head = s
            .link
            .recv_pages(from, staging.bytes())
            .map_err(|reason| CoherenceError::Link { to: from, reason })?;
        if head[..] != PageMsg::streamed(m.vm, first) {
            return Err(CoherenceError::BadMessage(format!(
                "a page-stream record from node {from} for other pages than its frame's                  ({first}..)"
            )));
        }
        let mut inner = s.hold();
        s.check_failed(&inner)?;
        let pages = first..first + STREAMED_RUN;
        let whole = s.uffd.can_move()
            && !in_gather(&inner, first)
            && pages.clone().all(|q| {
                let c = &inner.caches[q as usize];
                !inner.present[q as usize] && c.waiting.is_some() && c.may_own
            });
        let staging = &mut staging;
        s.within(&mut inner, move |s, inner, b| {
            if whole {
                let offsets: Vec<u64> = (0..HUGE_PAGE).step_by(PAGE).collect();
                s.uffd
                    .move_in(s.addr(first), staging.bytes(), &offsets)
                    .map_err(Shared::os("moving in a huge page"))?;
                for q in pages {
                    inner.present[q as usize] = true;
                    bump(&s.counters.fetched);
                    for env in inner.caches[q as usize].handle(m.msg)? {
                        s.route(b, env, None)?;
                    }
                }
                bump(&s.counters.huge_pages);
                return Ok(());
            }
            let bytes: &[u8] = staging.bytes();
            b.sources.push((first, bytes));
            b.queue.extend(pages.map(|q| Work {
                from,
                page: q,
                msg: m.msg,
                bytes: Some(Cow::Borrowed(&bytes[(q - first) as usize * PAGE..][..PAGE])),
            }));
            Ok(())
        })
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
        let mut inner = s.hold();
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
            s.within(&mut inner, |s, inner, b| {
                s.ask(inner, b, pages.clone(), s.want(write))
            })?;
            // What the asking left in the outbox goes out before the wait.
            drop(inner);
            inner = s.hold();
            inner.wait(Duration::from_millis(200));
        }
    }

    /// Asks ahead for the pages of the ranges (offsets from the region's start, lengths) in
    /// a state that allows reads (or writes, `write`), without waiting: requests for all of
    /// them go out at once, and a touch of one still on its way waits for that request
    /// (faults coalesce) instead of making another. Ranges outside the region are ignored.
    pub fn request_ahead(&self, ranges: &[(u64, u64)], write: bool) -> Result<(), CoherenceError> {
        let s = &self.shared;
        let mut inner = s.hold();
        s.check_failed(&inner)?;
        s.within(&mut inner, |s, inner, b| {
            for pages in ranges.iter().filter_map(|&r| s.pages_of(r)) {
                s.ask(inner, b, pages, s.want(write))?;
            }
            Ok(())
        })
    }

    /// Gives the pages of the ranges (offsets from the region's start, lengths) that this
    /// node holds Modified back to the home (`PutM`), with one message: what a thread that
    /// leaves this node wrote last, so that the node it goes to gets them from the home at
    /// once rather than through a recall from here. Pinned pages, and every page on the
    /// home itself, stay. Returns how many pages went.
    pub fn give_back(&self, ranges: &[(u64, u64)]) -> Result<u32, CoherenceError> {
        let s = &self.shared;
        if s.cfg.node == s.cfg.home {
            return Ok(0);
        }
        let pages = s.pages_in(ranges);
        let mut inner = s.hold();
        s.check_failed(&inner)?;
        let mut given = 0;
        s.within(&mut inner, |s, inner, b| {
            let pages: Vec<u32> = pages
                .into_iter()
                .filter(|&page| !inner.pins.contains_key(&page) && !in_gather(inner, page))
                .collect();
            // The pages that hold data are write-protected first, a run with one ioctl: a
            // write by another vCPU here faults (and asks for the page again) instead of
            // landing after the copy is taken.
            let held: Vec<u32> = pages
                .iter()
                .copied()
                .filter(|&p| {
                    inner.present[p as usize] && inner.caches[p as usize].state == State::Modified
                })
                .collect();
            // (Without write-protect each page is taken out instead, below.)
            for run in held
                .chunk_by(|x, y| *y == x + 1)
                .filter(|_| s.uffd.can_protect())
            {
                s.uffd
                    .write_protect(s.addr(run[0]), run.len() as u64 * PAGE_SIZE, true)
                    .map_err(Shared::os("write-protecting pages given back"))?;
            }
            for page in pages {
                let p = page as usize;
                let Some(put) = inner.caches[p].give_back() else {
                    continue;
                };
                let mut bytes = vec![0u8; PAGE];
                let present = inner.present[p];
                let taken = present && !s.uffd.can_protect();
                if taken {
                    // Taken away with its contents at once: nothing written after is lost.
                    s.uffd
                        .take_out(s.addr(page), &mut bytes)
                        .map_err(Shared::os("taking out pages given back"))?;
                    inner.present[p] = false;
                } else if present {
                    let addr = s.addr(page);
                    // SAFETY: the page holds data (`present`), so reading it does not fault;
                    // it is write-protected (above), so nothing writes it meanwhile; `bytes`
                    // is a separate 4 KiB buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(addr as *const u8, bytes.as_mut_ptr(), PAGE)
                    };
                    inner.present[p] = false;
                }
                given += 1;
                s.route(b, put, Some(Cow::Owned(bytes)))?;
                // Dropped with the run it joined, before that goes out: after the route,
                // which may end the run before it (consecutive pages: one `madvise`).
                if present && !taken {
                    b.drops.push(page);
                }
            }
            Ok(())
        })?;
        s.counters
            .given_back
            .fetch_add(u64::from(given), Ordering::Relaxed);
        Ok(given)
    }

    /// On the home: hands the pages of the ranges (offsets from the region's start,
    /// lengths) to node `to` unasked, as if it had faulted on a write of each (with one
    /// message): what a thread leaving the home for `to` touches first is there when it
    /// arrives, instead of being asked for after. Only a hint: pages `to` owns already, pages
    /// the VMM here has pinned and pages a transaction runs or waits on stay as they are; a
    /// request of `to`'s that crosses a push is answered by it. Returns how many pages go.
    pub fn push(&self, ranges: &[(u64, u64)], to: NodeId) -> Result<u32, CoherenceError> {
        let s = &self.shared;
        if s.cfg.node != s.cfg.home || to == s.cfg.node {
            return Ok(0);
        }
        let pages = s.pages_in(ranges);
        let mut inner = s.hold();
        s.check_failed(&inner)?;
        let mut pushed = 0;
        s.within(&mut inner, |s, inner, b| {
            for page in pages {
                if inner.pins.contains_key(&page) || in_gather(inner, page) {
                    continue;
                }
                let Some(home) = inner.home.as_mut() else {
                    return Ok(());
                };
                let out = home.dir.push(page, to)?;
                if !out.is_empty() {
                    pushed += 1;
                }
                s.send_from_home(inner, b, out)?;
            }
            Ok(())
        })?;
        s.counters
            .pushed
            .fetch_add(u64::from(pushed), Ordering::Relaxed);
        Ok(pushed)
    }

    fn unpin(&self, pages: std::ops::Range<u32>) {
        let s = &self.shared;
        let mut inner = s.hold();
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
        let _ = s.within(&mut inner, |s, _, b| {
            b.queue.extend(now.into_iter().map(|(page, msg)| Work {
                from: s.cfg.home,
                page,
                msg,
                bytes: None,
            }));
            Ok(())
        });
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

    /// On the home: how many pages the directory keeps a copy of (pages no node owns that
    /// were written; a page a node owns has its only copy there).
    pub fn copies_kept(&self) -> u64 {
        let inner = lock(&self.shared.state);
        let Some(home) = &inner.home else { return 0 };
        home.backing
            .iter()
            .filter(|b| matches!(b, Backing::Bytes(_)))
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

    /// Whether nodes hold read copies of this region's pages here: the region was asked to
    /// use write-protect and the kernel has it (else every page moves whole).
    pub fn read_copies(&self) -> bool {
        self.shared.uffd.can_protect()
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
            huge_pages: get(&c.huge_pages),
            given_back: get(&c.given_back),
            pushed: get(&c.pushed),
            streamed: get(&c.streamed),
            moved_out: get(&c.moved_out),
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
    /// Locks the region; unlocking it writes out the outbox.
    fn hold(&self) -> Held<'_> {
        Held {
            shared: self,
            guard: Some(lock(&self.state)),
        }
    }

    /// Writes the streamed runs in the outbox to their page streams, in order (with the
    /// region unlocked: a peer that is slow to read holds up only this). A record that
    /// cannot be sent fails the region.
    fn write_out(&self) {
        if lock_plain(&self.outbox).is_empty() {
            return;
        }
        let _one = lock_plain(&self.writing);
        loop {
            let Some(r) = lock_plain(&self.outbox).pop_front() else {
                return;
            };
            let Record {
                to,
                head,
                buffer,
                mut moved,
            } = r;
            let sent = match &mut moved {
                Some(area) => self.link.send_pages(to, &head, area.bytes()),
                None => self.link.send_pages(to, &head, &buffer[HEADER..]),
            };
            self.give_buffer(buffer);
            if let Some(mut area) = moved
                && area.clear().is_ok()
            {
                keep(&self.areas, area);
            }
            if let Err(reason) = sent {
                let mut inner = lock(&self.state);
                self.fail_locked(
                    &mut inner,
                    format!("cannot stream pages to node {to}: {reason}"),
                );
            }
        }
    }

    /// A buffer for a streamed run (a kept one if there is one).
    fn take_buffer(&self) -> Vec<u8> {
        lock_plain(&self.buffers).pop().unwrap_or_default()
    }

    /// Keeps `buffer` for the next streamed run (a few at most).
    fn give_buffer(&self, buffer: Vec<u8>) {
        if buffer.capacity() > HEADER {
            keep(&self.buffers, buffer);
        }
    }

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
            let mut inner = self.hold();
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
        // Without write-protect every fault asks for the page itself (see `want`).
        let f = Fault {
            write: f.write || !self.uffd.can_protect(),
            ..f
        };
        let cache = &mut inner.caches[page as usize];
        if cache.allows(f.write) {
            // Served already (the event was read after its answer), or a page this node
            // holds that never had data: give it zeros.
            if inner.present[page as usize] {
                let _ = self.uffd.wake(self.addr(page), PAGE_SIZE);
                return Ok(());
            }
            if in_gather(inner, page) {
                // Placed with the rest of its huge page, which is on its way.
                return self.scan_on(inner, page);
            }
            return self.fill_if_empty(inner, page);
        }
        // A read of the page after the last one asked for: a sequential scan, whose next
        // pages are asked for now, in the same message (their answers come back while this
        // one is used), more of them at each such fault. A scan's requests take the pages
        // no other node shares (`GetE`): they arrive writable, so KVM maps them many at a
        // time, and nothing is left behind to invalidate.
        let sequential = !f.write && page > 0 && inner.last_read == Some(page - 1);
        let want = match (f.write, sequential) {
            (true, _) => Want::Write,
            (false, true) => Want::Scan,
            (false, false) => Want::Read,
        };
        let Some(request) = want.fault(cache) else {
            // On its way already: the answer wakes the toucher.
            return match f.write {
                true => Ok(()),
                false => self.scan_on(inner, page),
            };
        };
        self.count_fault(f.write);
        if f.write {
            return self.within(inner, |s, _, b| s.route(b, request, None));
        }
        let ahead = if sequential {
            self.next_window(inner, page + 1)
        } else {
            inner.ahead = READ_AHEAD;
            inner.last_read = Some(page);
            page + 1..page + 1
        };
        inner.scanning = sequential;
        self.within(inner, |s, inner, b| {
            s.route(b, request, None)?;
            s.ask(inner, b, ahead, want)
        })
    }

    /// The end of a scan's window that would end at `end`: the next huge-page boundary, so a
    /// huge page is asked for whole (and gathered), or the region's end.
    fn window_end(&self, end: u32) -> u32 {
        let at = self.addr(end.min(self.pages));
        let to_boundary = at.next_multiple_of(HUGE_PAGE) - at;
        (end + (to_boundary / PAGE_SIZE) as u32).min(self.pages)
    }

    /// A scan's touch of `page`, which it asked for already (still on its way, or gathered):
    /// if less than half a window of what it asked for is left after `page`, it asks for the
    /// next window now, so the pages keep coming while it reads.
    fn scan_on(&self, inner: &mut Inner, page: u32) -> Result<(), CoherenceError> {
        let Some(last) = inner.last_read.filter(|_| inner.scanning) else {
            return Ok(());
        };
        if page > last || last - page >= inner.ahead / 2 || last + 1 >= self.pages {
            return Ok(());
        }
        let window = self.next_window(inner, last + 1);
        self.within(inner, |s, inner, b| s.ask(inner, b, window, Want::Scan))
    }

    /// A scan's next window, from `start`: twice as many pages as the last (up to
    /// [`READ_AHEAD_MAX`]), to a huge-page boundary; it ends the scan's asked-for pages.
    fn next_window(&self, inner: &mut Inner, start: u32) -> std::ops::Range<u32> {
        inner.ahead = (inner.ahead * 2).min(READ_AHEAD_MAX);
        let end = self.window_end(start + inner.ahead);
        inner.last_read = Some(end - 1);
        start..end
    }

    /// Asks for the pages of `pages` this node may not yet touch as `want` needs (a fault
    /// for each; those already on their way are left to their requests).
    fn ask(
        &self,
        inner: &mut Inner,
        b: &mut Batch<'_>,
        pages: std::ops::Range<u32>,
        want: Want,
    ) -> Result<(), CoherenceError> {
        let write = want == Want::Write;
        for p in pages {
            let cache = &mut inner.caches[p as usize];
            if cache.allows(write) {
                continue;
            }
            if let Some(request) = want.fault(cache) {
                self.count_fault(write);
                self.route(b, request, None)?;
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

    /// What a fault (or a request ahead) for reading (`write` false) or writing asks for.
    /// Where pages cannot be write-protected a node holds no read copies: it always asks
    /// for the page itself (`GetM`), so the protocol runs with Modified and Invalid only.
    fn want(&self, write: bool) -> Want {
        Want::of(write || !self.uffd.can_protect())
    }

    /// `Ok` if pages can be write-protected here; else the error a request for a read copy
    /// meets (no node of a cluster whose nodes lack write-protect asks for one).
    fn can_protect(&self) -> Result<(), CoherenceError> {
        match self.uffd.can_protect() {
            true => Ok(()),
            false => Err(CoherenceError::Failed(
                "a read copy of a page was asked of a node whose kernel cannot write-protect \
                 guest memory (userfaultfd write-protect: arm64 needs Linux 6.10)"
                    .into(),
            )),
        }
    }

    /// Gives a page this node may touch but that holds no data zeros (write-protected if it
    /// is a read copy).
    fn fill_if_empty(&self, inner: &mut Inner, page: u32) -> Result<(), CoherenceError> {
        if in_gather(inner, page) {
            self.place_gathered(inner)?;
        }
        if inner.present[page as usize] {
            return Ok(());
        }
        let addr = self.addr(page);
        if inner.caches[page as usize].state == State::Shared {
            self.can_protect()?;
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

    /// Runs `start` (which gives the batch its first messages) and what follows from it,
    /// then carries out the effects and sends what is gathered; on an error the region
    /// fails.
    fn within<'a>(
        &self,
        inner: &mut Inner,
        start: impl FnOnce(&Self, &mut Inner, &mut Batch<'a>) -> Result<(), CoherenceError>,
    ) -> Result<(), CoherenceError> {
        let mut b = Batch::default();
        let r = start(self, inner, &mut b)
            .and_then(|()| self.process(inner, &mut b))
            .and_then(|()| self.end_run(&mut b))
            .and_then(|()| self.send_frames(&mut b));
        self.changed.notify_all();
        if let Err(e) = &r {
            self.fail_locked(inner, e.to_string());
        }
        r
    }

    /// Acts on the batch's messages, in order, and on those they lead to here.
    fn process<'a>(&self, inner: &mut Inner, b: &mut Batch<'a>) -> Result<(), CoherenceError> {
        while let Some(w) = b.queue.pop_front() {
            if w.msg.to_home() {
                self.at_home(inner, b, w)?;
                continue;
            }
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
            self.at_cache(inner, b, w)?;
        }
        Ok(())
    }

    /// Sends (or, to this node, queues) a message this node's cache or home produced.
    fn route<'a>(
        &self,
        b: &mut Batch<'a>,
        env: Envelope,
        bytes: Option<Bytes<'a>>,
    ) -> Result<(), CoherenceError> {
        if env.to == self.cfg.node {
            b.queue.push_back(Work {
                from: env.from,
                page: env.page,
                msg: env.msg,
                bytes,
            });
            return Ok(());
        }
        self.post(b, env, bytes.as_deref(), false)
    }

    /// Adds a message for a peer to the run being gathered, or sends that run and starts
    /// another. `mapped`: `bytes` are this node's mapping of the page, write-protected,
    /// dropped with the batch's effects (a whole run takes them later, see
    /// [`Batch::deferred`]).
    fn post(
        &self,
        b: &mut Batch<'_>,
        env: Envelope,
        bytes: Option<&[u8]>,
        mapped: bool,
    ) -> Result<(), CoherenceError> {
        if let Some((to, run)) = &mut b.run
            && *to == env.to
        {
            let defer = mapped && run.is_whole();
            if run.push(env.page, env.msg, if defer { None } else { bytes }) {
                if defer {
                    b.deferred.push(env.page);
                }
                return Ok(());
            }
        }
        self.end_run(b)?;
        let whole = matches!(env.msg, Msg::DataM(_))
            && self.huge_first(env.page) == Some(env.page)
            && self.link.has_stream_to(env.to);
        let run = match whole {
            true => {
                let contents = if mapped { None } else { bytes };
                if mapped {
                    b.deferred.push(env.page);
                }
                RunBuilder::whole(self.cfg.vm, env.page, contents, self.take_buffer())
            }
            false => RunBuilder::new(self.cfg.vm, env.page, env.msg, bytes),
        };
        b.run = Some((env.to, run));
        Ok(())
    }

    /// Copies the deferred pages' contents from the mapping into the run.
    fn take_deferred(&self, b: &mut Batch<'_>) {
        let Some((_, run)) = &mut b.run else {
            b.deferred.clear();
            return;
        };
        for page in b.deferred.drain(..) {
            // SAFETY: a deferred page holds data here and is write-protected (it was
            // recalled to be granted, `Backing::Staged`), and its drop waits for this: it
            // can be read and does not change; the run's buffer is separate memory.
            let contents =
                unsafe { std::slice::from_raw_parts(self.addr(page) as *const u8, PAGE) };
            run.fill(page, contents);
        }
    }

    /// If the run is a whole huge page whose every page is deferred, moves that huge page
    /// out of the mapping into an area of its own (no copy; the move is its drop); else
    /// (or if it cannot move) nothing.
    fn move_out_whole(&self, b: &mut Batch<'_>) -> Result<Option<Staging>, CoherenceError> {
        let Some((_, run)) = &b.run else {
            return Ok(None);
        };
        let m = run.message();
        if !run.is_whole()
            || m.count != STREAMED_RUN
            || b.deferred.len() != STREAMED_RUN as usize
            || !self.uffd.can_move()
        {
            return Ok(None);
        }
        let kept = lock_plain(&self.areas).pop();
        let mut area = match kept {
            Some(a) => a,
            None => self
                .uffd
                .out_area()
                .map_err(Self::os("making an area to move pages to"))?,
        };
        let src = self.addr(m.page);
        if !self
            .uffd
            .move_out(src, &mut area)
            .map_err(Self::os("moving pages out"))?
        {
            // Moved back: protected again, then copied as any other run's.
            self.uffd
                .write_protect(src, HUGE_PAGE, true)
                .map_err(Self::os("write-protecting pages moved back"))?;
            keep(&self.areas, area);
            return Ok(None);
        }
        let pages = m.page..m.page + STREAMED_RUN;
        b.deferred.clear();
        b.drops.retain(|p| !pages.contains(p));
        bump(&self.counters.moved_out);
        Ok(Some(area))
    }

    /// The pages of the range (an offset from the region's start, a length): `None` if it is
    /// empty or not all inside the region.
    fn pages_of(&self, (offset, len): (u64, u64)) -> Option<std::ops::Range<u32>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.cfg.len && len > 0)?;
        Some((offset / PAGE_SIZE) as u32..end.div_ceil(PAGE_SIZE) as u32)
    }

    /// The pages of the ranges (see [`Shared::pages_of`]), in order, each once.
    fn pages_in(&self, ranges: &[(u64, u64)]) -> Vec<u32> {
        let mut pages: Vec<u32> = ranges
            .iter()
            .filter_map(|&r| self.pages_of(r))
            .flatten()
            .collect();
        pages.sort_unstable();
        pages.dedup();
        pages
    }

    /// Sends a frame to a peer.
    fn send(&self, to: NodeId, frame: Vec<u8>) -> Result<(), CoherenceError> {
        self.link
            .send(to, frame)
            .map_err(|reason| CoherenceError::Link { to, reason })
    }

    /// Carries out the gathered effects, then adds the gathered run to the frame going to
    /// its peer while that has room; a full frame goes out at once (a long answer streams
    /// while the rest of it is made). Runs to one peer keep their order.
    fn end_run(&self, b: &mut Batch<'_>) -> Result<(), CoherenceError> {
        let moved = self.move_out_whole(b)?;
        self.apply(b)?;
        let Some((to, run)) = b.run.take() else {
            return Ok(());
        };
        let m = run.message();
        if m.count == STREAMED_RUN && carries_page(m.msg) {
            // A whole huge page: its frame alone, after what the batch has for `to` so far;
            // its pages on the stream once the region is unlocked.
            if let Some(i) = b.out.iter().position(|(peer, _)| *peer == to) {
                let (_, before) = b.out.remove(i);
                self.send(to, before)?;
            }
            let head = PageMsg::streamed(m.vm, m.page);
            lock_plain(&self.outbox).push_back(Record {
                to,
                head,
                buffer: run.finish(),
                moved,
            });
            bump(&self.counters.streamed);
            return self.send(to, head.to_vec());
        }
        let (runs, buffer) = run.split();
        if buffer.capacity() > 0 {
            self.give_buffer(buffer);
        }
        for run in runs {
            match b.out.iter().position(|(peer, _)| *peer == to) {
                Some(i) if b.out[i].1.len() + run.len() <= MAX_FRAME => b.out[i].1.extend(run),
                Some(i) => {
                    let (_, full) = std::mem::replace(&mut b.out[i], (to, run));
                    self.send(to, full)?;
                }
                None => b.out.push((to, run)),
            }
        }
        Ok(())
    }

    /// Sends the batch's frames (its effects were carried out before each run ended).
    fn send_frames(&self, b: &mut Batch<'_>) -> Result<(), CoherenceError> {
        for (to, frame) in b.out.drain(..) {
            self.send(to, frame)?;
        }
        Ok(())
    }

    /// Carries out the gathered effects: each run of consecutive pages placed with one
    /// `UFFDIO_COPY` (straight from the message that carried them when it can), dropped with
    /// one `madvise`.
    fn apply(&self, b: &mut Batch<'_>) -> Result<(), CoherenceError> {
        self.take_deferred(b);
        let places = std::mem::take(&mut b.places);
        for run in places.chunk_by(|x, y| y.0 == x.0 + 1 && y.2 == x.2) {
            let (first, last, protect) = (run[0].0, run[run.len() - 1].0, run[0].2);
            let borrowed = run.iter().all(|(_, c, _)| matches!(c, Cow::Borrowed(_)));
            let from_source = b.sources.iter().copied().find(|&(at, src)| {
                borrowed && first >= at && ((last - at + 1) as usize) * PAGE <= src.len()
            });
            let gathered;
            let bytes = match from_source {
                Some((at, src)) => {
                    &src[(first - at) as usize * PAGE..(last - at + 1) as usize * PAGE]
                }
                None => {
                    let mut all = Vec::with_capacity(run.len() * PAGE);
                    for (_, c, _) in run {
                        all.extend_from_slice(c);
                    }
                    gathered = all;
                    &gathered[..]
                }
            };
            if protect {
                self.can_protect()?;
                self.uffd.copy_protected(self.addr(first), bytes)
            } else {
                self.uffd.copy_run(self.addr(first), bytes)
            }
            .map_err(Self::os("placing pages"))?;
        }
        let drops = std::mem::take(&mut b.drops);
        for run in drops.chunk_by(|x, y| *y == x + 1) {
            self.uffd
                .drop_pages(self.addr(run[0]), run.len() as u64 * PAGE_SIZE)
                .map_err(Self::os("dropping pages"))?;
        }
        Ok(())
    }

    /// The directory's part: requests and answers to the home.
    fn at_home<'a>(
        &self,
        inner: &mut Inner,
        b: &mut Batch<'a>,
        w: Work<'a>,
    ) -> Result<(), CoherenceError> {
        // Whether the home's own copy, recalled, stays as a read copy.
        let kept_here = inner.caches[w.page as usize].state == State::Shared;
        let Some(home) = inner.home.as_mut() else {
            return Err(CoherenceError::BadMessage(format!(
                "{:?} for page {} from node {}: this node is not the home",
                w.msg, w.page, w.from
            )));
        };
        if matches!(w.msg, Msg::GetS | Msg::GetM | Msg::GetE) {
            bump(&self.counters.served);
        }
        let out = home.dir.handle(w.from, w.page, w.msg)?;
        if let Msg::Flush(_) | Msg::PutM(_) = w.msg {
            home.backing[w.page as usize] = match w.bytes {
                Some(page) => Backing::Bytes(page.into_owned().into_boxed_slice()),
                // The home's own copy: kept as a read copy, or staged for the writer.
                None if w.from == self.cfg.node && kept_here => Backing::Mapped,
                None if w.from == self.cfg.node => Backing::Staged,
                None => return Err(no_contents()),
            };
        }
        self.send_from_home(inner, b, out)
    }

    /// Sends (or queues here) what the directory answered, with the page's contents where
    /// the message carries them.
    fn send_from_home<'a>(
        &self,
        inner: &mut Inner,
        b: &mut Batch<'a>,
        out: Vec<Envelope>,
    ) -> Result<(), CoherenceError> {
        for env in out {
            let Some(home) = inner.home.as_mut() else {
                return Ok(());
            };
            let backing = &mut home.backing[env.page as usize];
            if matches!(env.msg, Msg::DataM(_) | Msg::Grant) {
                // A grant makes the receiver the page's only holder: the directory's copy
                // goes with it (moved, not copied, when it stays here; a staged copy read
                // straight from the mapping, then dropped).
                let owned = std::mem::replace(backing, Backing::AtOwner);
                let page = env.page;
                if env.to == self.cfg.node {
                    let bytes = match (carries_page(env.msg), owned) {
                        (false, _) => None,
                        (true, Backing::Bytes(kept)) => Some(Cow::Owned(kept.into_vec())),
                        (true, other) => Some(Cow::Owned(
                            self.home_contents(inner, page, &other)?.to_vec(),
                        )),
                    };
                    self.route(b, env, bytes)?;
                } else {
                    let contents = match carries_page(env.msg) {
                        false => None,
                        true => Some(self.home_contents(inner, page, &owned)?),
                    };
                    let staged = matches!(owned, Backing::Staged) && inner.present[page as usize];
                    self.post(b, env, contents, staged && carries_page(env.msg))?;
                    if staged {
                        // Dropped with the batch's effects, before the run goes out.
                        b.drops.push(page);
                        inner.present[page as usize] = false;
                    }
                }
                continue;
            }
            let contents = match carries_page(env.msg) {
                false => None,
                true => {
                    let backing = match inner.home.as_ref() {
                        Some(h) => &h.backing[env.page as usize],
                        None => return Ok(()),
                    };
                    Some(self.home_contents(inner, env.page, backing)?)
                }
            };
            if env.to == self.cfg.node {
                let bytes = contents.map(|c| Cow::Owned(c.to_vec()));
                self.route(b, env, bytes)?;
            } else {
                self.post(b, env, contents, false)?;
            }
        }
        Ok(())
    }

    /// The page's contents as the home keeps them (`backing`).
    fn home_contents<'b>(
        &self,
        inner: &Inner,
        page: u32,
        backing: &'b Backing,
    ) -> Result<&'b [u8], CoherenceError> {
        match backing {
            Backing::Zeros => Ok(&ZEROS[..]),
            Backing::Bytes(b) => Ok(&b[..]),
            Backing::Mapped | Backing::Staged if inner.present[page as usize] => {
                // SAFETY: the page holds data here (`present`), so reading it does not
                // fault; it is write-protected (held Shared while `Mapped` lasts; `Staged`
                // by its recall) and pinned by no writer: nothing writes it while it is
                // borrowed (it is copied out at once).
                Ok(unsafe { std::slice::from_raw_parts(self.addr(page) as *const u8, PAGE) })
            }
            Backing::Mapped | Backing::Staged | Backing::AtOwner => Err(CoherenceError::Failed(
                format!("the home's copy of page {page} is gone"),
            )),
        }
    }

    /// This node's part: the home's word on a page, carried out on memory (read copies
    /// placed and pages dropped together, with the batch's effects).
    fn at_cache<'a>(
        &self,
        inner: &mut Inner,
        b: &mut Batch<'a>,
        w: Work<'a>,
    ) -> Result<(), CoherenceError> {
        // Gathered effects are on pages in increasing order; anything on one of those (or
        // before them) waits until they are carried out.
        let last = b.places.last().map(|x| x.0).max(b.drops.last().copied());
        if last.is_some_and(|l| l >= w.page) {
            self.apply(b)?;
        }
        if !matches!(w.msg, Msg::Recall { .. }) && b.protected.contains(&w.page) {
            // Its protection changes: it is not protected ahead of a recall any more.
            b.protected = 0..0;
        }
        if in_gather(inner, w.page) && !matches!(w.msg, Msg::DataM(_)) {
            self.place_gathered(inner)?;
        }
        let p = w.page as usize;
        let addr = self.addr(w.page);
        let out = inner.caches[p].handle(w.msg)?;
        let present = inner.present[p];
        let mut flushed = None;
        match w.msg {
            Msg::Inv => {
                bump(&self.counters.invalidated);
                if present {
                    self.keep_home_copy(inner, w.page);
                    b.drops.push(w.page);
                    inner.present[p] = false;
                }
            }
            Msg::Recall { keep } => {
                bump(&self.counters.recalled);
                let mut page = vec![0u8; PAGE];
                let at_home = self.cfg.node == self.cfg.home;
                if present && at_home && self.uffd.can_protect() {
                    // The home's copy is the page's contents (no copy; `Flush` without bytes
                    // says so): kept as its read copy, or staged in place for the writer it
                    // goes to (`Backing::Staged`: it stays mapped, write-protected, until
                    // copied into the grant).
                    self.protect_for_recall(inner, b, w.page, keep)?;
                    for env in out {
                        self.route(b, env, None)?;
                    }
                    return Ok(());
                }
                if present && !self.uffd.can_protect() {
                    // No write-protect: taken away with its contents at once, so that no
                    // write lands after the copy (a read copy cannot be kept).
                    if keep {
                        self.can_protect()?;
                    }
                    self.uffd
                        .take_out(addr, &mut page)
                        .map_err(Self::os("taking out a recalled page"))?;
                    inner.present[p] = false;
                } else if present {
                    // Protected first: no write can land after the copy is taken.
                    self.protect_for_recall(inner, b, w.page, keep)?;
                    // SAFETY: the page holds data (`present`), so reading it does not
                    // fault; it is write-protected, so nothing writes it meanwhile; `page`
                    // is a separate 4 KiB buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(addr as *const u8, page.as_mut_ptr(), PAGE)
                    };
                    if !keep {
                        b.drops.push(w.page);
                        inner.present[p] = false;
                    }
                }
                flushed = Some(Cow::Owned(page));
            }
            Msg::Data(_) => {
                bump(&self.counters.fetched);
                let page = w
                    .bytes
                    .filter(|c| c.len() == PAGE)
                    .ok_or_else(no_contents)?;
                b.places.push((w.page, page, true));
                inner.present[p] = true;
            }
            Msg::DataM(_) if !present => {
                bump(&self.counters.fetched);
                let page = w
                    .bytes
                    .filter(|c| c.len() == PAGE)
                    .ok_or_else(no_contents)?;
                if !self.gathered(inner, w.page, &page)? {
                    b.places.push((w.page, page, false));
                    inner.present[p] = true;
                }
            }
            Msg::DataM(_) => {
                bump(&self.counters.fetched);
                let page = w.bytes.as_deref().ok_or_else(no_contents)?;
                self.uffd
                    .drop_pages(addr, PAGE_SIZE)
                    .map_err(Self::os("replacing a stale copy"))?;
                self.uffd
                    .copy(addr, page)
                    .map_err(Self::os("placing a page"))?;
                inner.present[p] = true;
            }
            Msg::Grant => {
                bump(&self.counters.upgrades);
                if present {
                    self.can_protect()?;
                    self.uffd
                        .write_protect(addr, PAGE_SIZE, false)
                        .map_err(Self::os("making a read copy writable"))?;
                } else {
                    self.fill_if_empty(inner, w.page)?;
                }
            }
            Msg::GetS | Msg::GetM | Msg::GetE | Msg::InvAck | Msg::Flush(_) | Msg::PutM(_) => {}
        }
        for env in out {
            let bytes = matches!(env.msg, Msg::Flush(_))
                .then(|| flushed.take())
                .flatten();
            self.route(b, env, bytes)?;
        }
        Ok(())
    }

    /// The first page of the huge page `page` is in, if all of that huge page is in the
    /// region.
    fn huge_first(&self, page: u32) -> Option<u32> {
        let start = self.addr(page) & !(HUGE_PAGE - 1);
        let base = self.cfg.host_base;
        (start >= base && start + HUGE_PAGE <= base + self.cfg.len)
            .then(|| ((start - base) / PAGE_SIZE) as u32)
    }

    /// Takes `page`, just given to this node, into the huge page being gathered, or starts
    /// gathering its huge page if it is the first page of one whose other pages are all on
    /// their way here as a scan's; places the huge page once it is whole. `false`: not
    /// gathered (the caller places it).
    fn gathered(&self, inner: &mut Inner, page: u32, bytes: &[u8]) -> Result<bool, CoherenceError> {
        if !self.uffd.can_move() {
            return Ok(false);
        }
        let Some(first) = self.huge_first(page) else {
            return Ok(false);
        };
        let current = inner.gather.as_ref().is_some_and(|g| g.first == first);
        if !current {
            let all_coming = page == first
                && (first..first + HUGE_PAGES).all(|q| {
                    let c = &inner.caches[q as usize];
                    !inner.present[q as usize] && (q == first || (c.waiting.is_some() && c.may_own))
                });
            if !all_coming {
                return Ok(false);
            }
            self.place_gathered(inner)?;
            if inner.staging.is_none() {
                let staging = Staging::new(HUGE_PAGE).map_err(Self::os("making a staging area"))?;
                inner.staging = Some(staging);
            }
            inner.gather = Some(Gather {
                first,
                have: vec![false; HUGE_PAGES as usize],
                count: 0,
            });
        }
        let (Some(g), Some(staging)) = (inner.gather.as_mut(), inner.staging.as_mut()) else {
            return Ok(false);
        };
        let at = (page - first) as usize;
        staging.bytes()[at * PAGE..][..PAGE].copy_from_slice(bytes);
        if !g.have[at] {
            g.have[at] = true;
            g.count += 1;
        }
        if g.count == HUGE_PAGES {
            let offsets: Vec<u64> = (0..HUGE_PAGE).step_by(PAGE).collect();
            self.uffd
                .move_in(self.addr(first), staging.bytes(), &offsets)
                .map_err(Self::os("moving in a huge page"))?;
            staging
                .clear()
                .map_err(Self::os("emptying the staging area"))?;
            for q in first..first + HUGE_PAGES {
                inner.present[q as usize] = true;
            }
            inner.gather = None;
            bump(&self.counters.huge_pages);
        }
        Ok(true)
    }

    /// Places the pages gathered so far one by one (something needs one of them before
    /// the huge page is whole), and stops gathering.
    fn place_gathered(&self, inner: &mut Inner) -> Result<(), CoherenceError> {
        let (Some(g), Some(staging)) = (inner.gather.take(), inner.staging.as_mut()) else {
            return Ok(());
        };
        let bytes = staging.bytes();
        let mut at = 0;
        while at < HUGE_PAGES as usize {
            if !g.have[at] {
                at += 1;
                continue;
            }
            let end = (at..HUGE_PAGES as usize)
                .find(|&i| !g.have[i])
                .unwrap_or(HUGE_PAGES as usize);
            self.uffd
                .copy_run(
                    self.addr(g.first + at as u32),
                    &bytes[at * PAGE..end * PAGE],
                )
                .map_err(Self::os("placing gathered pages"))?;
            for i in at..end {
                inner.present[g.first as usize + i] = true;
            }
            at = end;
        }
        staging
            .clear()
            .map_err(Self::os("emptying the staging area"))
    }

    /// On the home, before its read copy of `page` goes: if that copy is what the directory
    /// keeps of the page ([`Backing::Mapped`]), copies it into the directory.
    fn keep_home_copy(&self, inner: &mut Inner, page: u32) {
        let addr = self.addr(page);
        if let Some(home) = inner.home.as_mut()
            && let Backing::Mapped = home.backing[page as usize]
        {
            let mut bytes = vec![0u8; PAGE].into_boxed_slice();
            // SAFETY: as in `at_cache`'s recall: the page holds data and is write-protected
            // (held Shared); `bytes` is a separate buffer.
            unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, bytes.as_mut_ptr(), PAGE) };
            home.backing[page as usize] = Backing::Bytes(bytes);
        }
    }

    /// Write-protects `page`, about to be recalled, unless it is already, with the recalls
    /// of the same kind right after it in the batch (one ioctl for the run).
    fn protect_for_recall(
        &self,
        inner: &Inner,
        b: &mut Batch<'_>,
        page: u32,
        keep: bool,
    ) -> Result<(), CoherenceError> {
        if b.protected.contains(&page) {
            return Ok(());
        }
        let end = self.recalls_after(inner, b, page, keep);
        self.uffd
            .write_protect(self.addr(page), (end - page) as u64 * PAGE_SIZE, true)
            .map_err(Self::os("write-protecting recalled pages"))?;
        b.protected = page..end;
        Ok(())
    }

    /// The end of the run of recalls from `page` on: `page` and the recalls (of the same
    /// kind) of the pages right after it waiting next in the batch, of pages that hold
    /// data and are not pinned, so that one ioctl write-protects them all.
    fn recalls_after(&self, inner: &Inner, b: &Batch<'_>, page: u32, keep: bool) -> u32 {
        let mut end = page + 1;
        for w in &b.queue {
            let next = w.page == end
                && w.from == self.cfg.home
                && w.msg == (Msg::Recall { keep })
                && inner.present[w.page as usize]
                && !inner.pins.contains_key(&w.page);
            if !next {
                break;
            }
            end += 1;
        }
        end
    }
}

/// Whether `page` is in the huge page being gathered (here or on its way).
fn in_gather(inner: &Inner, page: u32) -> bool {
    inner
        .gather
        .as_ref()
        .is_some_and(|g| (g.first..g.first + HUGE_PAGES).contains(&page))
}

/// What a fault asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// A read copy (`GetS`).
    Read,
    /// The page, to write (`GetM`).
    Write,
    /// A read copy, or the page if no other node shares it (`GetE`): a sequential scan's.
    Scan,
}

impl Want {
    fn of(write: bool) -> Want {
        if write { Want::Write } else { Want::Read }
    }

    fn fault(self, cache: &mut Cache) -> Option<Envelope> {
        match self {
            Want::Read => cache.fault(false),
            Want::Write => cache.fault(true),
            Want::Scan => cache.fault_scan(),
        }
    }
}

fn no_contents() -> CoherenceError {
    CoherenceError::BadMessage("a page message without its page".into())
}
