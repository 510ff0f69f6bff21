//! The guest's view of files: stdio and the host directories it was given with `--mount`.
//!
//! [`FileSystem`] is the guest-facing half, part of the VM wherever it runs: the descriptor
//! table and stdio. Everything about host files goes through a [`FileService`]: the VM's
//! [`HomeFiles`] while it runs at home, its home node's (over the mesh) once it migrated.
//! Each method serves one hypercall and returns its result (a negated errno on failure).

pub mod descriptors;
mod dirent;
mod fd_table;
pub mod home;
pub mod op;
pub mod path;
pub mod scratch;
mod stat;

use crate::persist::Persist;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use pop_abi::errno::{EBADF, EINVAL, EIO, ENOTDIR};
use pop_abi::open_flags as guest;

pub use descriptors::{Descriptors, LocalDescriptors};
pub use dirent::{Entry, encode as encode_dirents};
pub use fd_table::{Fd, FdTable, MAX_FDS};
pub use home::HomeFiles;
pub use scratch::Scratch;

use op::{FileOp, Reply};

use crate::memory::GuestMem;
use crate::output::Output;

/// A host directory made visible to the guest (`--mount HOST_DIR:GUEST_DIR[:rw]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The host directory, canonicalized (symbolic links resolved).
    pub host_dir: std::path::PathBuf,
    /// Where the guest sees it: absolute and normalized (`/data`, or `/`).
    pub guest_dir: String,
    /// Whether the guest may modify it.
    pub writable: bool,
}

/// Longest path the guest may pass, NUL included.
pub const PATH_MAX: usize = 4096;
/// Most bytes one read or write hypercall moves (the guest loops for more).
pub const IO_CHUNK: usize = op::MAX_DATA;

/// Result of a file hypercall: a value, or an errno.
pub type SysResult = Result<i64, i32>;

/// Who carries out file operations on the host: the VM's [`HomeFiles`], here or at its home.
pub trait FileService: std::fmt::Debug + Send + Sync {
    /// Carries out `op`.
    fn call(&self, op: FileOp) -> Reply;
}

impl FileService for HomeFiles {
    fn call(&self, op: FileOp) -> Reply {
        self.serve(op)
    }
}

/// The guest's files: the descriptor table, stdio, and the service behind host files.
#[derive(Debug)]
pub struct FileSystem {
    service: Arc<dyn FileService>,
    home: Option<Arc<HomeFiles>>,
    fds: Arc<dyn Descriptors>,
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

/// What restoring a VM's file system needs on this host.
#[derive(Debug)]
pub struct FsArgs {
    /// Who serves the host files: the VM's home files, here or over the mesh.
    pub service: Arc<dyn FileService>,
    /// The home files, if this process is the VM's home.
    pub home: Option<Arc<HomeFiles>>,
    /// Where the guest's standard output goes.
    pub stdout: Output,
    /// Where its standard error goes.
    pub stderr: Output,
    /// Where the descriptor table is kept if not here (a node a VM's threads moved to: at
    /// the VM's origin); `None` keeps the restored table here.
    pub descriptors: Option<Arc<dyn Descriptors>>,
}

impl Persist for FileSystem {
    /// The descriptor table (host files stay open at the VM's home).
    type State = FdTable;
    type Args<'a> = FsArgs;
    /// The errno of a table kept elsewhere that could not be read.
    type Error = i32;

    fn save(&self) -> Result<FdTable, Self::Error> {
        self.fds.table()
    }

    /// The file system of a VM that moved here, with its descriptor table (or, if
    /// `args.descriptors` says where it is kept, with that one).
    fn restore(args: FsArgs, fds: &FdTable) -> Result<FileSystem, Self::Error> {
        let fds = args
            .descriptors
            .unwrap_or_else(|| Arc::new(LocalDescriptors::new(fds.clone())));
        Ok(FileSystem {
            service: args.service,
            home: args.home,
            fds,
            stdout: args.stdout,
            stderr: args.stderr,
        })
    }
}

impl FileSystem {
    /// A file system at home showing `mounts` and, at `/tmp`, `scratch`, with the guest's
    /// fd 1 and 2 going to `stdout`/`stderr`.
    pub fn new(
        mounts: Vec<Mount>,
        scratch: Option<Scratch>,
        stdout: Output,
        stderr: Output,
    ) -> FileSystem {
        let home = Arc::new(HomeFiles::with_scratch(mounts, scratch));
        FileSystem {
            service: home.clone(),
            home: Some(home),
            fds: Arc::new(LocalDescriptors::default()),
            stdout,
            stderr,
        }
    }

    /// The VM's home files, if this process is its home.
    pub fn home_files(&self) -> Option<Arc<HomeFiles>> {
        self.home.clone()
    }

    /// The descriptor table (for a node its threads moved to, to keep the same one).
    pub fn descriptors(&self) -> &Arc<dyn Descriptors> {
        &self.fds
    }

    fn fd(&self, fd: u64) -> Result<Fd, i32> {
        self.fds.get(fd as i64)
    }

    /// Calls the service, checking that the data fits `max` bytes.
    fn call(&self, op: FileOp, max: usize) -> Reply {
        let done = self.service.call(op)?;
        if done.data.len() > max {
            return Err(EIO);
        }
        Ok(done)
    }

    /// `write(fd, buf, len)`.
    pub fn write(&self, mem: &GuestMem, fd: u64, buf: u64, len: u64) -> SysResult {
        let data = mem.read(buf, (len as usize).min(IO_CHUNK))?;
        let written = match self.fd(fd)? {
            Fd::Stdout => self.stdout.write(&data),
            Fd::Stderr => self.stderr.write(&data),
            Fd::Home(handle) => return Ok(self.call(FileOp::Write { handle, data }, 0)?.value),
        };
        written.map(|n| n as i64).map_err(|e| path::errno(&e))
    }

    /// `read(fd, buf, len)`.
    pub fn read(&self, mem: &GuestMem, fd: u64, buf: u64, len: u64) -> SysResult {
        let len = (len as usize).min(IO_CHUNK);
        if !mem.contains(buf, len as u64) {
            return Err(pop_abi::errno::EFAULT);
        }
        let Fd::Home(handle) = self.fd(fd)? else {
            return Err(EBADF);
        };
        let done = self.call(
            FileOp::Read {
                handle,
                len: len as u32,
            },
            len,
        )?;
        mem.write(buf, &done.data)?;
        Ok(done.data.len() as i64)
    }

    /// `open(path, flags, mode)`.
    pub fn open(&self, mem: &GuestMem, path: u64, flags: u64, mode: u64) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        let op = FileOp::Open {
            path,
            flags: flags as i32,
            mode: mode as u32,
        };
        let handle = self.call(op, 0)?.value as u64;
        let inserted = self.fds.insert(Fd::Home(handle));
        if inserted.is_err() {
            let _ = self.service.call(FileOp::Close { handle });
        }
        inserted
    }

    /// `close(fd)`.
    pub fn close(&self, fd: u64) -> SysResult {
        let (removed, still_referred) = self.fds.remove(fd as i64)?;
        if let Fd::Home(handle) = removed
            && handle > op::STDERR
            && !still_referred
        {
            let _ = self.service.call(FileOp::Close { handle });
        }
        Ok(0)
    }

    /// `dup(fd)`.
    pub fn dup(&self, fd: u64) -> SysResult {
        self.fds.dup(fd as i64)
    }

    /// `lseek(fd, offset, whence)`.
    pub fn lseek(&self, fd: u64, offset: u64, whence: u64) -> SysResult {
        let Fd::Home(handle) = self.fd(fd)? else {
            return Err(libc::ESPIPE);
        };
        let op = FileOp::Lseek {
            handle,
            offset: offset as i64,
            whence: whence as i32,
        };
        Ok(self.call(op, 0)?.value)
    }

    /// `fstat(fd, stat)`.
    pub fn fstat(&self, mem: &GuestMem, fd: u64, out: u64) -> SysResult {
        let handle = match self.fd(fd)? {
            Fd::Stdout => op::STDOUT,
            Fd::Stderr => op::STDERR,
            Fd::Home(handle) => handle,
        };
        self.stat_to(mem, FileOp::Fstat { handle }, out)
    }

    /// `stat(path, stat)` (`follow`) or `lstat(path, stat)`.
    pub fn stat(&self, mem: &GuestMem, path: u64, out: u64, follow: bool) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        self.stat_to(mem, FileOp::Stat { path, follow }, out)
    }

    fn stat_to(&self, mem: &GuestMem, op: FileOp, out: u64) -> SysResult {
        let size = std::mem::size_of::<pop_abi::Stat>();
        let done = self.call(op, size)?;
        if done.data.len() != size {
            return Err(EIO);
        }
        mem.write(out, &done.data)?;
        Ok(0)
    }

    /// `getdents64(fd, buf, len)`: every entry at once (fetched from the home in pieces);
    /// `EINVAL` if they do not fit in `len`; 0 once they were returned.
    pub fn getdents64(&self, mem: &GuestMem, fd: u64, buf: u64, len: u64) -> SysResult {
        let Fd::Home(handle) = self.fd(fd)? else {
            return Err(ENOTDIR);
        };
        let len = (len as usize).min(op::MAX_LISTING);
        if !mem.contains(buf, len as u64) {
            return Err(pop_abi::errno::EFAULT);
        }
        let mut out = Vec::new();
        let mut from = 0u32;
        loop {
            let op = FileOp::Getdents64 {
                handle,
                len: len as u32,
                from,
            };
            let done = self.call(op, op::MAX_DATA)?;
            if done.data.is_empty() {
                break;
            }
            out.extend_from_slice(&done.data);
            let next = u32::try_from(done.value).map_err(|_| EIO)?;
            if out.len() > len || next <= from {
                return Err(EIO);
            }
            from = next;
        }
        mem.write(buf, &out)?;
        Ok(out.len() as i64)
    }

    /// `mkdir(path, mode)`.
    pub fn mkdir(&self, mem: &GuestMem, path: u64, mode: u64) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        let op = FileOp::Mkdir {
            path,
            mode: mode as u32,
        };
        Ok(self.call(op, 0)?.value)
    }

    /// `unlink(path)` (`dir` false) or `rmdir(path)` (`dir` true).
    pub fn remove(&self, mem: &GuestMem, path: u64, dir: bool) -> SysResult {
        let path = mem.read_c_string(path, PATH_MAX)?;
        Ok(self.call(FileOp::Remove { path, dir }, 0)?.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_abi::errno::{EEXIST, ENOENT, EROFS};
    use pop_abi::layout::SHARED_BASE;
    use pop_abi::whence::SEEK_SET;

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
            fs: FileSystem::new(mounts, None, stdout, stderr),
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
    fn file_systems_sharing_a_descriptor_table_see_each_other_s_descriptors() {
        // A node a VM's threads moved to keeps its origin's table: a descriptor opened
        // through one file system is read, and closed, through the other.
        let f = fixture("shared");
        let (stdout, _) = Output::capture();
        let (stderr, _) = Output::capture();
        let other = FileSystem::restore(
            FsArgs {
                service: f.fs.service.clone(),
                home: None,
                stdout,
                stderr,
                descriptors: Some(f.fs.descriptors().clone()),
            },
            &FdTable::default(),
        )
        .unwrap();
        let fd = f.fs.open(&f.mem, f.path("/ro/hello.txt"), 0, 0).unwrap() as u64;
        assert_eq!(other.read(&f.mem, fd, BUF, 100), Ok(5));
        assert_eq!(f.mem.read(BUF, 5).unwrap(), b"hello");
        let dup = other.dup(fd).unwrap() as u64;
        assert_eq!(other.close(fd), Ok(0));
        assert_eq!(f.fs.read(&f.mem, fd, BUF, 100), Err(EBADF));
        assert_eq!(
            f.fs.lseek(dup, 0, SEEK_SET as u64),
            Ok(0),
            "the dup still works"
        );
        assert_eq!(f.fs.save().unwrap(), other.save().unwrap());
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

    /// The names in `n` bytes of dirents at `BUF`.
    fn names(mem: &GuestMem, n: usize) -> Vec<String> {
        let bytes = mem.read(BUF, n).unwrap();
        let mut names = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let reclen = u16::from_le_bytes([bytes[at + 16], bytes[at + 17]]) as usize;
            let name = &bytes[at + 19..at + reclen];
            let end = name.iter().position(|&b| b == 0).unwrap();
            names.push(String::from_utf8(name[..end].to_vec()).unwrap());
            at += reclen;
        }
        names
    }

    #[test]
    fn a_large_directory_is_listed_whole_in_one_call_and_again_after_a_rewind() {
        let f = fixture("big");
        // Far more entries than one reply from the home holds (192 KiB): 9000 x 48 bytes.
        let many: Vec<String> = (0..9000)
            .map(|i| format!("file-with-a-long-name-{i:05}"))
            .collect();
        for name in &many {
            std::fs::write(f.dir.join("rw").join(name), b"").unwrap();
        }
        let dir = (guest::O_RDONLY | guest::O_DIRECTORY) as u64;
        let dfd = f.fs.open(&f.mem, f.path("/rw"), dir, 0).unwrap() as u64;
        let big = 1 << 20;
        for _ in 0..2 {
            // As the guest's std does: a small buffer first, doubled while EINVAL.
            assert_eq!(f.fs.getdents64(&f.mem, dfd, BUF, 512), Err(EINVAL));
            let n = f.fs.getdents64(&f.mem, dfd, BUF, big).unwrap();
            assert!(n as usize > op::MAX_DATA, "more than one piece: {n}");
            let mut seen = names(&f.mem, n as usize);
            seen.sort();
            assert_eq!(seen, many);
            assert_eq!(
                f.fs.getdents64(&f.mem, dfd, BUF, big),
                Ok(0),
                "then the end"
            );
            assert_eq!(f.fs.lseek(dfd, 0, SEEK_SET as u64), Ok(0), "rewind");
        }
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
        let mut names = names(&f.mem, n as usize);
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
