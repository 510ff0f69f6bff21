//! The host's tools: finding programs, installing Debian packages, downloading and unpacking
//! arm64 `.deb` files with apt and dpkg.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The Debian architecture of the simulated board's packages.
pub const ARCH: &str = "arm64";

/// The full path of `program` on `PATH`, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Makes sure `program` is on `PATH`, installing Debian package `package` when `install` is set.
pub fn ensure_program(program: &str, package: &str, install: bool) -> Result<PathBuf> {
    if let Some(found) = which(program) {
        return Ok(found);
    }
    if !install {
        return Err(Error::Setup(format!(
            "{program} not found: install it with `apt-get install {package}`"
        )));
    }
    apt_install(package)?;
    which(program).ok_or_else(|| {
        Error::Setup(format!(
            "{program} still not found after installing {package}"
        ))
    })
}

/// `apt-get install -y --no-install-recommends PACKAGE`, quietly; the tail of apt's output on
/// failure.
pub fn apt_install(package: &str) -> Result<()> {
    require_root(&format!("installing {package}"))?;
    apt_update_once()?;
    eprintln!("edge-sim: installing {package} (apt-get)");
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {package}"),
    )
    .map(drop)
}

/// Makes sure apt knows the arm64 architecture and has its package lists.
pub fn ensure_arm64_lists(install: bool) -> Result<()> {
    let foreign = run_quiet(
        Command::new("dpkg").arg("--print-foreign-architectures"),
        "dpkg --print-foreign-architectures",
    )?;
    if !foreign.lines().any(|l| l.trim() == ARCH) {
        if !install {
            return Err(Error::Setup(format!(
                "apt does not know {ARCH}: run `dpkg --add-architecture {ARCH} && apt-get update`"
            )));
        }
        require_root("adding the arm64 architecture to dpkg")?;
        eprintln!("edge-sim: dpkg --add-architecture {ARCH}");
        run_quiet(
            Command::new("dpkg").args(["--add-architecture", ARCH]),
            "dpkg --add-architecture",
        )?;
        apt_update_once()?;
    }
    if candidate("busybox-static")?.is_none() {
        if !install {
            return Err(Error::Setup(format!(
                "apt has no {ARCH} package lists: run `apt-get update`"
            )));
        }
        apt_update_once()?;
        if candidate("busybox-static")?.is_none() {
            return Err(Error::Setup(format!(
                "apt offers no busybox-static:{ARCH} even after apt-get update"
            )));
        }
    }
    Ok(())
}

/// The candidate version of `package:arm64`, if apt has one.
fn candidate(package: &str) -> Result<Option<String>> {
    let out = run_quiet(
        Command::new("apt-cache").args(["policy", &format!("{package}:{ARCH}")]),
        "apt-cache policy",
    )?;
    Ok(out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| v != "(none)"))
}

/// The versioned kernel package that `linux-image-arm64` currently points at,
/// e.g. `linux-image-6.1.0-56-arm64`.
pub fn kernel_package() -> Result<String> {
    let out = run_quiet(
        Command::new("apt-cache").args(["depends", &format!("linux-image-{ARCH}:{ARCH}")]),
        "apt-cache depends linux-image-arm64",
    )?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|p| p.trim().trim_end_matches(&format!(":{ARCH}")).to_string())
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| Error::Setup("apt names no kernel for linux-image-arm64".into()))
}

/// The `.deb` of `package` (arm64) in `dir`, downloading it with `apt-get download` if absent.
pub fn download(package: &str, dir: &Path) -> Result<PathBuf> {
    if let Some(found) = find_deb(package, dir)? {
        return Ok(found);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    eprintln!("edge-sim: downloading {package}:{ARCH}");
    let fetch = || {
        run_quiet(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
                .arg(format!("{package}:{ARCH}"))
                .current_dir(dir),
            &format!("apt-get download {package}:{ARCH}"),
        )
    };
    if fetch().is_err() {
        // Stale package lists name versions the archive no longer has: refresh, try again.
        apt_update_once()?;
        fetch()?;
    }
    find_deb(package, dir)?.ok_or_else(|| {
        Error::Setup(format!(
            "apt-get download {package}:{ARCH} left no .deb in {}",
            dir.display()
        ))
    })
}

fn find_deb(package: &str, dir: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let prefix = format!("{package}_");
    let suffix = format!("_{ARCH}.deb");
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(&suffix))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

/// Writes the file-system tarball of a `.deb` (decompressed once) to `out`, so that it can be
/// listed and extracted from many times cheaply.
pub fn deb_to_tar(deb: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    }
    let file = std::fs::File::create(out).map_err(|e| Error::io("creating", out, e))?;
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("--fsys-tarfile")
        .arg(deb)
        .stdin(Stdio::null())
        .stdout(file);
    let mut child = cmd
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("running dpkg-deb on", deb, e))?;
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                return Err(Error::Setup(format!(
                    "dpkg-deb --fsys-tarfile {} failed ({status})",
                    deb.display()
                )));
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Setup(format!(
                    "unpacking {} timed out",
                    deb.display()
                )));
            }
            Err(e) => return Err(Error::io("waiting for dpkg-deb on", deb, e)),
        }
    }
}

/// The paths (as `./dir/file`) of the non-directory entries of a tarball.
pub fn tar_files(tar: &Path) -> Result<Vec<String>> {
    let out = run_quiet(Command::new("tar").arg("-tf").arg(tar), "tar -t")?;
    Ok(out
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(str::to_string)
        .collect())
}

/// Extracts the named members of a tarball into `dest`.
pub fn tar_extract(tar: &Path, members: &[String], dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io("creating", dest, e))?;
    run_quiet(
        Command::new("tar")
            .arg("-xf")
            .arg(tar)
            .arg("-C")
            .arg(dest)
            .args(members),
        "tar -x",
    )
    .map(drop)
}

/// Extracts the named members (paths as `./dir/file`) of a `.deb` into `dest`.
pub fn extract(deb: &Path, members: &[String], dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io("creating", dest, e))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io("running dpkg-deb on", deb, e))?;
    let tar_in = dpkg.stdout.take().expect("piped stdout");
    let tar = output_within(
        Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(dest)
            .args(members)
            .stdin(tar_in),
        TOOL_TIMEOUT,
    );
    if !matches!(tar, Ok(Some(_))) {
        let _ = dpkg.kill();
    }
    let _ = dpkg.wait();
    let tar = tar
        .map_err(|e| Error::io("running tar for", deb, e))?
        .ok_or_else(|| Error::Setup(format!("extracting from {} timed out", deb.display())))?;
    if !tar.status.success() {
        return Err(Error::Setup(format!(
            "extracting from {}: {}",
            deb.display(),
            last_line(&String::from_utf8_lossy(&tar.stderr))
        )));
    }
    Ok(())
}

/// Fails with a one-line error unless this process runs as root.
fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Setup(format!(
            "{what} needs root: run edge-sim once as root, or do it by hand (see edge-sim --help)"
        )));
    }
    Ok(())
}

/// `apt-get update`, at most once per process.
fn apt_update_once() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if !*done {
        require_root("apt-get update")?;
        eprintln!("edge-sim: apt-get update");
        run_quiet(
            Command::new("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get update",
        )?;
        *done = true;
    }
    Ok(())
}

/// How long any one host tool (apt, dpkg, tar) may run before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs `cmd` with captured output; its stdout on success, a one-line error otherwise (also
/// when it runs longer than [`TOOL_TIMEOUT`], which kills it).
pub fn run_quiet(cmd: &mut Command, what: &str) -> Result<String> {
    let out = output_within(cmd.stdin(Stdio::null()), TOOL_TIMEOUT)
        .map_err(|e| Error::Setup(format!("{what}: cannot run: {e}")))?
        .ok_or_else(|| {
            Error::Setup(format!(
                "{what} did not finish within {} s",
                TOOL_TIMEOUT.as_secs()
            ))
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let why = if stderr.trim().is_empty() {
            last_line(&stdout)
        } else {
            last_line(&stderr)
        };
        return Err(Error::Setup(format!(
            "{what} failed ({}): {why}",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`Command::output`], but kills the process and returns `None` after `timeout`.
fn output_within(cmd: &mut Command, timeout: Duration) -> std::io::Result<Option<Output>> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(status.map(|status| Output {
        status,
        stdout,
        stderr,
    }))
}

/// The last `n` non-empty lines of `text`, trimmed, oldest first.
pub fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let mut lines: Vec<&str> = text
        .lines()
        .rev()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(n)
        .collect();
    lines.reverse();
    lines
}

/// The last non-empty line of `text`, trimmed.
pub fn last_line(text: &str) -> String {
    last_lines(text, 1).concat()
}
