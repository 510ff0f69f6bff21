//! Bulk streams: an authenticated connection of its own between two nodes, for one transfer
//! of many bytes (a VM's memory), beside the mesh connection that keeps carrying messages.
//!
//! A stream is opened with [`crate::Node::open_stream`] and handed to the peer's stream
//! handler ([`crate::Node::serve_streams`]). It runs the same handshake as a mesh connection
//! (so fresh keys of its own) with the stream's *kind* in the Hello. Both directions then carry
//! *records*, written and read by the caller's thread with no queue in between:
//!
//! ```text
//! record = head_len u32 | body_len u32 | head | body | tag (16 bytes, if tags are on)
//! tag    = AEGIS-128X2 MAC (direction's key, nonce = record number) over body, head, lengths
//! ```
//!
//! The head is small (at most [`MAX_HEAD`]) and read first, so that the receiver can decide
//! where the body goes (say, straight into guest memory) before reading it with one vectored
//! read. The tag is checked after the body was read: a receiver that reads a body into memory
//! it cares about must treat that memory as untrusted until [`BulkStream::recv_body`] returns
//! `Ok`.
//!
//! Records are tagged with AEGIS-128X2 rather than the frames' AEGIS-128L: two AES lanes at
//! once, twice the speed on data in cache (36 against 18 GB/s here), which is what a bulk
//! transfer hashes.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};

use std::time::Duration;

use crate::NodeId;
use crate::error::{Error, Result};
use aegis::aegis128x2::Aegis128X2Mac;

use crate::frame::{FrameError, FrameMac, TAG_LEN};
use crate::transport::Stream;

/// Largest record head accepted.
pub const MAX_HEAD: usize = 64 << 10;
/// Largest record body accepted.
pub const MAX_BODY: usize = 16 << 20;
/// Socket buffer size asked for each way.
const SOCKET_BUFFER: usize = 4 << 20;
/// Bytes of body [`BulkStream::send_parts`] hashes before it writes them: inside a core's
/// L2 cache, and few enough writes (64 KiB pieces were measured 20% slower).
pub const SEND_CHUNK: usize = 256 << 10;
/// Bytes read ahead past a body (the tag, the next record's lengths and head).
const READ_AHEAD: usize = 4096;

/// One end of a bulk stream (see the module documentation).
pub struct BulkStream {
    peer: NodeId,
    kind: u16,
    stream: Stream,
    send_mac: Option<RecordMac>,
    recv_mac: Option<RecordMac>,
    /// Read-ahead buffer: `buf[at..filled]` is unread.
    buf: Box<[u8]>,
    at: usize,
    filled: usize,
    /// The record whose head was returned and whose body is still to be read.
    pending: Option<Pending>,
    /// Where [`BulkStream::send_shared`] takes its snapshots on aarch64 (made at its first
    /// use).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    send_buf: Vec<u8>,
}

struct Pending {
    lens: [u8; 8],
    body_len: usize,
    head: Vec<u8>,
}

impl std::fmt::Debug for BulkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkStream")
            .field("peer", &self.peer)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A piece of memory that something else may write while it is being sent (a running
/// guest's memory): a raw range, never turned into a Rust reference (see
/// [`BulkStream::send_shared`]).
#[derive(Clone, Copy, Debug)]
pub struct SharedBytes<'a> {
    ptr: *const u8,
    len: usize,
    _memory: std::marker::PhantomData<&'a ()>,
}

impl SharedBytes<'_> {
    /// The `len` bytes at `ptr`.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must stay mapped and readable for as long as the value is used.
    pub unsafe fn new(ptr: *const u8, len: usize) -> Self {
        SharedBytes {
            ptr,
            len,
            _memory: std::marker::PhantomData,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Shuts a stream down from another thread (its reader then gets an error).
#[derive(Debug)]
pub struct StreamCloser(Stream);

impl StreamCloser {
    /// Shuts both directions down.
    pub fn close(&self) {
        self.0.shutdown();
    }
}

/// The head of a record just received; its body comes next.
#[derive(Debug)]
pub struct RecordHead {
    /// The head's bytes (not yet authenticated: see [`BulkStream::recv_body`]).
    pub head: Vec<u8>,
    /// Bytes of the body that follows.
    pub body_len: usize,
}

/// Feeds `h` the bytes of `parts` from position `from` up to `to` (each a part and an
/// offset in it); returns `to`.
fn hash_between(
    h: &mut Aegis128X2Mac<TAG_LEN>,
    parts: &[&mut [u8]],
    from: (usize, usize),
    to: (usize, usize),
) -> (usize, usize) {
    let (mut i, mut off) = from;
    while (i, off) < to {
        let end = if i == to.0 { to.1 } else { parts[i].len() };
        h.update(&parts[i][off..end]);
        (i, off) = (i + 1, 0);
    }
    to
}

fn lengths(head: usize, body: usize) -> [u8; 8] {
    let mut l = [0u8; 8];
    l[..4].copy_from_slice(&(head as u32).to_le_bytes());
    l[4..].copy_from_slice(&(body as u32).to_le_bytes());
    l
}

/// One direction's record authenticator: the session key and the next record's number.
struct RecordMac {
    key: [u8; 16],
    seq: u64,
}

impl RecordMac {
    /// The nonce of the next record: its number.
    fn nonce(&self) -> [u8; 16] {
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.seq.to_le_bytes());
        nonce
    }

    fn new(frames: FrameMac) -> RecordMac {
        let mut key = [0u8; 16];
        key.copy_from_slice(&frames.key()[..16]);
        RecordMac { key, seq: 0 }
    }

    /// Starts the next record's tag (its nonce: the record's number).
    fn start(&self) -> Aegis128X2Mac<TAG_LEN> {
        Aegis128X2Mac::new_with_nonce(&self.key, &self.nonce())
    }

    /// Ends the record's tag with its lengths; advances the record number.
    fn finish(&mut self, mut h: Aegis128X2Mac<TAG_LEN>, lengths: &[u8; 8]) -> [u8; TAG_LEN] {
        h.update(lengths);
        self.seq = self.seq.wrapping_add(1);
        h.finalize()
    }
}

impl BulkStream {
    pub(crate) fn new(
        peer: NodeId,
        kind: u16,
        stream: Stream,
        send_mac: Option<FrameMac>,
        recv_mac: Option<FrameMac>,
    ) -> BulkStream {
        if let Err(e) = stream.set_buffer_sizes(SOCKET_BUFFER) {
            tracing::debug!("bulk stream to node {peer}: socket buffers: {e}");
        }
        BulkStream {
            peer,
            kind,
            stream,
            send_mac: send_mac.map(RecordMac::new),
            recv_mac: recv_mac.map(RecordMac::new),
            buf: vec![0u8; READ_AHEAD].into_boxed_slice(),
            at: 0,
            filled: 0,
            pending: None,
            send_buf: Vec::new(),
        }
    }

    /// The node at the other end (proven by the handshake).
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// What the stream is for (chosen by the side that opened it).
    pub fn kind(&self) -> u16 {
        self.kind
    }

    /// Whether the stream can still carry records and the peer has sent nothing unread: for a
    /// stream opened ahead of its use, checked (without blocking) before it is used.
    pub fn is_usable(&self) -> bool {
        self.pending.is_none() && self.at == self.filled && self.stream.is_quiet_open()
    }

    /// Sets the longest a read or a write may block (None: no limit).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<()> {
        Ok(self.stream.set_timeouts(t)?)
    }

    /// A handle that shuts this stream down from another thread.
    pub fn closer(&self) -> Result<StreamCloser> {
        Ok(StreamCloser(self.stream.try_clone()?))
    }

    /// Sends one record.
    pub fn send(&mut self, head: &[u8], body: &[u8]) -> Result<()> {
        self.send_parts(head, &[body])
    }

    /// Sends one record whose body is `body`'s pieces in order, hashing and writing it a
    /// [`SEND_CHUNK`] at a time: each byte is read from memory once, by the hash, and is
    /// still in cache when the kernel copies it. For memory that may change on the way (a
    /// running guest's), use [`BulkStream::send_shared`].
    pub fn send_parts(&mut self, head: &[u8], body: &[&[u8]]) -> Result<()> {
        let body_len: usize = body.iter().map(|p| p.len()).sum();
        if head.len() > MAX_HEAD || body_len > MAX_BODY {
            return Err(Error::TooLarge(head.len().max(body_len)));
        }
        let lens = lengths(head.len(), body_len);
        let mut h = self.send_mac.as_ref().map(RecordMac::start);
        let mut chunk: Vec<IoSlice<'_>> = vec![IoSlice::new(&lens), IoSlice::new(head)];
        let mut in_chunk = 0;
        for piece in body {
            for part in piece.chunks(SEND_CHUNK) {
                if let Some(h) = &mut h {
                    h.update(part);
                }
                chunk.push(IoSlice::new(part));
                in_chunk += part.len();
                if in_chunk >= SEND_CHUNK {
                    self.write_all_vectored(&mut chunk)?;
                    chunk.clear();
                    in_chunk = 0;
                }
            }
        }
        let tag = match (self.send_mac.as_mut(), h) {
            (Some(mac), Some(mut h)) => {
                h.update(head);
                Some(mac.finish(h, &lens))
            }
            _ => None,
        };
        if let Some(tag) = &tag {
            chunk.push(IoSlice::new(tag));
        }
        self.write_all_vectored(&mut chunk)
    }

    /// Sends one record whose body is `body`'s pieces in order, where the pieces are memory
    /// that something else may write meanwhile (a running guest's): they are never read
    /// through a Rust reference, only through their raw pointers (by C code and the kernel).
    pub fn send_shared(&mut self, head: &[u8], body: &[SharedBytes<'_>]) -> Result<()> {
        #[cfg(not(target_arch = "aarch64"))]
        return self.send_raw(head, body);
        #[cfg(target_arch = "aarch64")]
        return self.send_snapshot(head, body);
    }

    /// [`BulkStream::send_shared`] where the tag is computed by libaegis's C code, which
    /// reads the pieces through their raw pointers, and the kernel reads them through raw
    /// `iovec`s: each byte is read from memory once by the hash and is still in cache when
    /// the kernel copies it (a piece that changes on the way fails its tag at the peer, which
    /// refuses the record; the stream stays usable).
    #[cfg(not(target_arch = "aarch64"))]
    fn send_raw(&mut self, head: &[u8], body: &[SharedBytes<'_>]) -> Result<()> {
        let body_len: usize = body.iter().map(|p| p.len).sum();
        if head.len() > MAX_HEAD || body_len > MAX_BODY {
            return Err(Error::TooLarge(head.len().max(body_len)));
        }
        let lens = lengths(head.len(), body_len);
        let mut h = self
            .send_mac
            .as_ref()
            .map(|m| raw_mac::RawMac::new(&m.key, &m.nonce()));
        let iov = |ptr: *const u8, len: usize| libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        let mut chunk = vec![
            iov(lens.as_ptr(), lens.len()),
            iov(head.as_ptr(), head.len()),
        ];
        let mut in_chunk = 0;
        for piece in body {
            let mut done = 0;
            while done < piece.len {
                let n = (piece.len - done).min(SEND_CHUNK);
                // SAFETY: `SharedBytes::new`'s contract keeps the piece mapped and readable.
                let part = unsafe { piece.ptr.add(done) };
                if let Some(h) = &mut h {
                    // SAFETY: as above; the C code reads `n` bytes at `part` and keeps no
                    // pointer.
                    unsafe { h.update_raw(part, n) };
                }
                chunk.push(iov(part, n));
                in_chunk += n;
                done += n;
                if in_chunk >= SEND_CHUNK {
                    // SAFETY: every iovec points at memory that is mapped while this runs
                    // (the caller's pieces, `lens` and `head`).
                    unsafe { self.writev_all(&mut chunk) }?;
                    chunk.clear();
                    in_chunk = 0;
                }
            }
        }
        let tag = match (self.send_mac.as_mut(), h) {
            (Some(mac), Some(mut h)) => {
                h.update(head);
                h.update(&lens);
                mac.seq = mac.seq.wrapping_add(1);
                Some(h.finalize())
            }
            _ => None,
        };
        if let Some(tag) = &tag {
            chunk.push(iov(tag.as_ptr(), tag.len()));
        }
        // SAFETY: as above, and `tag` lives to the end of the call.
        unsafe { self.writev_all(&mut chunk) }
    }

    /// Writes all of `iovs` (which it consumes) with `writev`.
    ///
    /// # Safety
    ///
    /// Every iovec must point at `iov_len` readable bytes for the whole call.
    #[cfg(not(target_arch = "aarch64"))]
    unsafe fn writev_all(&mut self, iovs: &mut [libc::iovec]) -> Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.stream.as_raw_fd();
        let mut rest = iovs;
        while let Some(first) = rest.first() {
            if first.iov_len == 0 {
                rest = &mut rest[1..];
                continue;
            }
            let count = rest.len().min(1024) as libc::c_int;
            // SAFETY: the caller's contract; `rest` is a live array of `count` iovecs.
            let n = unsafe { libc::writev(fd, rest.as_ptr(), count) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if n == 0 {
                return Err(Error::Io(io::ErrorKind::WriteZero.into()));
            }
            let mut n = n as usize;
            while n > 0 {
                let first = &mut rest[0];
                let take = n.min(first.iov_len);
                // SAFETY: advancing within the iovec's own range.
                first.iov_base = unsafe { first.iov_base.cast::<u8>().add(take) }.cast();
                first.iov_len -= take;
                n -= take;
                if first.iov_len == 0 {
                    rest = &mut rest[1..];
                }
            }
        }
        Ok(())
    }

    /// [`BulkStream::send_shared`] where the hash has no raw-pointer entry (aarch64 builds
    /// use the pure-Rust AEGIS): each [`SEND_CHUNK`] of the body is copied into a buffer of
    /// the stream's (in cache), hashed there and written from there, so the record carries
    /// one consistent snapshot of each chunk.
    #[cfg(target_arch = "aarch64")]
    fn send_snapshot(&mut self, head: &[u8], body: &[SharedBytes<'_>]) -> Result<()> {
        let body_len: usize = body.iter().map(|p| p.len).sum();
        if head.len() > MAX_HEAD || body_len > MAX_BODY {
            return Err(Error::TooLarge(head.len().max(body_len)));
        }
        let lens = lengths(head.len(), body_len);
        let mut h = self.send_mac.as_ref().map(RecordMac::start);
        let mut bounce = std::mem::take(&mut self.send_buf);
        bounce.resize(SEND_CHUNK, 0);
        let sent = self.send_snapshots(&mut h, (&lens, head), body, &mut bounce);
        self.send_buf = bounce;
        sent?;
        let tag = match (self.send_mac.as_mut(), h) {
            (Some(mac), Some(mut h)) => {
                h.update(head);
                Some(mac.finish(h, &lens))
            }
            _ => None,
        };
        match &tag {
            Some(tag) => self.write_all_vectored(&mut [IoSlice::new(tag)]),
            None => Ok(()),
        }
    }

    /// [`BulkStream::send_snapshot`]'s body: the lengths and head, then `body` a chunk of
    /// `bounce` at a time, each hashed into `h` and written.
    #[cfg(target_arch = "aarch64")]
    fn send_snapshots(
        &mut self,
        h: &mut Option<Aegis128X2Mac<TAG_LEN>>,
        (lens, head): (&[u8; 8], &[u8]),
        body: &[SharedBytes<'_>],
        bounce: &mut [u8],
    ) -> Result<()> {
        let mut prefix = Some((lens, head));
        let mut filled = 0;
        let mut pieces = body.iter().peekable();
        let mut done = 0;
        loop {
            while filled < bounce.len() {
                let Some(piece) = pieces.peek() else { break };
                let n = (piece.len - done).min(bounce.len() - filled);
                // SAFETY: `SharedBytes::new`'s contract: the piece is mapped and readable
                // while it is used; it is read through its raw pointer only (bytes a
                // concurrent writer changes may be copied torn: the snapshot is what is
                // hashed and sent).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        piece.ptr.add(done),
                        bounce.as_mut_ptr().add(filled),
                        n,
                    );
                }
                filled += n;
                done += n;
                if done == piece.len {
                    pieces.next();
                    done = 0;
                }
            }
            if filled == 0 && prefix.is_none() {
                return Ok(());
            }
            let chunk = &bounce[..filled];
            if let Some(h) = h.as_mut() {
                h.update(chunk);
            }
            let mut parts = match prefix.take() {
                Some((lens, head)) => {
                    vec![IoSlice::new(lens), IoSlice::new(head), IoSlice::new(chunk)]
                }
                None => vec![IoSlice::new(chunk)],
            };
            self.write_all_vectored(&mut parts)?;
            filled = 0;
        }
    }

    /// Writes all of `parts` (which it consumes).
    fn write_all_vectored(&mut self, parts: &mut [IoSlice<'_>]) -> Result<()> {
        let mut rest = parts;
        while !rest.is_empty() {
            match self.stream.write_vectored(rest) {
                Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives the next record's head: `None` if the peer closed the stream between records.
    /// The body must be read with [`BulkStream::recv_body`] before the next head.
    pub fn recv_head(&mut self) -> Result<Option<RecordHead>> {
        if self.pending.is_some() {
            return Err(Error::Misuse("the last record's body was not read"));
        }
        let mut lens = [0u8; 8];
        if !self.read_exact_buffered(&mut lens, true)? {
            return Ok(None);
        }
        let head_len = u32::from_le_bytes(lens[..4].try_into().expect("4 bytes"));
        let body_len = u32::from_le_bytes(lens[4..].try_into().expect("4 bytes"));
        if head_len as usize > MAX_HEAD || body_len as usize > MAX_BODY {
            return Err(FrameError::TooLong(head_len.max(body_len)).into());
        }
        let mut head = vec![0u8; head_len as usize];
        self.read_exact_buffered(&mut head, false)?;
        self.pending = Some(Pending {
            lens,
            head: head.clone(),
            body_len: body_len as usize,
        });
        Ok(Some(RecordHead {
            head,
            body_len: body_len as usize,
        }))
    }

    /// Reads the body of the record whose head [`BulkStream::recv_head`] returned into
    /// `parts` (whose lengths must add up to the body's), then checks the record's tag. On an
    /// error, what was read into `parts` is not authentic.
    pub fn recv_body(&mut self, parts: &mut [&mut [u8]]) -> Result<()> {
        let Some(pending) = self.pending.take() else {
            return Err(Error::Misuse("no record head was read"));
        };
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total != pending.body_len {
            return Err(Error::Misuse(
                "body buffers do not match the record's length",
            ));
        }
        // Each piece is hashed right after it arrives, while it is in cache.
        let mut h = self.recv_mac.as_ref().map(RecordMac::start);
        // Where hashing has got to, as (part, offset in it).
        let mut hashed = (0, 0);
        // First what was read ahead, then straight from the socket. (part, offset in it)
        let (mut i, mut off) = (0, 0);
        while i < parts.len() && self.at < self.filled {
            let n = (parts[i].len() - off).min(self.filled - self.at);
            parts[i][off..off + n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            off += n;
            if off == parts[i].len() {
                (i, off) = (i + 1, 0);
            }
        }
        loop {
            // Empty parts (and a part just filled) take no read.
            while i < parts.len() && off == parts[i].len() {
                (i, off) = (i + 1, 0);
            }
            if i == parts.len() {
                break;
            }
            let (first, later) = parts[i..].split_first_mut().expect("i < parts.len()");
            let mut rest: Vec<IoSliceMut<'_>> = Vec::with_capacity(later.len() + 1);
            rest.push(IoSliceMut::new(&mut first[off..]));
            rest.extend(later.iter_mut().map(|p| IoSliceMut::new(p)));
            let read = self.stream.read_vectored(&mut rest);
            drop(rest);
            let mut n = match read {
                Ok(0) => return Err(FrameError::Truncated.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e.into()),
            };
            while n > 0 {
                let k = n.min(parts[i].len() - off);
                (n, off) = (n - k, off + k);
                if off == parts[i].len() {
                    (i, off) = (i + 1, 0);
                }
            }
            if let Some(h) = &mut h {
                hashed = hash_between(h, parts, hashed, (i, off));
            }
        }
        let Some(mut h) = h else {
            return Ok(());
        };
        hash_between(&mut h, parts, hashed, (parts.len(), 0));
        h.update(&pending.head);
        let mut tag = [0u8; TAG_LEN];
        self.read_exact_buffered(&mut tag, false)?;
        let mac = self.recv_mac.as_mut().expect("checked above");
        let expected = mac.finish(h, &pending.lens);
        if bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], &tag[..])) {
            Ok(())
        } else {
            Err(FrameError::BadTag.into())
        }
    }

    /// Reads a whole record into memory (head and body) and checks it: `None` if the peer
    /// closed the stream between records.
    pub fn recv(&mut self) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(head) = self.recv_head()? else {
            return Ok(None);
        };
        let mut body = vec![0u8; head.body_len];
        self.recv_body(&mut [&mut body])?;
        Ok(Some((head.head, body)))
    }

    /// Fills `out` from the read-ahead buffer, refilling it from the socket. With
    /// `at_boundary`, a stream that ends before the first byte gives `Ok(false)`.
    fn read_exact_buffered(&mut self, out: &mut [u8], at_boundary: bool) -> Result<bool> {
        let mut done = 0;
        while done < out.len() {
            if self.at == self.filled {
                self.at = 0;
                self.filled = 0;
                let n = loop {
                    match self.stream.read(&mut self.buf) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        r => break r?,
                    }
                };
                if n == 0 {
                    if done == 0 && at_boundary {
                        return Ok(false);
                    }
                    return Err(FrameError::Truncated.into());
                }
                self.filled = n;
            }
            let n = (out.len() - done).min(self.filled - self.at);
            out[done..done + n].copy_from_slice(&self.buf[self.at..self.at + n]);
            self.at += n;
            done += n;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair(key_a: u8, key_b: u8) -> (BulkStream, BulkStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let mac = |k: u8| Some(FrameMac::new([k; 32]));
        (
            BulkStream::new(1, 7, Stream::Unix(a), mac(key_a), mac(key_b)),
            BulkStream::new(0, 7, Stream::Unix(b), mac(key_b), mac(key_a)),
        )
    }

    #[test]
    fn records_arrive_whole_into_scattered_buffers() {
        let (mut a, mut b) = pair(1, 2);
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let t = std::thread::spawn(move || {
            for i in 0..20u8 {
                a.send(&[i; 9], &body[..body.len() - i as usize]).unwrap();
            }
            a.send(b"empty", &[]).unwrap();
            body
        });
        for i in 0..20u8 {
            let h = b.recv_head().unwrap().unwrap();
            assert_eq!(h.head, [i; 9]);
            let mut x = vec![0u8; 4096];
            let mut y = vec![0u8; h.body_len - 4096];
            b.recv_body(&mut [&mut x, &mut y]).unwrap();
            x.extend_from_slice(&y);
            let body: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
            assert_eq!(x, body[..body.len() - i as usize]);
        }
        let h = b.recv_head().unwrap().unwrap();
        assert_eq!((h.head.as_slice(), h.body_len), (&b"empty"[..], 0));
        // An empty buffer for an empty body, with nothing read ahead: no read at all.
        b.recv_body(&mut [&mut []]).unwrap();
        t.join().unwrap();
        assert!(b.recv().unwrap().is_none(), "clean end between records");
    }

    #[test]
    fn a_record_under_another_key_is_refused() {
        let (mut a, _) = pair(1, 2);
        let (_, mut b) = pair(3, 3);
        let (x, y) = UnixStream::pair().unwrap();
        a.stream = Stream::Unix(x);
        b.stream = Stream::Unix(y);
        a.send(b"head", &[5; 1000]).unwrap();
        assert!(matches!(b.recv(), Err(Error::Frame(FrameError::BadTag))));
    }

    #[test]
    fn flipped_bits_truncation_and_oversize_are_refused() {
        // One good record, captured, then altered.
        let (mut a, _) = pair(1, 2);
        let (x, mut y) = UnixStream::pair().unwrap();
        a.stream = Stream::Unix(x);
        a.send(b"head", &[5; 1000]).unwrap();
        drop(a);
        let mut wire = Vec::new();
        y.read_to_end(&mut wire).unwrap();
        let check = |bytes: &[u8]| {
            let (_, mut b) = pair(1, 2);
            let (mut x, y) = UnixStream::pair().unwrap();
            b.stream = Stream::Unix(y);
            x.write_all(bytes).unwrap();
            drop(x);
            b.recv()
        };
        assert!(check(&wire).unwrap().is_some());
        for at in [0, 5, 9, 500, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[at] ^= 0x10;
            assert!(check(&bad).is_err(), "flipped byte {at} accepted");
        }
        assert!(matches!(
            check(&wire[..wire.len() - 3]),
            Err(Error::Frame(FrameError::Truncated))
        ));
        let mut huge = wire.clone();
        huge[4..8].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        assert!(matches!(
            check(&huge),
            Err(Error::Frame(FrameError::TooLong(_)))
        ));
    }

    #[test]
    fn a_stream_is_usable_until_the_peer_sends_or_closes() {
        let (mut a, b) = pair(1, 1);
        assert!(a.is_usable() && b.is_usable());
        a.send(b"unasked", b"").unwrap();
        assert!(!b.is_usable(), "a record waits to be read");
        assert!(a.is_usable());
        drop(b);
        assert!(!a.is_usable(), "the peer closed it");
    }

    #[test]
    fn a_record_changed_on_the_way_is_refused_and_the_next_ones_still_arrive() {
        let (mut a, _) = pair(1, 2);
        let (x, mut y) = UnixStream::pair().unwrap();
        a.stream = Stream::Unix(x);
        for i in 0..3u8 {
            a.send(&[i], &[i; 3000]).unwrap();
        }
        drop(a);
        let mut wire = Vec::new();
        y.read_to_end(&mut wire).unwrap();
        // Inside the second record's body.
        let record = wire.len() / 3;
        wire[record + 100] ^= 1;
        let (_, mut b) = pair(1, 2);
        let (mut x, y) = UnixStream::pair().unwrap();
        b.stream = Stream::Unix(y);
        x.write_all(&wire).unwrap();
        drop(x);
        assert_eq!(b.recv().unwrap().unwrap().0, [0]);
        let head = b.recv_head().unwrap().unwrap();
        assert_eq!(head.head, [1]);
        let mut body = vec![0; head.body_len];
        assert!(matches!(
            b.recv_body(&mut [&mut body]),
            Err(Error::Frame(FrameError::BadTag))
        ));
        assert_eq!(b.recv().unwrap().unwrap(), (vec![2], vec![2; 3000]));
        assert!(b.recv().unwrap().is_none());
    }

    #[test]
    fn bodies_must_be_read_in_order() {
        let (mut a, mut b) = pair(1, 2);
        assert!(matches!(b.recv_body(&mut []), Err(Error::Misuse(_))));
        a.send(b"h", &[1; 10]).unwrap();
        let h = b.recv_head().unwrap().unwrap();
        assert_eq!(h.body_len, 10);
        assert!(matches!(b.recv_head(), Err(Error::Misuse(_))));
    }
}

/// The record tag (AEGIS-128X2 MAC) computed by libaegis's C functions on raw pointers, for
/// bodies that must not be read through Rust references (guest memory). The same C code
/// computes [`Aegis128X2Mac`]'s tags, so a receiver checks these with it.
#[cfg(not(target_arch = "aarch64"))]
mod raw_mac {
    use std::ffi::c_int;

    use aegis::aegis128x2::Aegis128X2Mac;

    use super::TAG_LEN;

    /// libaegis's `aegis128x2_mac_state` (704 bytes, 64-byte aligned, as the `aegis` crate
    /// checks at compile time).
    #[repr(C, align(64))]
    struct State([u8; 704]);

    unsafe extern "C" {
        fn aegis128x2_mac_init(st: *mut State, k: *const u8, npub: *const u8);
        fn aegis128x2_mac_update(st: *mut State, m: *const u8, mlen: usize) -> c_int;
        fn aegis128x2_mac_final(st: *mut State, mac: *mut u8, maclen: usize) -> c_int;
    }

    /// A tag being computed.
    pub(super) struct RawMac(Box<State>);

    impl RawMac {
        /// Starts a tag under `key` with `nonce`.
        pub(super) fn new(key: &[u8; 16], nonce: &[u8; 16]) -> RawMac {
            // The crate's constructor runs libaegis's one-time CPU detection first.
            let _ = Aegis128X2Mac::<TAG_LEN>::new_with_nonce(key, nonce);
            let mut st = Box::new(State([0; 704]));
            // SAFETY: `st` is a live, aligned state; key and nonce are 16 bytes each.
            unsafe { aegis128x2_mac_init(&mut *st, key.as_ptr(), nonce.as_ptr()) };
            RawMac(st)
        }

        /// Adds the `len` bytes at `ptr`.
        ///
        /// # Safety
        ///
        /// `[ptr, ptr + len)` must be mapped and readable during the call.
        pub(super) unsafe fn update_raw(&mut self, ptr: *const u8, len: usize) {
            // SAFETY: the caller's contract; the state is live.
            unsafe { aegis128x2_mac_update(&mut *self.0, ptr, len) };
        }

        /// Adds `bytes`.
        pub(super) fn update(&mut self, bytes: &[u8]) {
            // SAFETY: a live slice.
            unsafe { self.update_raw(bytes.as_ptr(), bytes.len()) };
        }

        /// The tag.
        pub(super) fn finalize(mut self) -> [u8; TAG_LEN] {
            let mut tag = [0u8; TAG_LEN];
            // SAFETY: a live state and a buffer of `TAG_LEN` bytes.
            unsafe { aegis128x2_mac_final(&mut *self.0, tag.as_mut_ptr(), TAG_LEN) };
            tag
        }
    }
}
