//! The QEMU command line of a board, and the process that runs it.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

/// The QEMU program that runs the board.
pub const QEMU: &str = "qemu-system-aarch64";
/// The Debian package that provides [`QEMU`].
pub const QEMU_PACKAGE: &str = "qemu-system-arm";

/// Everything QEMU needs to start one board.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Host directory shared read-only as `/payload` (virtio-9p).
    pub payload_dir: PathBuf,
    /// File receiving the serial console.
    pub console_log: PathBuf,
    /// File receiving QEMU's own stderr.
    pub stderr_log: PathBuf,
    /// Unix socket of the human monitor (used to add port forwards at run time).
    pub monitor: PathBuf,
    /// TCP forwards from host loopback to the guest: `(host_port, guest_port)`.
    pub forwards: Vec<(u16, u16)>,
    /// Extra kernel command-line words.
    pub extra_append: Vec<String>,
}

impl QemuConfig {
    /// The `qemu-system-aarch64` command for this board.
    ///
    /// `pauth-impdef=on` keeps `-cpu max` but replaces the architected pointer-authentication
    /// algorithm, which is very slow under TCG, by QEMU's cheap one: boot to the agent takes
    /// about 6 s instead of 14 s on this machine. The guest sees the same features.
    pub fn command(&self) -> Command {
        let mut netdev = String::from("user,id=n0,ipv6=off");
        for (host, guest) in &self.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        let mut append = String::from("console=ttyAMA0 rdinit=/init quiet panic=-1");
        for word in &self.extra_append {
            append.push(' ');
            append.push_str(word);
        }
        let mut cmd = Command::new(QEMU);
        cmd.args(["-M", "virt,virtualization=on,gic-version=3"])
            .args(["-cpu", "max,pauth-impdef=on"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", self.console_log.display()))
            .arg("-monitor")
            .arg(format!(
                "unix:{},server=on,wait=off",
                self.monitor.display()
            ))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .args(["-append", &append])
            .args(["-netdev", &netdev])
            // No option ROM: the kernel is loaded directly and never boots from the NIC, and the ROM
            // (`efi-virtio.rom`) is in a package that a minimal QEMU install leaves out.
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
            .arg("-fsdev")
            .arg(format!(
                "local,id=payload,path={},security_model=none,readonly=on",
                self.payload_dir.display()
            ))
            .args(["-device", "virtio-9p-pci,fsdev=payload,mount_tag=payload"])
            .args(["-device", "virtio-rng-pci"]);
        cmd
    }
}

/// QEMU's command for `config`, with no input, no output, and its stderr to the log file.
fn quiet_command(config: &QemuConfig) -> Result<Command> {
    let mut cmd = config.command();
    let stderr = File::create(&config.stderr_log)
        .map_err(|e| Error::io("creating", &config.stderr_log, e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    Ok(cmd)
}

/// Spawns QEMU detached from this process (its own session; it outlives us).
pub fn spawn_detached(config: &QemuConfig) -> Result<Child> {
    let mut cmd = quiet_command(config)?;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| Error::Setup(format!("cannot start {QEMU}: {e}")))
}

/// A QEMU process owned by this process: killed when the [`Supervisor`] is dropped, and also
/// when this process dies (`PR_SET_PDEATHSIG`, tied to a thread that lives as long as the
/// supervisor).
pub struct Supervisor {
    pid: u32,
    kill: Option<mpsc::Sender<()>>,
    exit: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts QEMU with `config`.
    pub fn spawn(config: &QemuConfig) -> Result<Supervisor> {
        let mut cmd = quiet_command(config)?;
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
        unsafe {
            let parent = libc::getpid();
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (started_tx, started_rx) = mpsc::channel::<std::io::Result<u32>>();
        let (kill_tx, kill_rx) = mpsc::channel::<()>();
        let exit = Arc::new(Mutex::new(None));
        let exit_in_thread = Arc::clone(&exit);
        let thread = std::thread::Builder::new()
            .name("edge-sim-qemu".into())
            .spawn(move || match cmd.spawn() {
                Ok(child) => {
                    let _ = started_tx.send(Ok(child.id()));
                    watch(child, kill_rx, exit_in_thread);
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Setup(format!("cannot start a thread: {e}")))?;
        let pid = match started_rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => return Err(Error::Setup(format!("cannot start {QEMU}: {e}"))),
            Err(_) => return Err(Error::Setup(format!("cannot start {QEMU}"))),
        };
        Ok(Supervisor {
            pid,
            kill: Some(kill_tx),
            exit,
            thread: Some(thread),
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// QEMU's exit status, once it has exited.
    pub fn exited(&self) -> Option<String> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The watcher thread: owns the child, records its exit, kills it on request or when the
/// supervisor is dropped.
fn watch(mut child: Child, kill: mpsc::Receiver<()>, exit: Arc<Mutex<Option<String>>>) {
    loop {
        match kill.recv_timeout(Duration::from_millis(50)) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = child.kill();
                let status = child.wait();
                *exit.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(status.map_or_else(|e| e.to_string(), |s| s.to_string()));
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    *exit.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.to_string());
                    return;
                }
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How many lines of each log a failure shows.
const TAIL_LINES: usize = 8;

/// What a failed or silent board left in its logs, for error messages: after a colon, the last
/// line of QEMU's stderr (or, if it is empty, of the console), then on the following lines the
/// last [`TAIL_LINES`] lines of each log under its path.
pub fn failure_detail(stderr_log: &Path, console_log: &Path) -> String {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (qemu, console) = (read(stderr_log), read(console_log));
    let mut detail = String::new();
    let headline = match crate::host::last_line(&qemu) {
        l if l.is_empty() => crate::host::last_line(&console),
        l => l,
    };
    if !headline.is_empty() {
        detail.push_str(&format!(": {headline}"));
    }
    for (what, path, text) in [
        ("QEMU stderr", stderr_log, &qemu),
        ("console", console_log, &console),
    ] {
        detail.push_str(&format!("\n  {what} ({}):", path.display()));
        let tail = crate::host::last_lines(text, TAIL_LINES);
        if tail.is_empty() {
            detail.push_str(" (empty)");
        }
        for line in tail {
            detail.push_str(&format!("\n    {line}"));
        }
    }
    detail
}
