//! The host side of a guest's files: its mounts and the host files it opened, kept by the
//! VM's home (the host that launched it) wherever the VM runs. It serves [`FileOp`]s: called
//! directly while the VM runs at home, through the home node's messages once it migrated.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pop_abi::errno::{EBADF, EINVAL, EISDIR, EMFILE, ENOTDIR};
use pop_abi::open_flags as guest;
use pop_abi::whence::{SEEK_CUR, SEEK_END, SEEK_SET};

use super::Mount;
use super::dirent::{self, Entry};
use super::op::{Done, FileOp, MAX_DATA, Reply, STDERR, STDIN, STDOUT};
use super::path::{Intent, Resolver, errno};
use super::scratch::Scratch;
use super::stat;

/// Most host files one VM may hold open at its home.
pub const MAX_OPEN: usize = 4096;

/// An open directory.
#[derive(Debug)]
struct Directory {
    file: File,
    path: PathBuf,
    /// The entries being listed (read when a listing starts) and whether the listing reached
    /// its end.
    listing: Mutex<Option<(Vec<Entry>, bool)>>,
}

/// What a handle refers to.
#[derive(Debug)]
enum Open {
    File(File),
    Directory(Directory),
}

/// A VM's mounts and open host files.
#[derive(Debug)]
pub struct HomeFiles {
    resolver: Resolver,
    open: Mutex<HashMap<u64, Arc<Open>>>,
    next: AtomicU64,
    /// The guest's `/tmp`, if it has one of its own: kept (and removed) with these files.
    scratch: Option<Scratch>,
}

/// What a handle is, with stdio resolved.
enum Target {
    Stdin,
    Stdio(u64),
    Open(Arc<Open>),
}

impl HomeFiles {
    /// The files of a VM that sees `mounts`.
    pub fn new(mounts: Vec<Mount>) -> HomeFiles {
        HomeFiles::with_scratch(mounts, None)
    }

    /// The files of a VM that sees `mounts` and, at `/tmp`, `scratch` (removed with them).
    pub fn with_scratch(mut mounts: Vec<Mount>, scratch: Option<Scratch>) -> HomeFiles {
        mounts.extend(scratch.as_ref().map(Scratch::mount));
        HomeFiles {
            resolver: Resolver::new(mounts),
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(STDERR + 1),
            scratch,
        }
    }

    /// Removes the guest's own `/tmp`, if it has one, with all it holds: for a home that
    /// exits without dropping these files.
    pub fn remove_scratch(&self) {
        if let Some(s) = &self.scratch {
            s.remove();
        }
    }

    /// Whether the guest sees any host directory.
    pub fn has_mounts(&self) -> bool {
        self.resolver.has_mounts()
    }

    /// How many host files are open.
    pub fn open_count(&self) -> usize {
        self.table().len()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Open>>> {
        crate::sync::lock(&self.open)
    }

    fn target(&self, handle: u64) -> Result<Target, i32> {
        match handle {
            STDIN => Ok(Target::Stdin),
            STDOUT | STDERR => Ok(Target::Stdio(handle)),
            _ => self
                .table()
                .get(&handle)
                .cloned()
                .map(Target::Open)
                .ok_or(EBADF),
        }
    }

    /// Carries out `op`.
    pub fn serve(&self, op: FileOp) -> Reply {
        match op {
            FileOp::Open { path, flags, mode } => self.open(&path, flags, mode),
            FileOp::Close { handle } => match self.table().remove(&handle) {
                Some(_) => Ok(Done::value(0)),
                None => Err(EBADF),
            },
            FileOp::Read { handle, len } => self.read(handle, len as usize),
            FileOp::Write { handle, data } => self.write(handle, &data),
            FileOp::Lseek {
                handle,
                offset,
                whence,
            } => self.lseek(handle, offset, whence),
            FileOp::Fstat { handle } => {
                let metadata = match self.target(handle)? {
                    Target::Stdin => crate::sys::stdin().metadata(),
                    Target::Stdio(STDOUT) => crate::sys::stdout().metadata(),
                    Target::Stdio(_) => crate::sys::stderr().metadata(),
                    Target::Open(open) => match &*open {
                        Open::File(f) => f.metadata(),
                        Open::Directory(d) => d.file.metadata(),
                    },
                };
                stat_reply(metadata)
            }
            FileOp::Stat { path, follow } => {
                let intent = if follow {
                    Intent::Read
                } else {
                    Intent::ReadNoFollow
                };
                let host = self.resolver.resolve(&path, intent)?.host;
                stat_reply(if follow {
                    std::fs::metadata(&host)
                } else {
                    std::fs::symlink_metadata(&host)
                })
            }
            FileOp::Getdents64 { handle, len, from } => {
                self.getdents64(handle, len as usize, from as usize)
            }
            FileOp::Mkdir { path, mode } => {
                let resolved = self.resolver.resolve(&path, Intent::Modify)?;
                if resolved.is_mount_root {
                    return Err(pop_abi::errno::EEXIST);
                }
                std::fs::DirBuilder::new()
                    .mode(mode & 0o7777)
                    .create(&resolved.host)
                    .map(|_| Done::value(0))
                    .map_err(|e| errno(&e))
            }
            FileOp::Remove { path, dir } => {
                let resolved = self.resolver.resolve(&path, Intent::Modify)?;
                if resolved.is_mount_root {
                    return Err(libc::EBUSY);
                }
                let result = if dir {
                    std::fs::remove_dir(&resolved.host)
                } else {
                    std::fs::remove_file(&resolved.host)
                };
                result.map(|_| Done::value(0)).map_err(|e| errno(&e))
            }
        }
    }

    fn open(&self, path: &[u8], flags: i32, mode: u32) -> Reply {
        let writes = flags & guest::O_ACCMODE != guest::O_RDONLY
            || flags & (guest::O_CREAT | guest::O_TRUNC) != 0;
        let intent = if writes { Intent::Write } else { Intent::Read };
        let resolved = self.resolver.resolve(path, intent)?;
        if self.table().len() >= MAX_OPEN {
            return Err(EMFILE);
        }
        let file = super::host_open_options(flags, mode)?
            .open(&resolved.host)
            .map_err(|e| errno(&e))?;
        let open = if file.metadata().map_err(|e| errno(&e))?.is_dir() {
            Open::Directory(Directory {
                file,
                path: resolved.host,
                listing: Mutex::new(None),
            })
        } else {
            Open::File(file)
        };
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        self.table().insert(handle, Arc::new(open));
        Ok(Done::value(handle as i64))
    }

    fn read(&self, handle: u64, len: usize) -> Reply {
        let mut data = vec![0; len.min(MAX_DATA)];
        let n = match self.target(handle)? {
            Target::Stdin => crate::sys::stdin().read(&mut data),
            Target::Stdio(_) => return Err(EBADF),
            Target::Open(open) => match &*open {
                Open::File(f) => (&*f).read(&mut data),
                Open::Directory(_) => return Err(EISDIR),
            },
        }
        .map_err(|e| errno(&e))?;
        data.truncate(n);
        Ok(Done {
            value: n as i64,
            data,
        })
    }

    fn write(&self, handle: u64, data: &[u8]) -> Reply {
        let written = match self.target(handle)? {
            Target::Stdin => return Err(EBADF),
            Target::Stdio(STDOUT) => crate::sys::stdout().write(data),
            Target::Stdio(_) => crate::sys::stderr().write(data),
            Target::Open(open) => match &*open {
                Open::File(f) => (&*f).write(data),
                Open::Directory(_) => return Err(EISDIR),
            },
        };
        written
            .map(|n| Done::value(n as i64))
            .map_err(|e| errno(&e))
    }

    fn lseek(&self, handle: u64, offset: i64, whence: i32) -> Reply {
        let pos = match whence {
            SEEK_SET => SeekFrom::Start(u64::try_from(offset).map_err(|_| EINVAL)?),
            SEEK_CUR => SeekFrom::Current(offset),
            SEEK_END => SeekFrom::End(offset),
            _ => return Err(EINVAL),
        };
        let Target::Open(open) = self.target(handle)? else {
            return Err(libc::ESPIPE);
        };
        match &*open {
            Open::File(f) => (&*f)
                .seek(pos)
                .map(|p| Done::value(p as i64))
                .map_err(|e| errno(&e)),
            Open::Directory(dir) if pos == SeekFrom::Start(0) => {
                *crate::sync::lock(&dir.listing) = None;
                Ok(Done::value(0))
            }
            Open::Directory(_) => Err(EINVAL),
        }
    }

    fn getdents64(&self, handle: u64, len: usize, from: usize) -> Reply {
        let Target::Open(open) = self.target(handle)? else {
            return Err(ENOTDIR);
        };
        let Open::Directory(dir) = &*open else {
            return Err(ENOTDIR);
        };
        let mut listing = crate::sync::lock(&dir.listing);
        if from == 0 {
            if listing.as_ref().is_some_and(|(_, ended)| *ended) {
                return Ok(Done::value(0));
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
            let total: usize = entries
                .iter()
                .map(|e| pop_abi::dirent::record_len(e.name.len()))
                .sum();
            if total > len {
                return Err(EINVAL);
            }
            *listing = Some((entries, false));
        }
        let Some((entries, ended)) = listing.as_mut() else {
            return Err(EINVAL);
        };
        if from > entries.len() {
            return Err(EINVAL);
        }
        // As many whole records as one reply holds.
        let (mut end, mut bytes) = (from, 0);
        while end < entries.len() {
            let more = pop_abi::dirent::record_len(entries[end].name.len());
            if bytes + more > MAX_DATA {
                break;
            }
            bytes += more;
            end += 1;
        }
        *ended = end == entries.len();
        Ok(Done {
            value: end as i64,
            data: dirent::encode(&entries[from..end], from),
        })
    }
}

fn stat_reply(metadata: std::io::Result<std::fs::Metadata>) -> Reply {
    let data = stat::encode(&stat::from_metadata(&metadata.map_err(|e| errno(&e))?));
    Ok(Done { value: 0, data })
}
