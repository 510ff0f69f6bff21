//! The frame codec: what travels on a connection after the handshake.
//!
//! A frame is a fixed 24-byte header, the payload, and (when frame authentication is on) a
//! 16-byte tag. All integers are little-endian.
//!
//! ```text
//! 0   u8   protocol version (PROTOCOL_VERSION)
//! 1   u8   kind: 0 one-way, 1 request, 2 response, 3 error response, 4 heartbeat
//! 2   u8   priority: 0 control, 1 page, 2 bulk
//! 3   u8   flags, must be 0
//! 4   u16  message type (the application's; responses carry the request's)
//! 6   u16  reserved, must be 0
//! 8   u32  payload length, at most MAX_PAYLOAD
//! 12  u32  reserved, must be 0
//! 16  u64  correlation id (requests and their responses; 0 otherwise)
//! 24  ...  payload
//! ..  [16] tag: AEGIS-128X2 MAC (key: first 16 bytes of this direction's session key;
//!          nonce: the frame's sequence number, u64 little-endian, zero-padded) of
//!          payload || header
//! ```
//!
//! The sequence number is implicit: each direction counts its frames from 0, so a frame that
//! is injected, replayed, dropped or reordered on the path fails the tag check.

use std::io::{self, Read};

use subtle::ConstantTimeEq;

/// The protocol version spoken by this build (in the handshake and in every frame). It
/// covers the messages the nodes carry too: a build whose messages changed form speaks a new
/// version, so nodes of two builds refuse each other with a clear error instead of
/// misreading each other (2: page messages carry several runs, and `PutM`; 3: streamed
/// runs of page messages, and the page streams that carry their pages).
pub const PROTOCOL_VERSION: u8 = 3;
/// Size of a frame header.
pub const HEADER_LEN: usize = 24;
/// Size of a frame tag when frame authentication is on.
pub const TAG_LEN: usize = 16;
/// The largest payload a frame may carry (256 KiB). Larger transfers are split by the caller;
/// the bound also bounds how long a page or control frame can wait behind one bulk frame
/// that is already being written.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A message that expects no response.
    OneWay = 0,
    /// A request: the peer answers with a response of the same correlation id.
    Request = 1,
    /// A successful response.
    Response = 2,
    /// A failed response: the payload is a UTF-8 error message.
    ErrorResponse = 3,
    /// A heartbeat (empty payload).
    Heartbeat = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            0 => Kind::OneWay,
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::ErrorResponse,
            4 => Kind::Heartbeat,
            _ => return None,
        })
    }
}

/// Priority classes. A connection's writer always sends the highest class that has frames
/// waiting, so page and control traffic never waits behind queued bulk frames (at most behind
/// the one frame being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    /// Control messages and heartbeats (highest).
    Control = 0,
    /// DSM pages and other latency-critical traffic.
    Page = 1,
    /// Bulk transfers (VM images, migration streams).
    Bulk = 2,
}

impl Priority {
    /// All classes, highest first.
    pub const ALL: [Priority; 3] = [Priority::Control, Priority::Page, Priority::Bulk];
    /// Number of classes.
    pub const COUNT: usize = 3;

    fn from_u8(v: u8) -> Option<Priority> {
        Some(match v {
            0 => Priority::Control,
            1 => Priority::Page,
            2 => Priority::Bulk,
            _ => return None,
        })
    }

    /// The class's name (`control`, `page`, `bulk`).
    pub fn name(self) -> &'static str {
        match self {
            Priority::Control => "control",
            Priority::Page => "page",
            Priority::Bulk => "bulk",
        }
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: Kind,
    /// Its priority class.
    pub priority: Priority,
    /// The application's message type.
    pub msg_type: u16,
    /// Payload length in bytes (at most [`MAX_PAYLOAD`]).
    pub len: u32,
    /// Request/response correlation id.
    pub correlation: u64,
}

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The stream ended inside a frame.
    #[error("truncated frame")]
    Truncated,
    /// Another protocol version.
    #[error("frame of protocol version {0}, expected {PROTOCOL_VERSION}")]
    Version(u8),
    /// Unknown kind.
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    /// Unknown priority.
    #[error("unknown priority {0}")]
    BadPriority(u8),
    /// Non-zero flags or reserved fields.
    #[error("non-zero reserved field")]
    Reserved,
    /// A length above [`MAX_PAYLOAD`].
    #[error("payload length {0} exceeds the maximum {MAX_PAYLOAD}")]
    TooLong(u32),
    /// A heartbeat with a payload.
    #[error("heartbeat with a payload")]
    BadHeartbeat,
    /// The tag does not match: the frame was not sent by the authenticated peer (or was
    /// corrupted, replayed or reordered).
    #[error("frame authentication failed")]
    BadTag,
    /// A socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = PROTOCOL_VERSION;
        h[1] = self.kind as u8;
        h[2] = self.priority as u8;
        h[4..6].copy_from_slice(&self.msg_type.to_le_bytes());
        h[8..12].copy_from_slice(&self.len.to_le_bytes());
        h[16..24].copy_from_slice(&self.correlation.to_le_bytes());
        h
    }

    /// Decodes and validates a header (every field, the length bound included).
    pub fn decode(h: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        if h[0] != PROTOCOL_VERSION {
            return Err(FrameError::Version(h[0]));
        }
        let kind = Kind::from_u8(h[1]).ok_or(FrameError::BadKind(h[1]))?;
        let priority = Priority::from_u8(h[2]).ok_or(FrameError::BadPriority(h[2]))?;
        if h[3] != 0 || h[6..8] != [0, 0] || h[12..16] != [0; 4] {
            return Err(FrameError::Reserved);
        }
        let msg_type = u16::from_le_bytes([h[4], h[5]]);
        let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if len as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLong(len));
        }
        if kind == Kind::Heartbeat && len != 0 {
            return Err(FrameError::BadHeartbeat);
        }
        let correlation = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        Ok(Header {
            kind,
            priority,
            msg_type,
            len,
            correlation,
        })
    }
}

/// Bytes a frame with `payload_len` bytes of payload takes on the wire.
pub fn wire_len(payload_len: usize, authenticated: bool) -> usize {
    HEADER_LEN + payload_len + if authenticated { TAG_LEN } else { 0 }
}

/// A frame's tag being computed (see [`FrameMac::start`]).
pub struct FrameHasher(aegis::aegis128x2::Aegis128X2Mac<TAG_LEN>);

impl FrameHasher {
    /// Feeds the next bytes of the payload.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The per-direction frame authenticator: a session key and the next sequence number.
#[derive(Clone)]
pub struct FrameMac {
    key: [u8; 32],
    seq: u64,
}

impl std::fmt::Debug for FrameMac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameMac")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl FrameMac {
    /// An authenticator with session key `key`, starting at sequence number 0.
    pub fn new(key: [u8; 32]) -> FrameMac {
        FrameMac { key, seq: 0 }
    }

    /// The session key (a bulk stream tags its records with a MAC of its own under it).
    pub(crate) fn key(&self) -> [u8; 32] {
        self.key
    }

    /// The tag of the next frame; advances the sequence number.
    pub fn tag(&mut self, header: &[u8; HEADER_LEN], payload: &[u8]) -> [u8; TAG_LEN] {
        let mut h = self.start();
        h.update(payload);
        self.finish(h, header)
    }

    /// Starts the tag of the next frame: the payload goes in first, in pieces if it comes in
    /// pieces (then each is hashed while still in cache), then [`FrameMac::finish`].
    ///
    /// The tag is AEGIS-128X2's MAC under the first half of the session key, with the
    /// frame's sequence number as its nonce (unique per key: a replayed, dropped or reordered
    /// frame fails), over the payload and then the header. (AEGIS-128X2 runs two AES lanes at
    /// once: twice AEGIS-128L's speed on the 256 KiB frames of page runs, the same on small
    /// frames.)
    pub fn start(&self) -> FrameHasher {
        let mut key = [0u8; 16];
        key.copy_from_slice(&self.key[..16]);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&self.seq.to_le_bytes());
        FrameHasher(aegis::aegis128x2::Aegis128X2Mac::new_with_nonce(
            &key, &nonce,
        ))
    }

    /// Ends a tag begun with [`FrameMac::start`]; advances the sequence number.
    pub fn finish(&mut self, h: FrameHasher, header: &[u8; HEADER_LEN]) -> [u8; TAG_LEN] {
        let mut mac = h.0;
        mac.update(header);
        self.seq = self.seq.wrapping_add(1);
        mac.finalize()
    }

    /// Checks the tag of the next frame in constant time; advances the sequence number.
    pub fn verify(&mut self, header: &[u8; HEADER_LEN], payload: &[u8], tag: &[u8]) -> bool {
        let mut h = self.start();
        h.update(payload);
        self.verify_hashed(h, header, tag)
    }

    /// [`FrameMac::verify`] of a payload already fed to `h` (from [`FrameMac::start`]).
    pub fn verify_hashed(&mut self, h: FrameHasher, header: &[u8; HEADER_LEN], tag: &[u8]) -> bool {
        let expected = self.finish(h, header);
        tag.len() == TAG_LEN && bool::from(expected.ct_eq(tag))
    }
}

/// Appends one encoded frame (header, payload, tag if `mac` is given) to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    header: &Header,
    payload: &[u8],
    mac: Option<&mut FrameMac>,
) {
    debug_assert_eq!(header.len as usize, payload.len());
    let h = header.encode();
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    if let Some(mac) = mac {
        out.extend_from_slice(&mac.tag(&h, payload));
    }
}

/// Writes one frame (header, payload, tag if `mac` is given) with one vectored write where
/// possible, without copying the payload.
pub fn write_frame<W: io::Write>(
    w: &mut W,
    header: &Header,
    payload: &[u8],
    mac: Option<&mut FrameMac>,
) -> io::Result<()> {
    debug_assert_eq!(header.len as usize, payload.len());
    let h = header.encode();
    let tag = mac.map(|m| m.tag(&h, payload));
    let mut slices = [
        io::IoSlice::new(&h),
        io::IoSlice::new(payload),
        io::IoSlice::new(tag.as_ref().map_or(&[][..], |t| &t[..])),
    ];
    let mut bufs = &mut slices[..];
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Bytes of payload read (and hashed) at a time.
const READ_PIECE: usize = 128 * 1024;

/// A decoded frame.
#[derive(Debug)]
pub struct Frame {
    /// Its header.
    pub header: Header,
    /// Its payload (exactly `header.len` bytes).
    pub payload: Vec<u8>,
}

/// Reads one frame from `r`, validating the header before allocating the payload (so at most
/// [`MAX_PAYLOAD`] bytes are ever allocated) and checking the tag if `mac` is given.
///
/// Returns [`FrameError::Closed`] if the stream ends cleanly before the first byte.
pub fn read_frame<R: Read>(r: &mut R, mac: Option<&mut FrameMac>) -> Result<Frame, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    match read_full(r, &mut h)? {
        0 => return Err(FrameError::Closed),
        n if n < HEADER_LEN => return Err(FrameError::Truncated),
        _ => {}
    }
    let header = Header::decode(&h)?;
    let len = header.len as usize;
    // Bounded by MAX_PAYLOAD (checked by decode); read_to_end does not zero the buffer first.
    // Read in pieces, each hashed at once while it is still in cache (a large socket read
    // may bypass the cache, and hashing from memory is several times slower).
    let mut payload = Vec::with_capacity(len);
    let mut hasher = mac.as_ref().map(|m| m.start());
    while payload.len() < len {
        let at = payload.len();
        let piece = (len - at).min(READ_PIECE) as u64;
        if r.by_ref().take(piece).read_to_end(&mut payload)? == 0 {
            return Err(FrameError::Truncated);
        }
        if let Some(h) = &mut hasher {
            h.update(&payload[at..]);
        }
    }
    if let (Some(mac), Some(hasher)) = (mac, hasher) {
        let mut tag = [0u8; TAG_LEN];
        if read_full(r, &mut tag)? < TAG_LEN {
            return Err(FrameError::Truncated);
        }
        if !mac.verify_hashed(hasher, &h, &tag) {
            return Err(FrameError::BadTag);
        }
    }
    Ok(Frame { header, payload })
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32) -> Header {
        Header {
            kind: Kind::Request,
            priority: Priority::Page,
            msg_type: 7,
            len,
            correlation: 42,
        }
    }

    #[test]
    fn round_trip_with_and_without_tags() {
        for key in [None, Some([3u8; 32])] {
            let mut tx = key.map(FrameMac::new);
            let mut rx = key.map(FrameMac::new);
            let mut buf = Vec::new();
            for i in 0..3u8 {
                let payload = vec![i; 100 * i as usize];
                encode_frame(
                    &mut buf,
                    &header(payload.len() as u32),
                    &payload,
                    tx.as_mut(),
                );
            }
            assert_eq!(
                buf.len(),
                (0..3).map(|i| wire_len(100 * i, key.is_some())).sum()
            );
            let mut r = &buf[..];
            for i in 0..3u8 {
                let f = read_frame(&mut r, rx.as_mut()).unwrap();
                assert_eq!(f.header, header(100 * i as u32));
                assert_eq!(f.payload, vec![i; 100 * i as usize]);
            }
            assert!(matches!(
                read_frame(&mut r, rx.as_mut()),
                Err(FrameError::Closed)
            ));
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let good = header(0).encode();
        let mut h = good;
        h[0] = 9;
        assert!(matches!(Header::decode(&h), Err(FrameError::Version(9))));
        let mut h = good;
        h[1] = 200;
        assert!(matches!(Header::decode(&h), Err(FrameError::BadKind(200))));
        let mut h = good;
        h[2] = 3;
        assert!(matches!(
            Header::decode(&h),
            Err(FrameError::BadPriority(3))
        ));
        let mut h = good;
        h[13] = 1;
        assert!(matches!(Header::decode(&h), Err(FrameError::Reserved)));
        let h = header(MAX_PAYLOAD as u32 + 1).encode();
        assert!(matches!(Header::decode(&h), Err(FrameError::TooLong(_))));
        let h = header(u32::MAX).encode();
        let mut r = &h[..];
        assert!(matches!(
            read_frame(&mut r, None),
            Err(FrameError::TooLong(_))
        ));
    }

    #[test]
    fn rejects_truncated_and_tampered_frames() {
        let mut buf = Vec::new();
        let mut tx = FrameMac::new([1; 32]);
        encode_frame(&mut buf, &header(10), &[5; 10], Some(&mut tx));
        for cut in 1..buf.len() {
            let mut r = &buf[..cut];
            let e = read_frame(&mut r, Some(&mut FrameMac::new([1; 32]))).unwrap_err();
            assert!(matches!(e, FrameError::Truncated), "cut {cut}: {e}");
        }
        let mut bad = buf.clone();
        bad[HEADER_LEN + 3] ^= 1;
        let e = read_frame(&mut &bad[..], Some(&mut FrameMac::new([1; 32]))).unwrap_err();
        assert!(matches!(e, FrameError::BadTag));
        // A replayed frame (right key, wrong sequence number) fails too.
        let mut rx = FrameMac::new([1; 32]);
        read_frame(&mut &buf[..], Some(&mut rx)).unwrap();
        let e = read_frame(&mut &buf[..], Some(&mut rx)).unwrap_err();
        assert!(matches!(e, FrameError::BadTag));
    }
}
