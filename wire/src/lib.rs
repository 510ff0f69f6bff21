//! Bounded binary encoding of the messages between nodes (migration, home files, vCPU and VM
//! state). Everything a node decodes came from the network (authenticated, but still input):
//! every read checks the remaining length, and every count is bounded before anything is
//! allocated, so a malformed message is an error, never a panic or a large allocation.
//!
//! [`Encoder`] and [`Decoder`] are the primitive little-endian writer and reader; the
//! [`Encode`] and [`Decode`] traits are what a message type implements, and [`to_bytes`] and
//! [`from_bytes`] are the whole-message entry points (the latter refuses trailing bytes).

use std::fmt;

/// A malformed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed message: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// The piece size of [`Encoder::sparse`].
pub const SPARSE_PIECE: usize = 64;

/// Builds a message, little-endian.
#[derive(Debug, Default)]
pub struct Encoder(Vec<u8>);

impl Encoder {
    /// An encoder with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Encoder {
        Encoder(Vec::with_capacity(n))
    }

    /// Appends a byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    /// Appends a u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends a u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Appends raw bytes (the reader must know their length).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// Appends a u32 length and the bytes.
    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32).bytes(b)
    }

    /// Appends `b` with its all-zero pieces left out: a u32 length, a bitmap of its
    /// [`SPARSE_PIECE`]-byte pieces (one bit each, set for a piece with a non-zero byte), and
    /// those pieces. What a mostly empty area (an unused stack, a register file with its
    /// wide registers unused) costs on the wire.
    pub fn sparse(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        let pieces: Vec<&[u8]> = b.chunks(SPARSE_PIECE).collect();
        let mut map = vec![0u8; pieces.len().div_ceil(8)];
        for (i, p) in pieces.iter().enumerate() {
            // An OR over the whole piece (no early exit) vectorizes: 64 bytes in a few steps.
            if p.iter().fold(0u8, |acc, &x| acc | x) != 0 {
                map[i / 8] |= 1 << (i % 8);
            }
        }
        self.bytes(&map);
        for (i, p) in pieces.iter().enumerate() {
            if map[i / 8] & (1 << (i % 8)) != 0 {
                self.bytes(p);
            }
        }
        self
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The message.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads a message, checking every length.
#[derive(Debug)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Reads `bytes`.
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { rest: bytes }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// A flag: a byte that is 0 or 1 (anything else is refused).
    pub fn flag(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError("bad flag")),
        }
    }

    /// A u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u32 length (at most `max`) and that many bytes.
    pub fn blob(&mut self, max: usize) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(WireError("field too long"));
        }
        self.bytes(n)
    }

    /// What [`Encoder::sparse`] wrote, exactly `len` bytes long (else an error).
    pub fn sparse(&mut self, len: usize) -> Result<Vec<u8>, WireError> {
        if self.u32()? as usize != len {
            return Err(WireError("a sparse field of the wrong length"));
        }
        let count = len.div_ceil(SPARSE_PIECE);
        let map = self.bytes(count.div_ceil(8))?;
        if !count.is_multiple_of(8) && map[count / 8] >> (count % 8) != 0 {
            return Err(WireError("a sparse field's map names pieces past its end"));
        }
        let mut out = vec![0u8; len];
        for (i, piece) in out.chunks_mut(SPARSE_PIECE).enumerate() {
            if map[i / 8] & (1 << (i % 8)) != 0 {
                piece.copy_from_slice(self.bytes(piece.len())?);
            }
        }
        Ok(out)
    }

    /// What is left.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Fails unless everything was read.
    pub fn end(&self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError("trailing bytes"))
        }
    }
}

/// A type with a wire form.
pub trait Encode {
    /// Appends the wire form to `e`.
    fn encode(&self, e: &mut Encoder);
}

/// A type that can be read back from its wire form, every length checked.
pub trait Decode: Sized {
    /// Reads one value from `d`.
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError>;
}

/// The wire form of `value`, as one message.
pub fn to_bytes<T: Encode + ?Sized>(value: &T) -> Vec<u8> {
    let mut e = Encoder::default();
    value.encode(&mut e);
    e.finish()
}

/// Reads a whole message: one `T` and nothing after it.
pub fn from_bytes<T: Decode>(bytes: &[u8]) -> Result<T, WireError> {
    let mut d = Decoder::new(bytes);
    let value = T::decode(&mut d)?;
    d.end()?;
    Ok(value)
}

macro_rules! integer {
    ($($t:ident),*) => {$(
        impl Encode for $t {
            fn encode(&self, e: &mut Encoder) {
                e.$t(*self);
            }
        }
        impl Decode for $t {
            fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
                d.$t()
            }
        }
    )*};
}
integer!(u8, u16, u32, u64);

impl Encode for bool {
    fn encode(&self, e: &mut Encoder) {
        e.u8(u8::from(*self));
    }
}

impl Decode for bool {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        match d.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError("bad boolean")),
        }
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, e: &mut Encoder) {
        match self {
            None => {
                e.u8(0);
            }
            Some(v) => {
                e.u8(1);
                v.encode(e);
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        match d.u8()? {
            0 => Ok(None),
            1 => Ok(Some(T::decode(d)?)),
            _ => Err(WireError("bad option flag")),
        }
    }
}

impl Encoder {
    /// Appends a string as a blob (see [`Decoder::string`]).
    pub fn string(&mut self, s: &str) -> &mut Self {
        self.blob(s.as_bytes())
    }

    /// Appends a u32 count, then each item.
    pub fn seq<T: Encode>(&mut self, items: &[T]) -> &mut Self {
        self.u32(items.len() as u32);
        for item in items {
            item.encode(self);
        }
        self
    }
}

impl Decoder<'_> {
    /// A UTF-8 string of at most `max` bytes.
    pub fn string(&mut self, max: usize) -> Result<String, WireError> {
        let bytes = self.blob(max)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError("string not UTF-8"))
    }

    /// A u32 count (at most `max`) and that many items. Nothing is allocated for more items
    /// than the message has bytes left.
    pub fn seq<T: Decode>(&mut self, max: usize) -> Result<Vec<T>, WireError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(WireError("too many items"));
        }
        let mut items = Vec::with_capacity(n.min(self.rest.len()));
        for _ in 0..n {
            items.push(T::decode(self)?);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut e = Encoder::default();
        e.u8(1).u16(2).u32(3).u64(4).blob(b"abc");
        let bytes = e.finish();
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.u8(), Ok(1));
        assert_eq!(d.u16(), Ok(2));
        assert_eq!(d.u32(), Ok(3));
        assert_eq!(d.u64(), Ok(4));
        assert_eq!(d.blob(2), Err(WireError("field too long")));
        let mut d = Decoder::new(&bytes[15..]);
        assert_eq!(d.blob(3), Ok(&b"abc"[..]));
        assert!(d.end().is_ok());
        assert!(Decoder::new(&bytes[..3]).u64().is_err());
        let mut d = Decoder::new(&[9, 0, 0, 0, 1]);
        assert!(d.blob(100).is_err());
    }

    #[test]
    fn sparse_fields_leave_out_zero_pieces_and_come_back_whole() {
        let mut area = vec![0u8; 16 * 1024 + 10];
        area[3] = 1;
        area[8000] = 2;
        area[16 * 1024 + 9] = 3;
        let mut e = Encoder::default();
        e.sparse(&area);
        let bytes = e.finish();
        // Length, a 33-byte map, three 64-byte pieces (the last one 10 bytes).
        assert_eq!(bytes.len(), 4 + 33 + 64 + 64 + 10);
        assert_eq!(Decoder::new(&bytes).sparse(area.len()), Ok(area.clone()));
        assert!(Decoder::new(&bytes).sparse(area.len() - 1).is_err());
        assert!(
            Decoder::new(&bytes[..bytes.len() - 1])
                .sparse(area.len())
                .is_err()
        );
        // A map bit past the end is refused.
        let mut bad = bytes.clone();
        bad[4 + 32] |= 0x80;
        assert!(Decoder::new(&bad).sparse(area.len()).is_err());
        let mut e = Encoder::default();
        e.sparse(&[]);
        assert_eq!(Decoder::new(&e.finish()).sparse(0), Ok(vec![]));
    }

    #[derive(Debug, PartialEq)]
    struct Pair(u32, Option<u64>);

    impl Encode for Pair {
        fn encode(&self, e: &mut Encoder) {
            self.0.encode(e);
            self.1.encode(e);
        }
    }

    impl Decode for Pair {
        fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
            Ok(Pair(d.u32()?, Option::decode(d)?))
        }
    }

    #[test]
    fn traits_round_trip_and_refuse_bad_input() {
        let items = vec![Pair(1, None), Pair(2, Some(3))];
        let mut e = Encoder::default();
        e.seq(&items).string("héllo");
        let bytes = e.finish();
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.seq::<Pair>(2).unwrap(), items);
        assert_eq!(d.string(16).unwrap(), "héllo");
        assert!(d.end().is_ok());
        assert_eq!(
            Decoder::new(&bytes).seq::<Pair>(1),
            Err(WireError("too many items"))
        );
        // A huge count in a short message allocates nothing and fails.
        let mut d = Decoder::new(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(d.seq::<Pair>(usize::MAX).is_err());
        assert_eq!(from_bytes::<u32>(&[1, 0, 0, 0]), Ok(1));
        assert_eq!(
            from_bytes::<u32>(&[1, 0, 0, 0, 9]),
            Err(WireError("trailing bytes"))
        );
        assert_eq!(from_bytes::<bool>(&[2]), Err(WireError("bad boolean")));
        assert_eq!(to_bytes(&Some(7u8)), vec![1, 7]);
        assert!(Decoder::new(&[2, 0, 0, 0, 0xff, 0xfe]).string(8).is_err());
    }
}
