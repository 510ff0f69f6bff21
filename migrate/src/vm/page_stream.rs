//! The page stream: a VM's image and memory move over a net-msg bulk stream of their own
//! (one per migration, connected ahead of it: [`Spares`]), not over the mesh connection. One
//! thread on each side does all of it, with no queue or hand-off in between: the source
//! hashes the pages of a block in place and hands them to the socket as one record; the
//! destination reads each record's page list, then its pages
//! straight into the arriving VM's memory with one vectored read, and checks the record's tag
//! (the VM does not run before every record was checked). Once a post-copy VM runs, pushed
//! pages are read into a staging huge page, checked, and moved into the VM with
//! `UFFDIO_MOVE` (a whole 2 MiB at once where the guest has not touched that block yet; no
//! copy).
//!
//! Pages are hashed in place and sent straight from guest memory: a page the guest
//! changes in between makes the record's tag check fail at the destination. Before the VM
//! is stopped that is expected: the destination keeps such a record's pages as *to send
//! again* (their contents are not trusted) and lists them in its next `ACK`; the source sends
//! them again with the next round, and after the stop (nothing changes any more) from a copy.
//! The destination refuses to start a VM with a page still to send again.
//!
//! Records (the head's first byte is its type; the stream's own framing carries lengths):
//!
//! ```text
//! OPEN   head: 1, vm u64                                   body: empty
//! IMAGE  head: 2, offset u64                               body: a piece of the image
//! PAGES  head: 3, block u64, count u32, count x index u16  body: count x 4 KiB
//!        (the pages of one 2 MiB-aligned block of guest memory, by index in the block,
//!        strictly increasing; a post-copy push sends every non-zero page of a block in one
//!        record, so the pages of the block it does not send are zero)
//! SYNC   head: 4                                           body: empty
//! ACK    head: 5 (destination -> source, answers SYNC: everything before it is in place)
//!                                                          body: u64 addresses of pages to
//!                                                          send again (see below)
//! ERROR  head: 6 (destination -> source, then it closes)   body: the reason
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use net_msg::frame::FrameError;
use net_msg::{BulkStream, Node, SharedBytes, StreamCloser};

use super::dest::Fill;
use super::dest::PostcopyIn;
use pop_dsm::uffd::Staging;
use pop_wire::{Decoder, Encoder};
use vmm::memory::{GuestMem, PAGE_SIZE};

/// The net-msg stream kind of a migration's page stream.
pub const KIND: u16 = 1;
/// Bytes of guest memory a `PAGES` record covers (one huge page).
pub const BLOCK: u64 = pop_dsm::uffd::HUGE_PAGE;
/// Most pages in a `PAGES` record.
pub const PAGES_PER_RECORD: usize = (BLOCK / PAGE_SIZE) as usize;
/// Bytes of image per `IMAGE` record.
const IMAGE_CHUNK: usize = 1 << 20;
/// How long a stream that was opened waits for its VM's `BEGIN` to be taken.
const OPEN_WAIT: Duration = Duration::from_secs(2);
/// How long either side waits for the other before giving up.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Where page data starts in a buffer: not at a multiple of 4 KiB, because copying a whole
/// page between two page-aligned addresses takes glibc's `rep movsb` path, which runs at a
/// sixth of the speed of the vector loop on the AMD machines this was measured on (2.9 vs 17
/// GB/s).
const DATA_OFFSET: usize = 64;

mod rec {
    pub const OPEN: u8 = 1;
    pub const IMAGE: u8 = 2;
    pub const PAGES: u8 = 3;
    pub const SYNC: u8 = 4;
    pub const ACK: u8 = 5;
    pub const ERROR: u8 = 6;
}

/// The source's end: sends the image and pages of one VM to one node.
#[derive(Debug)]
pub struct PageSender {
    stream: BulkStream,
    to: u32,
    buf: Vec<u8>,
    /// Bytes sent (records, with their framing).
    pub bytes: u64,
    /// Pages the destination asked for again (changed on the way).
    pub resent: u64,
}

/// Bytes a record takes on the wire besides its head and body (lengths, tag).
const RECORD_OVERHEAD: u64 = 8 + 16;

/// Page streams opened ahead of their use, at most one per peer: a migration takes its
/// destination's (no connection and handshake on its way) and a new one is opened after it,
/// and when a peer comes up. One that the peer closed meanwhile is not used.
#[derive(Debug, Default, Clone)]
pub struct Spares(Arc<Mutex<SpareSet>>);

#[derive(Debug, Default)]
struct SpareSet {
    ready: HashMap<u32, BulkStream>,
    opening: HashSet<u32>,
}

impl Spares {
    fn set(&self) -> std::sync::MutexGuard<'_, SpareSet> {
        vmm::sync::lock(&self.0)
    }

    /// The spare stream to node `to`, if there is one still usable.
    pub fn take(&self, to: u32) -> Option<BulkStream> {
        let spare = self.set().ready.remove(&to)?;
        spare.is_usable().then_some(spare)
    }

    /// Forgets the spare stream to node `to` (its connection went down).
    pub fn forget(&self, to: u32) {
        self.set().ready.remove(&to);
    }

    /// Opens a spare stream to node `to` on a thread of its own, unless there is one or one
    /// is being opened.
    pub fn refill(&self, node: &Arc<Node>, to: u32) {
        {
            let mut set = self.set();
            if set.ready.contains_key(&to) || !set.opening.insert(to) {
                return;
            }
        }
        let (spares, node) = (self.clone(), node.clone());
        let spawned = std::thread::Builder::new()
            .name("spare-stream".into())
            .spawn(move || {
                let opened = node.open_stream(to, KIND);
                let mut set = spares.set();
                set.opening.remove(&to);
                match opened {
                    Ok(stream) => {
                        set.ready.insert(to, stream);
                    }
                    Err(e) => tracing::debug!("no spare page stream to node {to}: {e}"),
                }
            });
        if spawned.is_err() {
            self.set().opening.remove(&to);
        }
    }
}

impl PageSender {
    /// Opens the page stream of VM `vm` to node `to` (`to`'s spare from `spares` if it has
    /// one), and says which VM it is for.
    pub fn open(node: &Node, spares: &Spares, to: u32, vm: u64) -> Result<PageSender, String> {
        let stream = match spares.take(to) {
            Some(spare) => spare,
            None => node
                .open_stream(to, KIND)
                .map_err(|e| format!("cannot open a page stream to node {to}: {e}"))?,
        };
        stream
            .set_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut s = PageSender {
            stream,
            to,
            buf: vec![0u8; DATA_OFFSET + PAGES_PER_RECORD * PAGE_SIZE as usize],
            bytes: 0,
            resent: 0,
        };
        let mut head = Encoder::default();
        head.u8(rec::OPEN).u64(vm);
        s.send(&head.finish(), &[])?;
        Ok(s)
    }

    /// Sends one record.
    fn send(&mut self, head: &[u8], body: &[u8]) -> Result<(), String> {
        self.bytes += RECORD_OVERHEAD + (head.len() + body.len()) as u64;
        self.stream.send(head, body).map_err(|e| self.failed(e))
    }

    /// Why a send failed: the destination's own `ERROR` if it sent one before closing.
    fn failed(&mut self, e: net_msg::Error) -> String {
        let _ = self.stream.set_timeout(Some(Duration::from_millis(200)));
        let theirs = match self.stream.recv() {
            Ok(Some((head, body))) if head.first() == Some(&rec::ERROR) => {
                Some(String::from_utf8_lossy(&body).into_owned())
            }
            _ => None,
        };
        let _ = self.stream.set_timeout(Some(TIMEOUT));
        match theirs {
            Some(why) => format!("node {} refused the VM's pages: {why}", self.to),
            None => format!("sending to node {}: {e}", self.to),
        }
    }

    /// Sends the VM's image.
    pub fn image(&mut self, image: &[u8]) -> Result<(), String> {
        for (i, chunk) in image.chunks(IMAGE_CHUNK).enumerate() {
            let mut head = Encoder::default();
            head.u8(rec::IMAGE).u64((i * IMAGE_CHUNK) as u64);
            self.send(&head.finish(), chunk)?;
        }
        Ok(())
    }

    /// Sends the pages of `mem` at `addrs` (in increasing order), skipping all-zero pages if
    /// `skip_zero` (the destination's memory starts zeroed). Returns (pages, bytes) sent.
    pub fn pages(
        &mut self,
        mem: &GuestMem,
        addrs: &[u64],
        skip_zero: bool,
    ) -> Result<(u64, u64), String> {
        self.send_pages(mem, addrs, skip_zero, false)
    }

    /// [`PageSender::pages`] sent from a copy (nothing the guest does can change them on the
    /// way): for pages sent again after the VM stopped.
    pub fn pages_copied(&mut self, mem: &GuestMem, addrs: &[u64]) -> Result<(u64, u64), String> {
        self.send_pages(mem, addrs, false, true)
    }

    fn send_pages(
        &mut self,
        mem: &GuestMem,
        addrs: &[u64],
        skip_zero: bool,
        copied: bool,
    ) -> Result<(u64, u64), String> {
        let (before, mut pages) = (self.bytes, 0u64);
        // The block being filled, and its pages' indices.
        let mut block: Option<u64> = None;
        let mut batch: Vec<u16> = Vec::with_capacity(PAGES_PER_RECORD);
        for &addr in addrs {
            let here = addr & !(BLOCK - 1);
            if block.is_some_and(|b| b != here) && !batch.is_empty() {
                self.flush_pages(mem, block.unwrap_or(here), &batch, copied)?;
                pages += batch.len() as u64;
                batch.clear();
            }
            block = Some(here);
            // Zero pages are found in place (many are: huge pages and reused memory make
            // whole blocks resident), and not sent.
            if skip_zero && mem.page_is_zero(addr) == Ok(true) {
                continue;
            }
            batch.push(((addr - here) / PAGE_SIZE) as u16);
        }
        if let (Some(b), false) = (block, batch.is_empty()) {
            self.flush_pages(mem, b, &batch, copied)?;
            pages += batch.len() as u64;
        }
        Ok((pages, self.bytes - before))
    }

    /// Sends the pages of `block` at `batch` (indices in it) as one `PAGES` record: straight
    /// from guest memory, hashed in place a piece at a time right before the kernel copies
    /// that piece (if the guest writes a page meanwhile, the record's tag check fails at the
    /// destination, which asks for the page again); with `copied`, from copies.
    fn flush_pages(
        &mut self,
        mem: &GuestMem,
        block: u64,
        batch: &[u16],
        copied: bool,
    ) -> Result<(), String> {
        let mut head = Encoder::with_capacity(13 + batch.len() * 2);
        head.u8(rec::PAGES).u64(block).u32(batch.len() as u32);
        for &i in batch {
            head.u16(i);
        }
        let head = head.finish();
        let len = batch.len() * PAGE_SIZE as usize;
        self.bytes += RECORD_OVERHEAD + (head.len() + len) as u64;
        if copied {
            let page = PAGE_SIZE as usize;
            for (k, &i) in batch.iter().enumerate() {
                let addr = block + u64::from(i) * PAGE_SIZE;
                let slot = DATA_OFFSET + k * page;
                mem.read_into(addr, &mut self.buf[slot..slot + page])
                    .map_err(|_| format!("cannot read guest page {addr:#x}"))?;
            }
            let body = &self.buf[DATA_OFFSET..DATA_OFFSET + len];
            let sent = self.stream.send_parts(&head, &[body]);
            return sent.map_err(|e| self.failed(e));
        }
        // Runs of consecutive pages, straight from guest memory (the guest may write them
        // meanwhile: they are read through their raw addresses only).
        let mut parts: Vec<SharedBytes<'_>> = Vec::new();
        let mut i = 0;
        while i < batch.len() {
            let mut n = 1;
            while i + n < batch.len() && batch[i + n] == batch[i] + n as u16 {
                n += 1;
            }
            let addr = block + u64::from(batch[i]) * PAGE_SIZE;
            let len = n as u64 * PAGE_SIZE;
            let run = mem
                .host_ptr(addr, len)
                .map_err(|_| format!("cannot read guest page {addr:#x}"))?;
            // SAFETY: the run lies in `mem`'s mapping (checked by `host_ptr`), which `mem`
            // keeps alive while this borrow of it lasts.
            parts.push(unsafe { SharedBytes::new(run, len as usize) });
            i += n;
        }
        let sent = self.stream.send_shared(&head, &parts);
        sent.map_err(|e| self.failed(e))
    }

    /// Waits until the destination has everything sent so far in place; returns the pages it
    /// wants again (their records arrived changed: the guest wrote them while they were sent).
    pub fn sync(&mut self) -> Result<Vec<u64>, String> {
        self.send(&[rec::SYNC], &[])?;
        match self.stream.recv() {
            Ok(Some((head, body))) if head == [rec::ACK] && body.len() % 8 == 0 => {
                self.resent += (body.len() / 8) as u64;
                Ok(body
                    .chunks_exact(8)
                    .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                    .collect())
            }
            Ok(Some((head, body))) if head.first() == Some(&rec::ERROR) => Err(format!(
                "node {} refused the VM's pages: {}",
                self.to,
                String::from_utf8_lossy(&body)
            )),
            Ok(_) => Err(format!("node {} closed the page stream", self.to)),
            Err(e) => Err(format!("node {} stopped answering: {e}", self.to)),
        }
    }
}

/// Where the pages of a `PAGES` record go.
pub enum Target {
    /// An arriving VM, not running: straight into its memory, holding its lock (`GO` marks
    /// the VM started under it before the VM starts).
    Arriving(GuestMem, Arc<Mutex<Fill>>),
    /// A post-copy VM running here: through userfaultfd, after the record was checked.
    Postcopy(Arc<PostcopyIn>),
}

/// What a destination's page stream puts its records into: the VMs arriving at this node.
pub trait Arrivals: Sync {
    /// Whether VM `id` is arriving from node `from`.
    fn is_arriving(&self, id: u64, from: u32) -> bool;
    /// Whether this node refused VM `id` from node `from` lately.
    fn was_refused(&self, id: u64, from: u32) -> bool;
    /// The page stream of VM `id` from node `from` opened; `closer` ends it if the VM is
    /// dropped before it starts. Returns the memory its post-copy pushes go through, if the
    /// pool had some.
    fn stream_opened(
        &self,
        id: u64,
        from: u32,
        closer: StreamCloser,
    ) -> Result<Option<GuestMem>, String>;
    /// Forgets VM `id` arriving from node `from` if it has not started (a failed migration).
    fn drop_arriving(&self, id: u64, from: u32);
    /// Where the pages of VM `id`'s page stream from node `from` go now.
    fn page_target(&self, id: u64, from: u32) -> Result<Target, String>;
    /// A piece of the image of VM `id`, arriving from node `from`.
    fn image_chunk(&self, id: u64, from: u32, offset: u64, data: &[u8]) -> Result<(), String>;
}

/// The destination's end: serves one page stream until the source closes it. Errors end it
/// with an `ERROR` record, and drop the arriving VM (the source then resumes it at home).
pub fn serve(host: &dyn Arrivals, mut stream: BulkStream) {
    let from = stream.peer();
    // A stream opened ahead (a spare) waits for its migration as long as it takes.
    let _ = stream.set_timeout(None);
    let opening = stream.recv();
    let _ = stream.set_timeout(Some(super::dest::STALE));
    let id = match opening {
        Ok(Some((head, _))) => {
            let mut d = Decoder::new(&head);
            match (d.u8(), d.u64()) {
                (Ok(rec::OPEN), Ok(id)) => id,
                _ => return,
            }
        }
        _ => return,
    };
    // The source opens its stream while this node takes its `BEGIN`: wait for it a little.
    let since = std::time::Instant::now();
    while !host.is_arriving(id, from) && !host.was_refused(id, from) && since.elapsed() < OPEN_WAIT
    {
        std::thread::sleep(Duration::from_micros(200));
    }
    // Dropping the arriving VM (`ABORT`, silence) closes its stream.
    let opened = stream
        .closer()
        .map_err(|e| e.to_string())
        .and_then(|closer| host.stream_opened(id, from, closer));
    if let Err(e) = opened.and_then(|donor| receive(host, &mut stream, from, id, donor)) {
        tracing::warn!("page stream of VM {id:x} from node {from}: {e}");
        host.drop_arriving(id, from);
        let _ = stream.send(&[rec::ERROR], e.as_bytes());
    }
}

fn receive(
    host: &dyn Arrivals,
    stream: &mut BulkStream,
    from: u32,
    id: u64,
    donor: Option<GuestMem>,
) -> Result<(), String> {
    // Post-copy pushes are read into the same block of `donor` (memory a VM left here), or
    // else into this staging huge page (made at the first).
    let mut staging: Option<Staging> = None;
    let mut first_pages = true;
    loop {
        let Some(head) = stream.recv_head().map_err(|e| e.to_string())? else {
            // Closed by the source: whatever did not start here is abandoned.
            host.drop_arriving(id, from);
            return Ok(());
        };
        let mut d = Decoder::new(&head.head);
        let kind = d.u8().map_err(|e| e.to_string())?;
        let target = host.page_target(id, from)?;
        match kind {
            rec::IMAGE => {
                let offset = d.u64().map_err(|e| e.to_string())?;
                let mut body = vec![0u8; head.body_len];
                stream
                    .recv_body(&mut [&mut body])
                    .map_err(|e| e.to_string())?;
                host.image_chunk(id, from, offset, &body)?;
            }
            rec::PAGES => {
                if first_pages {
                    crate::test_hook("pages");
                    first_pages = false;
                }
                let (block, indices) = page_list(&mut d, head.body_len)?;
                match target {
                    Target::Arriving(mem, fill) => {
                        let mut fill = vmm::sync::lock(&fill);
                        if fill.started {
                            return Err("pages for a VM that started".into());
                        }
                        let addrs: Vec<u64> = indices.iter().map(|&i| block + i).collect();
                        if let Some(written) = &mut fill.written {
                            addrs.iter().for_each(|&a| written.insert(a));
                        }
                        // SAFETY: an arriving VM does not run (`GO` marks it started under
                        // this lock, held until the body is read, before it starts the VM),
                        // and this thread is the only one that writes its memory.
                        let mut pages = unsafe { mem.pages_mut(&addrs) }
                            .map_err(|_| "page address outside guest memory".to_string())?;
                        match stream.recv_body(&mut pages) {
                            Ok(()) => addrs.iter().for_each(|a| {
                                fill.resend.remove(a);
                            }),
                            // Changed on the way (the guest wrote them): wanted again.
                            Err(net_msg::Error::Frame(FrameError::BadTag)) => {
                                fill.resend.extend(&addrs);
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    Target::Postcopy(pin) => {
                        let (dst, len) =
                            pin.region.block(block, BLOCK).map_err(|e| e.to_string())?;
                        if indices.last().is_some_and(|&o| o + PAGE_SIZE > len) {
                            return Err("pushed pages outside the shared region".into());
                        }
                        let src: &mut [u8] = match &donor {
                            // SAFETY: the donor is this thread's alone (taken from the pool
                            // for this VM and handed over at `OPEN`); each block of it is
                            // used once.
                            Some(d) => unsafe { d.bytes_mut(block, len) }
                                .map_err(|_| "pushed pages outside guest memory".to_string())?,
                            None => {
                                let stage = match &mut staging {
                                    Some(s) => s,
                                    None => staging
                                        .insert(Staging::new(BLOCK).map_err(|e| e.to_string())?),
                                };
                                &mut stage.bytes()[..len as usize]
                            }
                        };
                        // In the donor the pages the record does not carry are zeroed (a
                        // staging page's are zero already).
                        let mut pages = pages_at(&mut *src, &indices, donor.is_some());
                        stream.recv_body(&mut pages).map_err(|e| e.to_string())?;
                        drop(pages);
                        let left = pin
                            .region
                            .place_block(dst, src, &indices)
                            .map_err(|e| e.to_string())?;
                        if let (true, Some(stage)) = (left, &mut staging) {
                            stage.clear().map_err(|e| e.to_string())?;
                        }
                    }
                }
            }
            rec::SYNC if head.body_len == 0 => {
                stream.recv_body(&mut []).map_err(|e| e.to_string())?;
                let mut again = Vec::new();
                if let Target::Arriving(_, fill) = &target {
                    let fill = vmm::sync::lock(fill);
                    again.extend(fill.resend.iter().flat_map(|a| a.to_le_bytes()));
                }
                stream
                    .send(&[rec::ACK], &again)
                    .map_err(|e| e.to_string())?;
                // The first round is complete: in reused memory, what it did not write is
                // zeroed now (after the answer, while the source decides what comes next; the
                // next record is read after it).
                if let Target::Arriving(mem, fill) = target {
                    let mut fill = vmm::sync::lock(&fill);
                    fill.zero_unwritten(&mem);
                }
            }
            _ => return Err(format!("unexpected record of type {kind}")),
        }
    }
}

/// The pages at `offsets` (increasing, each inside) of `block`; with `zero_gaps`, the bytes
/// between them are zeroed.
fn pages_at<'a>(block: &'a mut [u8], offsets: &[u64], zero_gaps: bool) -> Vec<&'a mut [u8]> {
    let mut pages = Vec::with_capacity(offsets.len());
    let mut rest = block;
    let mut at = 0;
    for &offset in offsets {
        let (gap, tail) = rest.split_at_mut((offset - at) as usize);
        let (page, tail) = tail.split_at_mut(PAGE_SIZE as usize);
        if zero_gaps {
            gap.fill(0);
        }
        pages.push(page);
        rest = tail;
        at = offset + PAGE_SIZE;
    }
    if zero_gaps {
        rest.fill(0);
    }
    pages
}

/// The block of a `PAGES` record and its pages' offsets in it (strictly increasing),
/// checked against the body's length.
fn page_list(d: &mut Decoder<'_>, body_len: usize) -> Result<(u64, Vec<u64>), String> {
    let bad = |e: pop_wire::WireError| e.to_string();
    let block = d.u64().map_err(bad)?;
    let n = d.u32().map_err(bad)? as usize;
    if !block.is_multiple_of(BLOCK) || n > PAGES_PER_RECORD || body_len != n * PAGE_SIZE as usize {
        return Err("PAGES record of a bad size or block".into());
    }
    let mut offsets: Vec<u64> = Vec::with_capacity(n);
    for _ in 0..n {
        let i = u64::from(d.u16().map_err(bad)?);
        if i as usize >= PAGES_PER_RECORD || offsets.last().is_some_and(|&l| l >= i * PAGE_SIZE) {
            return Err("PAGES record with bad page indices".into());
        }
        offsets.push(i * PAGE_SIZE);
    }
    d.end().map_err(bad)?;
    Ok((block, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(block: u64, indices: &[u16]) -> Vec<u8> {
        let mut e = Encoder::default();
        e.u64(block).u32(indices.len() as u32);
        for &i in indices {
            e.u16(i);
        }
        e.finish()
    }

    #[test]
    fn pages_are_cut_at_their_offsets_and_the_gaps_zeroed() {
        let mut block = vec![7u8; 4 * 4096];
        let mut pages = pages_at(&mut block, &[4096, 3 * 4096], true);
        assert_eq!(pages.len(), 2);
        pages[0].fill(1);
        pages[1].fill(3);
        drop(pages);
        let page = |i: usize| block[i * 4096..(i + 1) * 4096].to_vec();
        assert_eq!((page(0), page(1)), (vec![0; 4096], vec![1; 4096]));
        assert_eq!((page(2), page(3)), (vec![0; 4096], vec![3; 4096]));
        let mut kept = vec![7u8; 2 * 4096];
        drop(pages_at(&mut kept, &[0], false));
        assert!(kept.iter().all(|&b| b == 7));
    }

    #[test]
    fn page_lists_are_checked() {
        let ok = head(BLOCK * 3, &[0, 5, 511]);
        let (block, offsets) = page_list(&mut Decoder::new(&ok), 3 * 4096).unwrap();
        assert_eq!((block, offsets), (BLOCK * 3, vec![0, 5 * 4096, 511 * 4096]));
        for (bad, body) in [
            (head(BLOCK * 3, &[0, 5]), 3 * 4096), // body of another length
            (head(BLOCK + 4096, &[0]), 4096),     // unaligned block
            (head(0, &[5, 5]), 2 * 4096),         // a page twice
            (head(0, &[6, 5]), 2 * 4096),         // not increasing
            (head(0, &[512]), 4096),              // outside the block
        ] {
            assert!(page_list(&mut Decoder::new(&bad), body).is_err());
        }
        let mut long = head(0, &[1]);
        long.push(0);
        assert!(page_list(&mut Decoder::new(&long), 4096).is_err());
    }
}
