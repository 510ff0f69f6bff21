//! Encoding directory entries as the guest's `dirent64` records (see [`pop_abi::dirent`]).

use pop_abi::dirent::{DT_DIR, DT_LNK, DT_REG, DT_UNKNOWN, NAME_OFFSET, record_len};

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Inode number.
    pub ino: u64,
    /// `DT_*` type.
    pub kind: u8,
    /// Name bytes (no NUL).
    pub name: Vec<u8>,
}

/// The `DT_*` value of a host file type.
pub fn kind_of(file_type: std::fs::FileType) -> u8 {
    if file_type.is_dir() {
        DT_DIR
    } else if file_type.is_file() {
        DT_REG
    } else if file_type.is_symlink() {
        DT_LNK
    } else {
        DT_UNKNOWN
    }
}

/// Encodes `entries` (the directory's entries from number `first` on) as consecutive 8-byte
/// aligned `dirent64` records; `d_off` of each record is the number of the entry after it
/// (a cookie: where a listing continues).
pub fn encode(entries: &[Entry], first: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| record_len(e.name.len())).sum());
    for (i, entry) in entries.iter().enumerate() {
        let start = out.len();
        let len = record_len(entry.name.len());
        out.resize(start + len, 0);
        let rec = &mut out[start..];
        rec[0..8].copy_from_slice(&entry.ino.to_le_bytes());
        rec[8..16].copy_from_slice(&((first + i + 1) as i64).to_le_bytes());
        rec[16..18].copy_from_slice(&(len as u16).to_le_bytes());
        rec[18] = entry.kind;
        rec[NAME_OFFSET..NAME_OFFSET + entry.name.len()].copy_from_slice(&entry.name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_aligned_and_linked() {
        let entries = vec![
            Entry {
                ino: 7,
                kind: DT_REG,
                name: b"a".to_vec(),
            },
            Entry {
                ino: 9,
                kind: DT_DIR,
                name: b"hello".to_vec(),
            },
        ];
        let bytes = encode(&entries, 5);
        assert_eq!(bytes.len(), 24 + 32);
        assert_eq!(u64::from_le_bytes(bytes[0..8].try_into().unwrap()), 7);
        assert_eq!(i64::from_le_bytes(bytes[8..16].try_into().unwrap()), 6);
        assert_eq!(u16::from_le_bytes([bytes[16], bytes[17]]), 24);
        assert_eq!(bytes[18], DT_REG);
        assert_eq!(&bytes[19..21], b"a\0");
        let second = &bytes[24..];
        assert_eq!(u16::from_le_bytes([second[16], second[17]]), 32);
        assert_eq!(second[18], DT_DIR);
        assert_eq!(&second[19..25], b"hello\0");
        assert_eq!(i64::from_le_bytes(second[8..16].try_into().unwrap()), 7);
    }
}
