//! The guest's view of files: stdio and the host directories it was given with `--mount`.
//! Each method serves one hypercall and returns its result (a negated errno on failure).

mod dirent;
mod fd_table;
pub mod path;
mod stat;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, OpenOptionsExt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use pop_abi::errno::{EBADF, EINVAL, EISDIR, ENOTDIR};
use pop_abi::open_flags as guest;
use pop_abi::whence::{SEEK_CUR, SEEK_END, SEEK_SET};

pub use dirent::{Entry, encode as encode_dirents};
pub use fd_table::{Directory, FdTable, Handle, MAX_FDS};
use path::{Intent, Resolver, errno};

use crate::config::Mount;
use crate::memory::GuestMem;
use crate::output::Output;

/// Longest path the guest may pass, NUL included.
pub const PATH_MAX: usize = 4096;
/// Most bytes one read or write hypercall moves (the guest loops for more).
pub const IO_CHUNK: usize = 1 << 20;

/// Result of a file hypercall: a value, or an errno.
pub type SysResult = Result<i64, i32>;

/// The guest's files: mounts and the descriptor table.
#[derive(Debug)]
pub struct FileSystem {
    resolver: Resolver,
    fds: Mutex<FdTable>,
    stdout: Output,
    stderr: Output,
}

/// Host `open` flags for guest (hermit) `flags`: the access mode and the creation flags.
pub fn host_open_options(flags: i32, mode: u32) -> Result<OpenOptions, i32> {
    let (read, write) = match flags & guest::O_ACCMODE {
        guest::O_RDONLY => (true, false),
        guest::O_WRONLY => (false, true),
        guest::O_RDWR => (true, true),
        _ => return Err(EINVAL),
    };
    let mut custom = 0;
    for (guest_flag, host_flag) in [
        (guest::O_CREAT, libc::O_CREAT),
        (guest::O_EXCL, libc::O_EXCL),
        (guest::O_TRUNC, libc::O_TRUNC),
        (guest::O_APPEND, libc::O_APPEND),
        (guest::O_NONBLOCK, libc::O_NONBLOCK),
        (guest::O_DIRECTORY, libc::O_DIRECTORY),
    ] {
        if flags & guest_flag != 0 {
            custom |= host_flag;
        }
    }
    let mut options = OpenOptions::new();
    options
        .read(read)
        .write(write)
        .custom_flags(custom)
        .mode(mode & 0o7777);
    Ok(options)
}

impl FileSystem {
    /// A file system showing `mounts`, with the guest's fd 1 and 2 going to `stdout`/`stderr`.
    pub fn new(mounts: Vec<Mount>, stdout: Output, stderr: Output) -> FileSystem {
        FileSystem {
            resolver: Resolver::new(mounts),
            fds: Mutex::new(FdTable::default()),
            stdout,
            stderr,
        }
    }

    /// Whether the guest sees host files (a VM that does cannot migrate yet: its file
    /// hypercalls would have to be forwarded to its home).
    pub fn has_mounts(&self) -> bool {
        self.resolver.has_mounts()
    }

    fn fds(&self) -> MutexGuard<'_, FdTable> {
        self.fds.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, fd: u64) -> Result<Handle, i32> {
        self.fds().get(fd as i64)
    }

    /// `write(fd, buf, len)`.
    pub fn write(&self, mem: &GuestMem, fd: u64, buf: u64, len: u64) -> SysResult {
        let data = mem.read(buf, (len as usize).min(IO_CHUNK))?;
        let written = match self.handle(fd)? {
            Handle::Stdout => self.stdout.write(&data),
            Handle::Stderr => self.stderr.write(&data),
            Handle::File(file) => (&*file).write(&data),
            Handle::Stdin => return Err(EBADF),
            Handle::Directory(_) => return Err(EISDIR),
        };
        written.map(|n| n as i64).map_err(|e| errno(&e))
    }

    /// `read(fd, buf, len)`.
    pub fn read(&self, mem: &GuestMem, fd: u64, buf: u64, len: u64) -> SysResult {
        let len = (len as usize).min(IO_CHUNK);
        if !mem.contains(buf, len as u64) {
            return Err(pop_abi::errno::EFAULT);
        }
        let mut data = vec![0; len];
        let n = match self.handle(fd)? {
            Handle::Stdin => crate::sys::stdin().read(&mut data),
            Handle::File(file) => (&*file).read(&mut data),
            Handle::Stdout | Handle::Stderr => return Err(EBADF),
            Handle::Directory(_) => return Err(EISDIR),
        }
        .map_err(|e| errno(&e))?;
        mem.write(buf, &data[..n])?;
        Ok(n as i64)
    }

    /// `open(path, flags, mode)`.
    pub fn open(&self, mem: &GuestMem, path: u64, flags: u64, mode: u64) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        let flags = flags as i32;
        let writes = flags & guest::O_ACCMODE != guest::O_RDONLY
            || flags & (guest::O_CREAT | guest::O_TRUNC) != 0;
        let intent = if writes { Intent::Write } else { Intent::Read };
        let resolved = self.resolver.resolve(&path, intent)?;
        let file = host_open_options(flags, mode as u32)?
            .open(&resolved.host)
            .map_err(|e| errno(&e))?;
        let is_dir = file.metadata().map_err(|e| errno(&e))?.is_dir();
        let handle = if is_dir {
            Handle::Directory(Arc::new(Directory {
                file,
                path: resolved.host,
                listed: false.into(),
            }))
        } else {
            Handle::File(Arc::new(file))
        };
        self.fds().insert(handle)
    }

    /// `close(fd)`.
    pub fn close(&self, fd: u64) -> SysResult {
        self.fds().remove(fd as i64).map(|_| 0)
    }

    /// `dup(fd)`.
    pub fn dup(&self, fd: u64) -> SysResult {
        let mut fds = self.fds();
        let handle = fds.get(fd as i64)?;
        fds.insert(handle)
    }

    /// `lseek(fd, offset, whence)`.
    pub fn lseek(&self, fd: u64, offset: u64, whence: u64) -> SysResult {
        let offset = offset as i64;
        let pos = match whence as i32 {
            SEEK_SET => SeekFrom::Start(u64::try_from(offset).map_err(|_| EINVAL)?),
            SEEK_CUR => SeekFrom::Current(offset),
            SEEK_END => SeekFrom::End(offset),
            _ => return Err(EINVAL),
        };
        match self.handle(fd)? {
            Handle::File(file) => (&*file).seek(pos).map(|p| p as i64).map_err(|e| errno(&e)),
            Handle::Directory(dir) if pos == SeekFrom::Start(0) => {
                dir.listed.store(false, Ordering::SeqCst);
                Ok(0)
            }
            Handle::Directory(_) => Err(EINVAL),
            Handle::Stdin | Handle::Stdout | Handle::Stderr => Err(libc::ESPIPE),
        }
    }

    /// `fstat(fd, stat)`.
    pub fn fstat(&self, mem: &GuestMem, fd: u64, out: u64) -> SysResult {
        let metadata = match self.handle(fd)? {
            Handle::Stdin => crate::sys::stdin().metadata(),
            Handle::Stdout => crate::sys::stdout().metadata(),
            Handle::Stderr => crate::sys::stderr().metadata(),
            Handle::File(file) => file.metadata(),
            Handle::Directory(dir) => dir.file.metadata(),
        };
        write_stat(mem, out, metadata)
    }

    /// `stat(path, stat)` (`follow`) or `lstat(path, stat)`.
    pub fn stat(&self, mem: &GuestMem, path: u64, out: u64, follow: bool) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        let intent = if follow {
            Intent::Read
        } else {
            Intent::ReadNoFollow
        };
        let host = self.resolver.resolve(&path, intent)?.host;
        let metadata = if follow {
            std::fs::metadata(&host)
        } else {
            std::fs::symlink_metadata(&host)
        };
        write_stat(mem, out, metadata)
    }

    /// `getdents64(fd, buf, len)`: every entry at once; 0 once they were returned.
    pub fn getdents64(&self, mem: &GuestMem, fd: u64, buf: u64, len: u64) -> SysResult {
        let Handle::Directory(dir) = self.handle(fd)? else {
            return Err(ENOTDIR);
        };
        if dir.listed.load(Ordering::SeqCst) {
            return Ok(0);
        }
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&dir.path).map_err(|e| errno(&e))? {
            let entry = entry.map_err(|e| errno(&e))?;
            let kind = entry
                .file_type()
                .map(dirent::kind_of)
                .unwrap_or(pop_abi::dirent::DT_UNKNOWN);
            entries.push(Entry {
                ino: entry.ino(),
                kind,
                name: entry.file_name().as_bytes().to_vec(),
            });
        }
        let bytes = encode_dirents(&entries);
        if bytes.len() as u64 > len {
            return Err(EINVAL);
        }
        mem.write(buf, &bytes)?;
        dir.listed.store(true, Ordering::SeqCst);
        Ok(bytes.len() as i64)
    }

    /// `mkdir(path, mode)`.
    pub fn mkdir(&self, mem: &GuestMem, path: u64, mode: u64) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        let resolved = self.resolver.resolve(&path, Intent::Modify)?;
        if resolved.is_mount_root {
            return Err(pop_abi::errno::EEXIST);
        }
        std::fs::DirBuilder::new()
            .mode(mode as u32 & 0o7777)
            .create(&resolved.host)
            .map(|_| 0)
            .map_err(|e| errno(&e))
    }

    /// `unlink(path)` (`dir` false) or `rmdir(path)` (`dir` true).
    pub fn remove(&self, mem: &GuestMem, path: u64, dir: bool) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        let resolved = self.resolver.resolve(&path, Intent::Modify)?;
        if resolved.is_mount_root {
            return Err(libc::EBUSY);
        }
        let result = if dir {
            std::fs::remove_dir(&resolved.host)
        } else {
            std::fs::remove_file(&resolved.host)
        };
        result.map(|_| 0).map_err(|e| errno(&e))
    }
}

/// Writes host metadata as a guest `Stat` at `out`.
fn write_stat(mem: &GuestMem, out: u64, metadata: std::io::Result<std::fs::Metadata>) -> SysResult {
    let bytes = stat::encode(&stat::from_metadata(&metadata.map_err(|e| errno(&e))?));
    mem.write(out, &bytes)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_abi::errno::{EEXIST, ENOENT, EROFS};
    use pop_abi::layout::SHARED_BASE;

    struct Fixture {
        fs: FileSystem,
        mem: GuestMem,
        dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const PATH: u64 = SHARED_BASE;
    const BUF: u64 = SHARED_BASE + 0x1000;

    fn fixture(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("popvmm-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ro/sub")).unwrap();
        std::fs::create_dir_all(dir.join("rw")).unwrap();
        std::fs::write(dir.join("ro/hello.txt"), b"hello").unwrap();
        let dir = std::fs::canonicalize(dir).unwrap();
        let mounts = vec![
            Mount {
                host_dir: dir.join("ro"),
                guest_dir: "/ro".into(),
                writable: false,
            },
            Mount {
                host_dir: dir.join("rw"),
                guest_dir: "/rw".into(),
                writable: true,
            },
        ];
        let (stdout, _) = Output::capture();
        let (stderr, _) = Output::capture();
        let mem = GuestMem::new(4 << 20, 2 << 20).unwrap();
        Fixture {
            fs: FileSystem::new(mounts, stdout, stderr),
            mem,
            dir,
        }
    }

    impl Fixture {
        fn path(&self, p: &str) -> u64 {
            self.mem.write(PATH, p.as_bytes()).unwrap();
            self.mem.write(PATH + p.len() as u64, &[0]).unwrap();
            PATH
        }
    }

    #[test]
    fn open_read_seek_stat_close() {
        let f = fixture("read");
        let fd = f.fs.open(&f.mem, f.path("/ro/./hello.txt"), 0, 0).unwrap();
        assert_eq!(fd, 3);
        assert_eq!(f.fs.read(&f.mem, fd as u64, BUF, 100), Ok(5));
        assert_eq!(f.mem.read(BUF, 5).unwrap(), b"hello");
        assert_eq!(f.fs.lseek(fd as u64, 1, SEEK_SET as u64), Ok(1));
        assert_eq!(f.fs.read(&f.mem, fd as u64, BUF, 2), Ok(2));
        assert_eq!(f.mem.read(BUF, 2).unwrap(), b"el");
        assert_eq!(f.fs.fstat(&f.mem, fd as u64, BUF), Ok(0));
        let size_at = std::mem::offset_of!(pop_abi::Stat, st_size) as u64;
        assert_eq!(f.mem.read_u64(BUF + size_at), Ok(5));
        let dup = f.fs.dup(fd as u64).unwrap();
        assert_eq!(dup, 4);
        assert_eq!(f.fs.close(fd as u64), Ok(0));
        assert_eq!(f.fs.close(fd as u64), Err(EBADF));
        assert_eq!(
            f.fs.read(&f.mem, dup as u64, BUF, 100),
            Ok(2),
            "dup shares the offset"
        );
        assert_eq!(
            f.fs.stat(&f.mem, f.path("/ro/missing"), BUF, true),
            Err(ENOENT)
        );
        assert_eq!(
            f.fs.read(&f.mem, dup as u64, SHARED_BASE + (2 << 20), 1),
            Err(pop_abi::errno::EFAULT)
        );
    }

    #[test]
    fn read_only_mounts_refuse_changes() {
        let f = fixture("ro");
        let creat = (guest::O_WRONLY | guest::O_CREAT) as u64;
        assert_eq!(
            f.fs.open(&f.mem, f.path("/ro/new"), creat, 0o644),
            Err(EROFS)
        );
        assert_eq!(
            f.fs.open(&f.mem, f.path("/ro/hello.txt"), guest::O_RDWR as u64, 0),
            Err(EROFS)
        );
        assert_eq!(f.fs.mkdir(&f.mem, f.path("/ro/d"), 0o755), Err(EROFS));
        assert_eq!(
            f.fs.remove(&f.mem, f.path("/ro/hello.txt"), false),
            Err(EROFS)
        );
        assert_eq!(f.fs.remove(&f.mem, f.path("/ro/sub"), true), Err(EROFS));
        assert_eq!(f.fs.open(&f.mem, f.path("/elsewhere"), 0, 0), Err(ENOENT));
    }

    #[test]
    fn writable_mounts_create_list_and_remove() {
        let f = fixture("rw");
        let creat = (guest::O_WRONLY | guest::O_CREAT | guest::O_TRUNC) as u64;
        let fd =
            f.fs.open(&f.mem, f.path("/rw/out.txt"), creat, 0o644)
                .unwrap();
        f.mem.write(BUF, b"data").unwrap();
        assert_eq!(f.fs.write(&f.mem, fd as u64, BUF, 4), Ok(4));
        assert_eq!(std::fs::read(f.dir.join("rw/out.txt")).unwrap(), b"data");
        assert_eq!(f.fs.mkdir(&f.mem, f.path("/rw/d"), 0o755), Ok(0));
        assert_eq!(f.fs.mkdir(&f.mem, f.path("/rw/d"), 0o755), Err(EEXIST));
        let dir = (guest::O_RDONLY | guest::O_DIRECTORY) as u64;
        let dfd = f.fs.open(&f.mem, f.path("/rw"), dir, 0).unwrap() as u64;
        assert_eq!(
            f.fs.getdents64(&f.mem, dfd, BUF, 8),
            Err(EINVAL),
            "buffer too small"
        );
        let n = f.fs.getdents64(&f.mem, dfd, BUF, 4096).unwrap();
        assert_eq!(n, 32 + 24, "out.txt and d");
        let bytes = f.mem.read(BUF, n as usize).unwrap();
        let mut names = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let reclen = u16::from_le_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            let name = &bytes[at + 19..at + reclen];
            names.push(
                String::from_utf8(name[..name.iter().position(|&b| b == 0).unwrap()].to_vec())
                    .unwrap(),
            );
            at += reclen;
        }
        names.sort();
        assert_eq!(names, ["d", "out.txt"]);
        assert_eq!(
            f.fs.getdents64(&f.mem, dfd, BUF, 4096),
            Ok(0),
            "then end of directory"
        );
        assert_eq!(f.fs.getdents64(&f.mem, fd as u64, BUF, 4096), Err(ENOTDIR));
        assert_eq!(f.fs.remove(&f.mem, f.path("/rw/out.txt"), false), Ok(0));
        assert_eq!(f.fs.remove(&f.mem, f.path("/rw/d"), true), Ok(0));
        assert_eq!(
            f.fs.remove(&f.mem, f.path("/rw"), true),
            Err(libc::EBUSY),
            "a mount root stays"
        );
    }

    #[test]
    fn stdio_fds() {
        let f = fixture("stdio");
        f.mem.write(BUF, b"x").unwrap();
        assert_eq!(f.fs.write(&f.mem, 1, BUF, 1), Ok(1));
        assert_eq!(f.fs.write(&f.mem, 0, BUF, 1), Err(EBADF));
        assert_eq!(f.fs.lseek(1, 0, 0), Err(libc::ESPIPE));
        assert_eq!(f.fs.write(&f.mem, 9, BUF, 1), Err(EBADF));
    }
}
