//! Guest paths to host paths: lexical normalization, mount lookup, and containment of the
//! result in the mount's host directory after symbolic links are resolved.

use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use pop_abi::errno::{EACCES, ENOENT, EROFS};

use super::Mount;

/// Normalizes a guest path lexically: relative paths are taken from `/`, `.` is dropped and
/// `..` removes the previous component (never going above `/`). The result is absolute.
pub fn normalize(path: &[u8]) -> Result<PathBuf, i32> {
    if path.is_empty() {
        return Err(ENOENT);
    }
    let mut out = PathBuf::from("/");
    for component in Path::new(OsStr::from_bytes(path)).components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// What an operation is going to do with a path, for read-only and containment checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Read or stat, following a final symbolic link.
    Read,
    /// Stat without following a final symbolic link.
    ReadNoFollow,
    /// Open for writing or create, following a final symbolic link.
    Write,
    /// Create or remove the final component itself (mkdir, unlink, rmdir).
    Modify,
}

impl Intent {
    fn writes(self) -> bool {
        matches!(self, Intent::Write | Intent::Modify)
    }
    fn follows_final(self) -> bool {
        matches!(self, Intent::Read | Intent::Write)
    }
}

/// A guest path mapped into a mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The host path to operate on.
    pub host: PathBuf,
    /// Whether it is the mount's root directory itself.
    pub is_mount_root: bool,
}

/// Maps guest paths to host paths through a set of mounts.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    mounts: Vec<Mount>,
}

impl Resolver {
    /// A resolver over `mounts` (the guest sees nothing outside them).
    pub fn new(mounts: Vec<Mount>) -> Resolver {
        Resolver { mounts }
    }

    /// Whether any host directory is mounted.
    pub fn has_mounts(&self) -> bool {
        !self.mounts.is_empty()
    }

    /// Resolves the guest path `path` for `intent`: `ENOENT` outside every mount, `EROFS` for a
    /// write on a read-only mount, `EACCES` if symbolic links lead out of the mount.
    pub fn resolve(&self, path: &[u8], intent: Intent) -> Result<Resolved, i32> {
        let guest = normalize(path)?;
        let (mount, rest) = self
            .mounts
            .iter()
            .filter_map(|m| Some((m, guest.strip_prefix(&m.guest_dir).ok()?)))
            .max_by_key(|(m, _)| Path::new(&m.guest_dir).components().count())
            .ok_or(ENOENT)?;
        if intent.writes() && !mount.writable {
            return Err(EROFS);
        }
        let root = &mount.host_dir;
        if rest.as_os_str().is_empty() {
            return Ok(Resolved {
                host: root.clone(),
                is_mount_root: true,
            });
        }
        let lexical = root.join(rest);
        let (Some(parent), Some(name)) = (lexical.parent(), lexical.file_name()) else {
            return Err(ENOENT);
        };
        let parent = std::fs::canonicalize(parent).map_err(|e| errno(&e))?;
        if !parent.starts_with(root) {
            return Err(EACCES);
        }
        let candidate = parent.join(name);
        if !intent.follows_final() {
            return Ok(Resolved {
                host: candidate,
                is_mount_root: false,
            });
        }
        match std::fs::canonicalize(&candidate) {
            Ok(real) if real.starts_with(root) => Ok(Resolved {
                is_mount_root: real == *root,
                host: real,
            }),
            Ok(_) => Err(EACCES),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if candidate.symlink_metadata().is_ok() {
                    // A dangling symbolic link: creating through it could land anywhere.
                    Err(if intent.writes() { EACCES } else { ENOENT })
                } else {
                    Ok(Resolved {
                        host: candidate,
                        is_mount_root: false,
                    })
                }
            }
            Err(e) => Err(errno(&e)),
        }
    }
}

/// The errno of a host I/O error.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(pop_abi::errno::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn normalizes_lexically_without_escaping_root() {
        assert_eq!(normalize(b"/a/./b/../c"), Ok(p("/a/c")));
        assert_eq!(normalize(b"a/b"), Ok(p("/a/b")));
        assert_eq!(normalize(b"/../../etc"), Ok(p("/etc")));
        assert_eq!(normalize(b"/a/.."), Ok(p("/")));
        assert_eq!(normalize(b"//a//b/"), Ok(p("/a/b")));
        assert_eq!(normalize(b""), Err(ENOENT));
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn temp_dir(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("popvmm-path-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(std::fs::canonicalize(&dir).unwrap())
    }

    #[test]
    fn resolves_through_the_longest_mount() {
        let t = temp_dir("mounts");
        let (a, b) = (t.0.join("a"), t.0.join("b"));
        std::fs::create_dir_all(a.join("sub")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("sub/f"), b"x").unwrap();
        let r = Resolver::new(vec![
            Mount {
                host_dir: a.clone(),
                guest_dir: "/data".into(),
                writable: false,
            },
            Mount {
                host_dir: b.clone(),
                guest_dir: "/data/out".into(),
                writable: true,
            },
        ]);
        let host = |path: &str, intent| r.resolve(path.as_bytes(), intent).map(|x| x.host);
        assert_eq!(host("/data/sub/f", Intent::Read), Ok(a.join("sub/f")));
        assert_eq!(
            host("/data/sub/../sub/./f", Intent::Read),
            Ok(a.join("sub/f"))
        );
        assert_eq!(host("data/sub/f", Intent::Read), Ok(a.join("sub/f")));
        assert_eq!(host("/data/out/new", Intent::Write), Ok(b.join("new")));
        assert_eq!(host("/data/new", Intent::Write), Err(EROFS));
        assert_eq!(host("/data/sub", Intent::Modify), Err(EROFS));
        assert_eq!(host("/elsewhere", Intent::Read), Err(ENOENT));
        assert_eq!(host("/", Intent::Read), Err(ENOENT));
        assert_eq!(host("/datafoo", Intent::Read), Err(ENOENT));
        // `..` never leaves the guest's root, so it cannot reach the host's parent directory.
        assert_eq!(host("/data/../../../etc/passwd", Intent::Read), Err(ENOENT));
        assert_eq!(
            host("/data/../data/sub/f", Intent::Read),
            Ok(a.join("sub/f"))
        );
        assert!(r.resolve(b"/data", Intent::Read).unwrap().is_mount_root);
        assert_eq!(host("/data/missing/x", Intent::Read), Err(ENOENT));
    }

    #[test]
    fn symlinks_cannot_escape_the_mount() {
        let t = temp_dir("links");
        let root = t.0.join("root");
        let outside = t.0.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::fs::write(root.join("inner"), b"i").unwrap();
        symlink(&outside, root.join("out_dir")).unwrap();
        symlink(outside.join("secret"), root.join("out_file")).unwrap();
        symlink("inner", root.join("ok_link")).unwrap();
        symlink(outside.join("nothing"), root.join("dangling")).unwrap();
        let r = Resolver::new(vec![Mount {
            host_dir: root.clone(),
            guest_dir: "/m".into(),
            writable: true,
        }]);
        let host = |path: &str, intent| r.resolve(path.as_bytes(), intent).map(|x| x.host);
        assert_eq!(host("/m/out_dir/secret", Intent::Read), Err(EACCES));
        assert_eq!(host("/m/out_dir/new", Intent::Write), Err(EACCES));
        assert_eq!(host("/m/out_file", Intent::Read), Err(EACCES));
        assert_eq!(host("/m/ok_link", Intent::Read), Ok(root.join("inner")));
        // Not following the final link: the link itself is inside the mount.
        assert_eq!(
            host("/m/out_file", Intent::ReadNoFollow),
            Ok(root.join("out_file"))
        );
        assert_eq!(
            host("/m/out_file", Intent::Modify),
            Ok(root.join("out_file"))
        );
        assert_eq!(host("/m/dangling", Intent::Write), Err(EACCES));
        assert_eq!(host("/m/dangling", Intent::Read), Err(ENOENT));
    }
}
