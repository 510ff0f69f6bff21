//! Small file helpers: modification times and writes that readers never see half done.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// Modification time of `path`, or `None` if it does not exist or cannot be read.
pub(crate) fn mtime(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// True if `output` exists and is at least as new as `input`.
pub(crate) fn is_up_to_date(output: &Path, input: &Path) -> bool {
    match (mtime(output), mtime(input)) {
        (Some(out), Some(inp)) => out >= inp,
        _ => false,
    }
}

/// A path next to `path` that no other process uses, for building a file before
/// renaming it into place.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    with_suffix(path, &format!(".tmp{}.{n}", std::process::id()))
}

/// The file beside `path` whose name is `path`'s with `suffix` appended (`hello.map`).
pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Renames `from` to `to`, replacing `to` atomically.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io(to, e))
}

/// Writes `contents` to `path` unless it already holds exactly that, so that its
/// modification time only changes when its contents do. Returns true if it wrote.
pub(crate) fn write_if_changed(path: &Path, contents: &[u8]) -> Result<bool> {
    if fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    let tmp = temp_sibling(path);
    fs::write(&tmp, contents).map_err(|e| Error::io(&tmp, e))?;
    rename(&tmp, path)?;
    Ok(true)
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// The file in `deps/` beside `image` that cargo uplifted it from (the same inode), if any.
pub(crate) fn uplifted_from(image: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(image).ok()?;
    let deps = image.parent()?.join("deps");
    fs::read_dir(deps).ok()?.flatten().find_map(|entry| {
        let m = entry.metadata().ok()?;
        (m.ino() == meta.ino() && m.dev() == meta.dev()).then(|| entry.path())
    })
}
