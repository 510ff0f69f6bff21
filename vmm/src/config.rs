//! What a VM is launched with, and the parsers for the command-line values that describe it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use pop_abi::layout::{LARGE_PAGE_SIZE, MAX_SHARED_SIZE, MAX_VCPUS};

use crate::fs::path::normalize;
use crate::hooks::{Hooks, LocalHooks};
use crate::output::Output;

/// Default application memory (`--memory`).
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Default most threads that may exist at once (`--max-threads`).
pub const DEFAULT_MAX_THREADS: u32 = 64;

/// Everything a VM is launched with.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Application-writable memory in bytes (a multiple of 2 MiB).
    pub memory: u64,
    /// The guest's whole environment, as `KEY=VALUE` strings.
    pub env: Vec<OsString>,
    /// Host directories visible to the guest.
    pub mounts: Vec<Mount>,
    /// Give the guest a scratch `/tmp` of its own ([`crate::fs::Scratch`]), unless a mount
    /// is there already (`--no-tmp` turns it off).
    pub scratch_tmp: bool,
    /// Most threads (vCPUs) that may exist at once, main included.
    pub max_threads: u32,
    /// The guest's `argv`, program name first.
    pub args: Vec<OsString>,
    /// Print phase timings to stderr when the guest exits.
    pub timings: bool,
    /// Where the guest's fd 1 goes.
    pub stdout: Output,
    /// Where the guest's fd 2 (and VMM reports about the guest) go.
    pub stderr: Output,
    /// The node the VM runs on (what `pop::current_nid()` answers in the guest; 0 alone).
    pub node_id: u32,
    /// Where threads run and how futexes work ([`LocalHooks`]: all here, host futexes).
    pub hooks: Arc<dyn Hooks>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory: DEFAULT_MEMORY,
            env: Vec::new(),
            mounts: Vec::new(),
            scratch_tmp: true,
            max_threads: DEFAULT_MAX_THREADS,
            args: Vec::new(),
            timings: false,
            stdout: Output::Stdout,
            stderr: Output::Stderr,
            node_id: 0,
            hooks: Arc::new(LocalHooks),
        }
    }
}

pub use crate::fs::Mount;

/// A command-line value that does not describe a valid VM: which option, and why (one line).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A memory size (`--memory`).
    #[error("{0}")]
    Size(String),
    /// An environment variable (`--env`).
    #[error("{0}")]
    Env(String),
    /// A mount (`--mount`).
    #[error("{0}")]
    Mount(String),
    /// A thread limit (`--max-threads`).
    #[error("{0}")]
    MaxThreads(String),
    /// A CPU list (`--cpus`).
    #[error("{0}")]
    Cpus(String),
}

/// Parses a memory size: a number of bytes with an optional `K`, `M` or `G` suffix (powers
/// of 1024, optionally followed by `B` or `iB`), rounded up to a multiple of 2 MiB.
pub fn parse_memory(text: &str) -> Result<u64, ConfigError> {
    parse_memory_text(text).map_err(ConfigError::Size)
}

fn parse_memory_text(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size == 0 {
        return Err("memory size must not be zero".into());
    }
    if size > MAX_SHARED_SIZE {
        return Err(format!(
            "{text} is more than the maximum of {}G",
            MAX_SHARED_SIZE >> 30
        ));
    }
    Ok(size.div_ceil(LARGE_PAGE_SIZE) * LARGE_PAGE_SIZE)
}

/// Parses a size: a number of bytes with an optional `K`, `M` or `G` suffix (powers of 1024,
/// optionally followed by `B` or `iB`).
fn parse_size(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size '{text}': expected a number with an optional K, M or G suffix");
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(bad());
    }
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let suffix = suffix.to_ascii_uppercase();
    let unit = suffix
        .strip_suffix("IB")
        .or_else(|| suffix.strip_suffix('B'))
        .unwrap_or(&suffix);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ if suffix == "B" => 0,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size '{text}' is too large"))
}

/// Parses `--env KEY=VALUE`.
pub fn parse_env(text: &str) -> Result<OsString, ConfigError> {
    parse_env_text(text).map_err(ConfigError::Env)
}

fn parse_env_text(text: &str) -> Result<OsString, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() && !key.contains('\0') && !text.contains('\0') => {
            Ok(OsString::from(text))
        }
        _ => Err(format!(
            "expected KEY=VALUE with a non-empty KEY, got '{text}'"
        )),
    }
}

/// Parses `--mount HOST_DIR:GUEST_DIR[:rw]` (also accepts `:ro`); the host directory must exist.
pub fn parse_mount(text: &str) -> Result<Mount, ConfigError> {
    parse_mount_text(text).map_err(ConfigError::Mount)
}

fn parse_mount_text(text: &str) -> Result<Mount, String> {
    let syntax = || format!("expected HOST_DIR:GUEST_DIR[:rw], got '{text}'");
    let (rest, writable) = if let Some(rest) = text.strip_suffix(":rw") {
        (rest, true)
    } else if let Some(rest) = text.strip_suffix(":ro") {
        (rest, false)
    } else {
        (text, false)
    };
    let (host, guest) = rest.rsplit_once(':').ok_or_else(syntax)?;
    if host.is_empty() || guest.is_empty() {
        return Err(syntax());
    }
    if !guest.starts_with('/') {
        return Err(format!(
            "guest directory '{guest}' must be an absolute path"
        ));
    }
    let host_dir =
        std::fs::canonicalize(host).map_err(|e| format!("host directory '{host}': {e}"))?;
    if !host_dir.is_dir() {
        return Err(format!("host path '{host}' is not a directory"));
    }
    let guest_dir = normalize(guest.as_bytes())
        .map_err(|_| format!("guest directory '{guest}' is not a valid path"))?;
    let guest_dir = String::from_utf8(guest_dir.as_os_str().as_bytes().to_vec())
        .map_err(|_| format!("guest directory '{guest}' is not valid UTF-8"))?;
    Ok(Mount {
        host_dir,
        guest_dir,
        writable,
    })
}

/// Parses `--max-threads`.
pub fn parse_max_threads(text: &str) -> Result<u32, ConfigError> {
    parse_max_threads_text(text).map_err(ConfigError::MaxThreads)
}

fn parse_max_threads_text(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number from 1 to {MAX_VCPUS}, got '{text}'"
        )),
    }
}

/// CPUs a process may be given (`--cpus`): numbers below this.
pub const MAX_CPUS: usize = 1024;

/// A set of CPUs, as `--cpus` gives it: numbers and ranges, comma-separated (`0`, `2-3`,
/// `0,4-7`), in increasing order without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

/// Parses `--cpus`.
pub fn parse_cpus(text: &str) -> Result<CpuList, ConfigError> {
    parse_cpus_text(text).map_err(ConfigError::Cpus)
}

fn parse_cpus_text(text: &str) -> Result<CpuList, String> {
    let bad =
        || format!("expected CPU numbers or ranges such as 0,2-3 (below {MAX_CPUS}), got '{text}'");
    let mut cpus: Vec<usize> = Vec::new();
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part.trim(), part.trim()),
        };
        let (first, last) = match (first.parse::<usize>(), last.parse::<usize>()) {
            (Ok(a), Ok(b)) if a <= b && b < MAX_CPUS => (a, b),
            _ => return Err(bad()),
        };
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(CpuList(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_numbers_and_ranges() {
        assert_eq!(parse_cpus("1"), Ok(CpuList(vec![1])));
        assert_eq!(parse_cpus("0,2-4"), Ok(CpuList(vec![0, 2, 3, 4])));
        assert_eq!(parse_cpus("3,1-3"), Ok(CpuList(vec![1, 2, 3])));
        for bad in ["", "a", "3-1", "1,", "-1", "1024", "0-5000"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("3MiB"), Ok(3 << 20));
        assert_eq!(parse_size("5B"), Ok(5));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn memory_is_bounded_and_rounded_to_large_pages() {
        assert_eq!(parse_memory("256M"), Ok(256 << 20));
        assert_eq!(parse_memory("3M"), Ok(4 << 20));
        assert_eq!(parse_memory("1"), Ok(2 << 20));
        assert_eq!(parse_memory("64G"), Ok(64 << 30));
        assert!(parse_memory("65G").is_err());
        assert!(parse_memory("0").is_err());
    }

    #[test]
    fn env_needs_a_key() {
        assert_eq!(parse_env("A=1"), Ok(OsString::from("A=1")));
        assert_eq!(parse_env("A="), Ok(OsString::from("A=")));
        assert_eq!(parse_env("A=b=c"), Ok(OsString::from("A=b=c")));
        assert!(parse_env("A").is_err());
        assert!(parse_env("=1").is_err());
    }

    #[test]
    fn mounts_parse() {
        let dir = std::env::temp_dir();
        let canon = std::fs::canonicalize(&dir).unwrap();
        let text = format!("{}:/data/./x/..", dir.display());
        let m = parse_mount(&text).unwrap();
        assert_eq!(
            m,
            Mount {
                host_dir: canon.clone(),
                guest_dir: "/data".into(),
                writable: false
            }
        );
        let m = parse_mount(&format!("{}:/:rw", dir.display())).unwrap();
        assert_eq!(
            m,
            Mount {
                host_dir: canon,
                guest_dir: "/".into(),
                writable: true
            }
        );
        assert!(parse_mount("nocolon").is_err());
        assert!(parse_mount(":/x").is_err());
        assert!(parse_mount(&format!("{}:", dir.display())).is_err());
        assert!(parse_mount(&format!("{}:relative", dir.display())).is_err());
        assert!(parse_mount("/definitely/not/here:/x").is_err());
        assert!(parse_mount("/proc/version:/x").is_err());
    }

    #[test]
    fn max_threads_range() {
        assert_eq!(parse_max_threads("1"), Ok(1));
        assert_eq!(parse_max_threads("128"), Ok(128));
        assert!(parse_max_threads("0").is_err());
        assert!(parse_max_threads("129").is_err());
        assert!(parse_max_threads("x").is_err());
    }
}
