//! Host file metadata as the guest's [`pop_abi::Stat`].

use std::mem::{offset_of, size_of};
use std::os::unix::fs::MetadataExt;

use pop_abi::{Stat, Timespec};

/// The guest's `Stat` for host metadata (Linux `S_IF*` bits equal hermit's).
pub fn from_metadata(m: &std::fs::Metadata) -> Stat {
    let ts = |sec: i64, nsec: i64| Timespec {
        tv_sec: sec,
        tv_nsec: nsec as i32,
    };
    Stat {
        st_dev: m.dev(),
        st_ino: m.ino(),
        st_nlink: m.nlink(),
        st_mode: m.mode(),
        st_uid: m.uid(),
        st_gid: m.gid(),
        st_rdev: m.rdev(),
        st_size: m.size() as i64,
        st_blksize: m.blksize() as i64,
        st_blocks: m.blocks() as i64,
        st_atim: ts(m.atime(), m.atime_nsec()),
        st_mtim: ts(m.mtime(), m.mtime_nsec()),
        st_ctim: ts(m.ctime(), m.ctime_nsec()),
    }
}

/// Encodes `stat` as the guest lays it out (padding zeroed).
pub fn encode(stat: &Stat) -> Vec<u8> {
    let mut out = vec![0u8; size_of::<Stat>()];
    let mut put =
        |offset: usize, bytes: &[u8]| out[offset..offset + bytes.len()].copy_from_slice(bytes);
    put(offset_of!(Stat, st_dev), &stat.st_dev.to_le_bytes());
    put(offset_of!(Stat, st_ino), &stat.st_ino.to_le_bytes());
    put(offset_of!(Stat, st_nlink), &stat.st_nlink.to_le_bytes());
    put(offset_of!(Stat, st_mode), &stat.st_mode.to_le_bytes());
    put(offset_of!(Stat, st_uid), &stat.st_uid.to_le_bytes());
    put(offset_of!(Stat, st_gid), &stat.st_gid.to_le_bytes());
    put(offset_of!(Stat, st_rdev), &stat.st_rdev.to_le_bytes());
    put(offset_of!(Stat, st_size), &stat.st_size.to_le_bytes());
    put(offset_of!(Stat, st_blksize), &stat.st_blksize.to_le_bytes());
    put(offset_of!(Stat, st_blocks), &stat.st_blocks.to_le_bytes());
    for (offset, t) in [
        (offset_of!(Stat, st_atim), stat.st_atim),
        (offset_of!(Stat, st_mtim), stat.st_mtim),
        (offset_of!(Stat, st_ctim), stat.st_ctim),
    ] {
        put(
            offset + offset_of!(Timespec, tv_sec),
            &t.tv_sec.to_le_bytes(),
        );
        put(
            offset + offset_of!(Timespec, tv_nsec),
            &t.tv_nsec.to_le_bytes(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_abi::mode::{S_IFDIR, S_IFMT, S_IFREG};

    #[test]
    fn encodes_host_metadata() {
        let dir = std::fs::metadata("/").unwrap();
        assert_eq!(from_metadata(&dir).st_mode & S_IFMT, S_IFDIR);
        let exe = std::fs::metadata(std::env::current_exe().unwrap()).unwrap();
        let stat = from_metadata(&exe);
        assert_eq!(stat.st_mode & S_IFMT, S_IFREG);
        let bytes = encode(&stat);
        assert_eq!(bytes.len(), 120);
        let size_at = offset_of!(Stat, st_size);
        assert_eq!(
            i64::from_le_bytes(bytes[size_at..size_at + 8].try_into().unwrap()),
            exe.len() as i64
        );
        let mode_at = offset_of!(Stat, st_mode);
        assert_eq!(
            u32::from_le_bytes(bytes[mode_at..mode_at + 4].try_into().unwrap()),
            stat.st_mode
        );
    }
}
