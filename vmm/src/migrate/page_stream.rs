//! The page stream: a VM's image and memory move over a net-msg bulk stream of their own
//! (one per migration), not over the mesh connection. One thread on each side does all of it,
//! with no queue or hand-off in between: the source copies a batch of pages into a buffer and
//! writes it as one record; the destination reads each record's page list, then its pages
//! straight into the arriving VM's memory with one vectored read, and checks the record's tag
//! (the VM does not run before every record was checked). Once a post-copy VM runs, pushed
//! pages are read into a buffer, checked, and placed with `UFFDIO_COPY`.
//!
//! Records (the head's first byte is its type; the stream's own framing carries lengths):
//!
//! ```text
//! OPEN   head: 1, vm u64                                   body: empty
//! IMAGE  head: 2, offset u64                               body: a piece of the image
//! PAGES  head: 3, count u32, count x guest address u64     body: count x 4 KiB
//!        (addresses page-aligned, strictly increasing)
//! SYNC   head: 4                                           body: empty
//! ACK    head: 5 (destination -> source, answers SYNC: everything before it is in place)
//! ERROR  head: 6 (destination -> source, then it closes)   body: the reason
//! ```

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use net_msg::{BodyTag, BulkStream, Node};

use super::host::Host;
use crate::memory::{GuestMem, PAGE_SIZE};
use crate::wire::{Decoder, Encoder};

/// The net-msg stream kind of a migration's page stream.
pub const KIND: u16 = 1;
/// Pages per `PAGES` record (1 MiB: fewer, larger reads and writes; still fits in cache
/// between the copy and the tag).
pub const PAGES_PER_RECORD: usize = 256;
/// Bytes of image per `IMAGE` record.
const IMAGE_CHUNK: usize = 1 << 20;
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
}

/// Bytes a record takes on the wire besides its head and body (lengths, tag).
const RECORD_OVERHEAD: u64 = 8 + 16;

impl PageSender {
    /// Opens the page stream of VM `vm` to node `to` (after `BEGIN` was accepted there).
    pub fn open(node: &Node, to: u32, vm: u64) -> Result<PageSender, String> {
        let stream = node
            .open_stream(to, KIND)
            .map_err(|e| format!("cannot open a page stream to node {to}: {e}"))?;
        stream
            .set_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut s = PageSender {
            stream,
            to,
            buf: vec![0u8; DATA_OFFSET + PAGES_PER_RECORD * PAGE_SIZE as usize],
            bytes: 0,
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
        let (before, mut pages) = (self.bytes, 0u64);
        let page = PAGE_SIZE as usize;
        let mut batch: Vec<u64> = Vec::with_capacity(PAGES_PER_RECORD);
        let mut tag = self.stream.body_tag();
        for &addr in addrs {
            let slot = DATA_OFFSET + batch.len() * page;
            let data = &mut self.buf[slot..slot + page];
            mem.read_into(addr, data)
                .map_err(|_| format!("cannot read guest page {addr:#x}"))?;
            if skip_zero && is_zero(data) {
                continue;
            }
            // Hashed now, while the page is in cache.
            tag.update(data);
            batch.push(addr);
            if batch.len() == PAGES_PER_RECORD {
                self.flush_pages(&batch, tag)?;
                pages += batch.len() as u64;
                batch.clear();
                tag = self.stream.body_tag();
            }
        }
        if !batch.is_empty() {
            self.flush_pages(&batch, tag)?;
            pages += batch.len() as u64;
        }
        Ok((pages, self.bytes - before))
    }

    fn flush_pages(&mut self, batch: &[u64], tag: BodyTag) -> Result<(), String> {
        let mut head = Encoder::with_capacity(5 + batch.len() * 8);
        head.u8(rec::PAGES).u32(batch.len() as u32);
        for &a in batch {
            head.u64(a);
        }
        let head = head.finish();
        let len = batch.len() * PAGE_SIZE as usize;
        self.bytes += RECORD_OVERHEAD + (head.len() + len) as u64;
        let body = &self.buf[DATA_OFFSET..DATA_OFFSET + len];
        let sent = self.stream.send_tagged(&head, body, tag);
        sent.map_err(|e| self.failed(e))
    }

    /// Waits until the destination has everything sent so far in place.
    pub fn sync(&mut self) -> Result<(), String> {
        self.send(&[rec::SYNC], &[])?;
        match self.stream.recv() {
            Ok(Some((head, _))) if head == [rec::ACK] => Ok(()),
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

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

/// Where the pages of a `PAGES` record go.
pub enum Target {
    /// An arriving VM, not running: straight into its memory, holding its lock (`GO` takes
    /// it before the VM starts).
    Arriving(GuestMem, Arc<Mutex<()>>),
    /// A post-copy VM running here: through userfaultfd, after the record was checked.
    Postcopy(Arc<super::host::PostcopyIn>),
}

/// The destination's end: serves one page stream until the source closes it. Errors end it
/// with an `ERROR` record, and drop the arriving VM (the source then resumes it at home).
pub fn serve(host: &Arc<Host>, mut stream: BulkStream) {
    let from = stream.peer();
    let _ = stream.set_timeout(Some(super::dest::STALE));
    let id = match stream.recv() {
        Ok(Some((head, _))) => {
            let mut d = Decoder::new(&head);
            match (d.u8(), d.u64()) {
                (Ok(rec::OPEN), Ok(id)) => id,
                _ => return,
            }
        }
        _ => return,
    };
    // Dropping the arriving VM (`ABORT`, silence) closes its stream.
    let opened = stream
        .closer()
        .map_err(|e| e.to_string())
        .and_then(|closer| host.stream_opened(id, from, closer));
    if let Err(e) = opened.and_then(|()| receive(host, &mut stream, from, id)) {
        tracing::warn!("page stream of VM {id:x} from node {from}: {e}");
        host.drop_arriving(id, from);
        let _ = stream.send(&[rec::ERROR], e.as_bytes());
    }
}

fn receive(host: &Arc<Host>, stream: &mut BulkStream, from: u32, id: u64) -> Result<(), String> {
    let mut buf = vec![0u8; DATA_OFFSET + PAGES_PER_RECORD * PAGE_SIZE as usize];
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
                    super::host::test_hook("pages");
                    first_pages = false;
                }
                let addrs = page_list(&mut d, head.body_len)?;
                match target {
                    Target::Arriving(mem, writing) => {
                        let _writing = writing.lock().unwrap_or_else(|e| e.into_inner());
                        // SAFETY: an arriving VM does not run (`GO` takes `writing` before it
                        // starts the VM, and afterwards this VM is no longer a
                        // `Target::Arriving`), and this thread is the only one that writes its
                        // memory.
                        let mut pages = unsafe { mem.pages_mut(&addrs) }
                            .map_err(|_| "page address outside guest memory".to_string())?;
                        stream.recv_body(&mut pages).map_err(|e| e.to_string())?;
                    }
                    Target::Postcopy(pin) => {
                        let body = &mut buf[DATA_OFFSET..DATA_OFFSET + head.body_len];
                        stream.recv_body(&mut [body]).map_err(|e| e.to_string())?;
                        pin.place(&addrs, &buf[DATA_OFFSET..DATA_OFFSET + head.body_len])?;
                    }
                }
            }
            rec::SYNC if head.body_len == 0 => {
                stream.recv_body(&mut []).map_err(|e| e.to_string())?;
                stream.send(&[rec::ACK], &[]).map_err(|e| e.to_string())?;
            }
            _ => return Err(format!("unexpected record of type {kind}")),
        }
    }
}

/// The addresses of a `PAGES` record, checked against the body's length.
fn page_list(d: &mut Decoder<'_>, body_len: usize) -> Result<Vec<u64>, String> {
    let n = d.u32().map_err(|e| e.to_string())? as usize;
    if n > PAGES_PER_RECORD || body_len != n * PAGE_SIZE as usize {
        return Err("PAGES record of a bad size".into());
    }
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        addrs.push(d.u64().map_err(|e| e.to_string())?);
    }
    d.end().map_err(|e| e.to_string())?;
    Ok(addrs)
}
