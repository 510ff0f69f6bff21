//! The record of a board left running by `edge-sim start`, so that later commands find it:
//! `CACHE/boards/NAME.state`, lines of `key=value`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache::write_atomic;
use crate::error::{Error, Result};

/// Where a detached board runs and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoardState {
    /// QEMU's process id.
    pub pid: u32,
    /// Host port of the command agent on 127.0.0.1.
    pub agent_port: u16,
    /// The board's run directory (payload, logs, monitor socket).
    pub run_dir: PathBuf,
    /// Forwards, guest port -> host port.
    pub forwards: BTreeMap<u16, u16>,
}

impl BoardState {
    /// The record's path for board `name`.
    pub fn path(cache: &Path, name: &str) -> PathBuf {
        cache.join("boards").join(format!("{name}.state"))
    }

    /// Reads the record of board `name`.
    pub fn load(cache: &Path, name: &str) -> Result<BoardState> {
        let path = Self::path(cache, name);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        Self::parse(&text).ok_or_else(|| Error::Setup(format!("{} is malformed", path.display())))
    }

    fn parse(text: &str) -> Option<BoardState> {
        let fields: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let mut forwards = BTreeMap::new();
        for pair in fields.get("forwards")?.split(',').filter(|p| !p.is_empty()) {
            let (g, h) = pair.split_once(':')?;
            forwards.insert(g.parse().ok()?, h.parse().ok()?);
        }
        Some(BoardState {
            pid: fields.get("pid")?.parse().ok()?,
            agent_port: fields.get("agent_port")?.parse().ok()?,
            run_dir: PathBuf::from(fields.get("run_dir")?),
            forwards,
        })
    }

    /// Writes the record of board `name`.
    pub fn save(&self, cache: &Path, name: &str) -> Result<()> {
        let path = Self::path(cache, name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        }
        let forwards: Vec<String> = self
            .forwards
            .iter()
            .map(|(g, h)| format!("{g}:{h}"))
            .collect();
        let text = format!(
            "pid={}\nagent_port={}\nrun_dir={}\nforwards={}\n",
            self.pid,
            self.agent_port,
            self.run_dir.display(),
            forwards.join(",")
        );
        write_atomic(&path, text.as_bytes())
    }

    /// Whether the recorded QEMU still runs.
    pub fn alive(&self) -> bool {
        pid_alive(self.pid) && is_our_qemu(self.pid, &self.run_dir)
    }

    /// Deletes the record and the board's run directory.
    pub fn remove(&self, cache: &Path) {
        if let Some(name) = self
            .run_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("board-"))
        {
            let _ = std::fs::remove_file(Self::path(cache, name));
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub(crate) fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Whether `pid` is the QEMU of the board whose run directory is `run_dir`.
pub(crate) fn is_our_qemu(pid: u32, run_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = run_dir.join("console.log");
    let needle = needle.as_os_str().as_encoded_bytes();
    pid_alive(pid) && cmdline.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("edge-sim-state-{}", std::process::id()));
        let state = BoardState {
            pid: 42,
            agent_port: 4000,
            run_dir: PathBuf::from("/x/run/board-dev"),
            forwards: BTreeMap::from([(8080, 4001), (9000, 4002)]),
        };
        state.save(&dir, "dev").unwrap();
        assert_eq!(BoardState::load(&dir, "dev").unwrap(), state);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
