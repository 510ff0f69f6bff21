//! File operations as values: what a guest file hypercall asks of the host that owns the
//! guest's files (its home), and the answer. A VM at home calls [`super::HomeFiles`] with them
//! directly; a VM that migrated away sends them to its home node, encoded here.

use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

/// Handle of the home's standard input (always open).
pub const STDIN: u64 = 0;
/// Handle of the home's standard output (for `fstat`; guest writes to it go through the VM's
/// output path).
pub const STDOUT: u64 = 1;
/// Handle of the home's standard error (as [`STDOUT`]).
pub const STDERR: u64 = 2;

/// Longest path carried.
const MAX_PATH: usize = super::PATH_MAX;
/// Most data one operation carries either way (the guest loops for more).
pub const MAX_DATA: usize = 192 * 1024;
/// Largest directory listing a guest may ask for at once (what its `std` grows its buffer
/// to, doubling from 512 bytes); it arrives in pieces of at most [`MAX_DATA`].
pub const MAX_LISTING: usize = 1 << 20;

/// One file operation on the home's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// Opens `path` (guest path bytes) with hermit `flags`; answers a handle.
    Open {
        path: Vec<u8>,
        flags: i32,
        mode: u32,
    },
    /// Closes a handle.
    Close { handle: u64 },
    /// Reads at most `len` bytes; answers them.
    Read { handle: u64, len: u32 },
    /// Writes `data`; answers how many bytes were written.
    Write { handle: u64, data: Vec<u8> },
    /// Moves the offset; answers the new one.
    Lseek {
        handle: u64,
        offset: i64,
        whence: i32,
    },
    /// Answers the guest `Stat` of an open handle.
    Fstat { handle: u64 },
    /// Answers the guest `Stat` of `path` (`follow`: through a final symbolic link).
    Stat { path: Vec<u8>, follow: bool },
    /// Answers the entries of a directory from number `from` on, as many as fit in one reply
    /// (value: the number of the entry after the last one sent; no data at the end). From 0
    /// it lists the directory afresh, and refuses with `EINVAL` if its entries would not all
    /// fit in `len` bytes (the guest's buffer); a listing that reached its end is not given
    /// again from 0 (nothing is answered) until the directory is rewound.
    Getdents64 { handle: u64, len: u32, from: u32 },
    /// Creates a directory.
    Mkdir { path: Vec<u8>, mode: u32 },
    /// Removes a file (`dir` false) or an empty directory.
    Remove { path: Vec<u8>, dir: bool },
}

/// A successful operation: its value (a handle, a count, an offset) and any data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// The hypercall's return value.
    pub value: i64,
    /// Bytes for the guest (read data, a `Stat`, dirents).
    pub data: Vec<u8>,
}

impl Done {
    /// A value without data.
    pub fn value(value: i64) -> Done {
        Done {
            value,
            data: Vec::new(),
        }
    }
}

/// The answer to a [`FileOp`]: done, or an errno.
pub type Reply = Result<Done, i32>;

impl Encode for FileOp {
    fn encode(&self, e: &mut Encoder) {
        match self {
            FileOp::Open { path, flags, mode } => e.u8(0).u32(*flags as u32).u32(*mode).blob(path),
            FileOp::Close { handle } => e.u8(1).u64(*handle),
            FileOp::Read { handle, len } => e.u8(2).u64(*handle).u32(*len),
            FileOp::Write { handle, data } => e.u8(3).u64(*handle).blob(data),
            FileOp::Lseek {
                handle,
                offset,
                whence,
            } => e.u8(4).u64(*handle).u64(*offset as u64).u32(*whence as u32),
            FileOp::Fstat { handle } => e.u8(5).u64(*handle),
            FileOp::Stat { path, follow } => e.u8(6).u8(u8::from(*follow)).blob(path),
            FileOp::Getdents64 { handle, len, from } => e.u8(7).u64(*handle).u32(*len).u32(*from),
            FileOp::Mkdir { path, mode } => e.u8(8).u32(*mode).blob(path),
            FileOp::Remove { path, dir } => e.u8(9).u8(u8::from(*dir)).blob(path),
        };
    }
}

impl Decode for FileOp {
    /// Reads an operation (the whole rest of `d`).
    fn decode(d: &mut Decoder<'_>) -> Result<FileOp, WireError> {
        let path =
            |d: &mut Decoder<'_>| -> Result<Vec<u8>, WireError> { Ok(d.blob(MAX_PATH)?.to_vec()) };
        let len = |d: &mut Decoder<'_>| -> Result<u32, WireError> {
            let n = d.u32()?;
            if n as usize > MAX_DATA {
                return Err(WireError("file operation too long"));
            }
            Ok(n)
        };
        let op = match d.u8()? {
            0 => FileOp::Open {
                flags: d.u32()? as i32,
                mode: d.u32()?,
                path: path(d)?,
            },
            1 => FileOp::Close { handle: d.u64()? },
            2 => FileOp::Read {
                handle: d.u64()?,
                len: len(d)?,
            },
            3 => FileOp::Write {
                handle: d.u64()?,
                data: d.blob(MAX_DATA)?.to_vec(),
            },
            4 => FileOp::Lseek {
                handle: d.u64()?,
                offset: d.u64()? as i64,
                whence: d.u32()? as i32,
            },
            5 => FileOp::Fstat { handle: d.u64()? },
            6 => FileOp::Stat {
                follow: d.flag()?,
                path: path(d)?,
            },
            7 => FileOp::Getdents64 {
                handle: d.u64()?,
                len: match d.u32()? {
                    n if n as usize <= MAX_LISTING => n,
                    _ => return Err(WireError("directory buffer too large")),
                },
                from: d.u32()?,
            },
            8 => FileOp::Mkdir {
                mode: d.u32()?,
                path: path(d)?,
            },
            9 => FileOp::Remove {
                dir: d.flag()?,
                path: path(d)?,
            },
            _ => return Err(WireError("unknown file operation")),
        };
        d.end()?;
        Ok(op)
    }
}

/// Encodes a reply: the value (a negated errno on failure) and the data.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let mut e = Encoder::default();
    match reply {
        Ok(done) => e.u64(done.value as u64).bytes(&done.data),
        Err(errno) => e.u64((-i64::from(*errno)) as u64),
    };
    e.finish()
}

/// Decodes a reply.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply, WireError> {
    let mut d = Decoder::new(bytes);
    let value = d.u64()? as i64;
    let data = d.rest();
    if data.len() > MAX_DATA {
        return Err(WireError("file reply too long"));
    }
    if value < 0 {
        if !data.is_empty() || value < -4095 {
            return Err(WireError("bad file error reply"));
        }
        return Ok(Err((-value) as i32));
    }
    Ok(Ok(Done {
        value,
        data: data.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_and_replies_round_trip() {
        let ops = [
            FileOp::Open {
                path: b"/data/x".to_vec(),
                flags: 0o1101,
                mode: 0o644,
            },
            FileOp::Close { handle: 7 },
            FileOp::Read {
                handle: 3,
                len: 4096,
            },
            FileOp::Write {
                handle: 3,
                data: b"abc".to_vec(),
            },
            FileOp::Lseek {
                handle: 3,
                offset: -2,
                whence: 2,
            },
            FileOp::Fstat { handle: STDOUT },
            FileOp::Stat {
                path: b"/d".to_vec(),
                follow: false,
            },
            FileOp::Getdents64 {
                handle: 4,
                len: 99,
                from: 7,
            },
            FileOp::Mkdir {
                path: b"/d/e".to_vec(),
                mode: 0o755,
            },
            FileOp::Remove {
                path: b"/d/e".to_vec(),
                dir: true,
            },
        ];
        for op in ops {
            let mut e = Encoder::default();
            op.encode(&mut e);
            let bytes = e.finish();
            assert_eq!(FileOp::decode(&mut Decoder::new(&bytes)), Ok(op));
            // Every truncation is refused, never a panic.
            for cut in 0..bytes.len() {
                assert!(FileOp::decode(&mut Decoder::new(&bytes[..cut])).is_err());
            }
        }
        for reply in [
            Ok(Done::value(5)),
            Ok(Done {
                value: 3,
                data: b"xyz".to_vec(),
            }),
            Err(2),
        ] {
            assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
        }
        assert!(decode_reply(&[1, 2]).is_err());
        let mut huge = Encoder::default();
        huge.u8(2).u64(3).u32(MAX_DATA as u32 + 1);
        assert!(FileOp::decode(&mut Decoder::new(&huge.finish())).is_err());
        assert!(FileOp::decode(&mut Decoder::new(&[42])).is_err());
    }
}
