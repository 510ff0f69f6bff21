//! The payload directory shared with the board as `/payload`: files and directories staged by
//! hard link (or copy, across file systems), so the board sees a snapshot of them.

use std::path::Path;

use crate::error::{Error, Result};

/// Puts `src` (a file or a directory, recursively) at `dir/name`, replacing what was there.
pub fn stage(dir: &Path, src: &Path, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Setup(format!(
            "payload name {name:?} must be a plain file name"
        )));
    }
    let dest = dir.join(name);
    if dest.symlink_metadata().is_ok() {
        let removed = if dest.is_dir() {
            std::fs::remove_dir_all(&dest)
        } else {
            std::fs::remove_file(&dest)
        };
        removed.map_err(|e| Error::io("replacing", &dest, e))?;
    }
    copy_tree(src, &dest)
}

fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    let meta = std::fs::metadata(src).map_err(|e| Error::io("reading payload", src, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dest).map_err(|e| Error::io("creating", dest, e))?;
        let entries = std::fs::read_dir(src).map_err(|e| Error::io("reading", src, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("reading", src, e))?;
            copy_tree(&entry.path(), &dest.join(entry.file_name()))?;
        }
        Ok(())
    } else if std::fs::hard_link(src, dest).is_ok() {
        Ok(())
    } else {
        std::fs::copy(src, dest)
            .map(drop)
            .map_err(|e| Error::io("copying payload to", dest, e))
    }
}
