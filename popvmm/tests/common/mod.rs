//! Helpers for the tests that run `popvmm` processes.

#![allow(dead_code)]

pub mod board;
pub mod cluster;

use std::path::{Path, PathBuf};
use std::process::Child;

/// A process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The host directories of the scratch `/tmp`s process `pid` made that are still there.
pub fn scratch_dirs_of(pid: u32) -> Vec<String> {
    let prefix = format!("popvmm-tmp-{pid}-");
    ["/dev/shm".into(), std::env::temp_dir()]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}
