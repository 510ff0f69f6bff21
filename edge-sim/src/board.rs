//! A running simulated board: start it, run commands in it, forward ports, stop it.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::agent::{self, Output, RequestError};
use crate::base::{self, AGENT_PORT};
use crate::cache;
use crate::error::{Error, Result};
use crate::host;
use crate::monitor;
use crate::payload;
use crate::ports::free_port;
use crate::qemu::{self, QEMU, QEMU_PACKAGE, QemuConfig, Supervisor};

use crate::state::{BoardState, is_our_qemu, pid_alive};

/// The address at which the board reaches the host's 127.0.0.1 (QEMU user networking).
pub const HOST_FROM_GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The board's own address on its network.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// How to start a board.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files or directories to put in the board's `/payload`, as `(host path, name)`.
    pub payload: Vec<(PathBuf, String)>,
    /// Guest TCP ports to reach from the host: each gets a free port on 127.0.0.1
    /// (see [`EdgeSim::host_port`]). More can be added later with [`EdgeSim::forward`].
    pub forwards: Vec<u16>,
    /// vCPUs (default 2).
    pub cpus: u32,
    /// Memory in MiB (default 1024).
    pub memory_mib: u32,
    /// How long to wait for the board to answer after QEMU starts (default 300 s).
    pub boot_timeout: Duration,
    /// Cache directory (default: see [`crate::cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Install missing host packages with apt (default true; needs root).
    pub install: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            payload: Vec::new(),
            forwards: Vec::new(),
            cpus: 2,
            memory_mib: 1024,
            boot_timeout: Duration::from_secs(300),
            cache_dir: None,
            install: true,
        }
    }
}

/// A command to run in the board: an argument vector run as-is (no shell expansion), with
/// optional stdin, environment, working directory and timeout.
#[derive(Debug, Clone)]
pub struct GuestCommand {
    argv: Vec<OsString>,
    stdin: Vec<u8>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    timeout: Duration,
}

impl GuestCommand {
    /// The command `argv[0]` with arguments `argv[1..]`; `PATH` includes `/payload`.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        GuestCommand {
            argv: argv.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            stdin: Vec::new(),
            env: Vec::new(),
            cwd: None,
            timeout: Duration::from_secs(600),
        }
    }

    /// Bytes for the command's stdin (default: empty).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs the command in this directory of the board.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Kills the command (status 137) if it runs longer than this (default 600 s; whole
    /// seconds, at least 1).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// How long a start took.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Preparing the host side: installing, downloading and building (when the cache is cold),
    /// staging the payload.
    pub setup: Duration,
    /// From starting QEMU to the board's agent answering.
    pub boot: Duration,
    /// Whether the base files were downloaded or built during this start.
    pub cache_built: bool,
}

enum Process {
    /// Started by this handle; killed when it is dropped or this process exits.
    Owned(Supervisor),
    /// Running on its own (`edge-sim start`); the child is kept while this process is its parent.
    Detached {
        pid: u32,
        child: Mutex<Option<Child>>,
    },
    /// Already killed (while dropping).
    Gone,
}

/// A running simulated aarch64 board. Dropping a board started with [`EdgeSim::start`] kills
/// it; a board from [`EdgeSim::attach`] keeps running until [`EdgeSim::stop`].
pub struct EdgeSim {
    process: Process,
    agent: SocketAddr,
    forwards: Mutex<BTreeMap<u16, u16>>,
    run_dir: PathBuf,
    console_log: PathBuf,
    stderr_log: PathBuf,
    monitor: PathBuf,
    timings: Timings,
    keep_run_dir: bool,
}

static NEXT_RUN: AtomicU32 = AtomicU32::new(0);

impl EdgeSim {
    /// Prepares the cache if needed, boots a board and waits until it runs commands.
    /// The board is killed when the handle is dropped, or when this process exits.
    pub fn start(options: &Options) -> Result<EdgeSim> {
        let run_name = format!(
            "{}-{}",
            std::process::id(),
            NEXT_RUN.fetch_add(1, Ordering::Relaxed)
        );
        Self::start_inner(options, &run_name, false)
    }

    /// Starts a board that keeps running after this process exits (`edge-sim start`), records
    /// it under `name` in the cache, and returns a handle to it.
    pub fn start_detached(options: &Options, name: &str) -> Result<EdgeSim> {
        check_name(name)?;
        let cache = options.cache_dir.clone().unwrap_or_else(cache::default_dir);
        if let Ok(existing) = BoardState::load(&cache, name) {
            if existing.alive() {
                return Err(Error::Setup(format!(
                    "board {name} is already running (pid {}); `edge-sim stop` it first",
                    existing.pid
                )));
            }
            existing.remove(&cache);
        }
        let board = Self::start_inner(options, &format!("board-{name}"), true)?;
        let state = board.state();
        state.save(&cache, name)?;
        Ok(board)
    }

    /// A handle to the board recorded under `name` by [`EdgeSim::start_detached`].
    pub fn attach(cache_dir: Option<&Path>, name: &str) -> Result<EdgeSim> {
        check_name(name)?;
        let cache = cache_dir.map_or_else(cache::default_dir, Path::to_path_buf);
        let state = BoardState::load(&cache, name)
            .map_err(|_| Error::Setup(format!("no board {name} running: `edge-sim start` one")))?;
        if !state.alive() {
            state.remove(&cache);
            return Err(Error::Setup(format!(
                "board {name} is no longer running: `edge-sim start` it again"
            )));
        }
        Ok(EdgeSim {
            process: Process::Detached {
                pid: state.pid,
                child: Mutex::new(None),
            },
            agent: SocketAddr::from((Ipv4Addr::LOCALHOST, state.agent_port)),
            forwards: Mutex::new(state.forwards.clone()),
            console_log: state.run_dir.join("console.log"),
            stderr_log: state.run_dir.join("qemu.log"),
            monitor: state.run_dir.join("monitor.sock"),
            run_dir: state.run_dir,
            timings: Timings {
                setup: Duration::ZERO,
                boot: Duration::ZERO,
                cache_built: false,
            },
            keep_run_dir: true,
        })
    }

    fn start_inner(options: &Options, run_name: &str, detached: bool) -> Result<EdgeSim> {
        let setup_start = Instant::now();
        let cache = options.cache_dir.clone().unwrap_or_else(cache::default_dir);
        host::ensure_program(QEMU, QEMU_PACKAGE, options.install)?;
        let base = base::prepare(&cache, options.install, false)?;

        let runs = cache.join("run");
        remove_stale_runs(&runs);
        let run_dir = runs.join(run_name);
        let _ = std::fs::remove_dir_all(&run_dir);
        let payload_dir = run_dir.join("payload");
        std::fs::create_dir_all(&payload_dir)
            .map_err(|e| Error::io("creating", &payload_dir, e))?;
        for (src, name) in &options.payload {
            payload::stage(&payload_dir, src, name)?;
        }
        let setup = setup_start.elapsed();

        let mut last_err = None;
        for _attempt in 0..3 {
            let mut forwards = BTreeMap::new();
            let agent_port = free_port()?;
            for &guest in &options.forwards {
                forwards.insert(guest, free_port()?);
            }
            let mut all: Vec<(u16, u16)> = vec![(agent_port, AGENT_PORT)];
            all.extend(forwards.iter().map(|(&g, &h)| (h, g)));
            let config = QemuConfig {
                kernel: base.kernel.clone(),
                initramfs: base.initramfs.clone(),
                cpus: options.cpus,
                memory_mib: options.memory_mib,
                payload_dir: payload_dir.clone(),
                console_log: run_dir.join("console.log"),
                stderr_log: run_dir.join("qemu.log"),
                monitor: monitor_path(&run_dir),
                forwards: all,
                extra_append: Vec::new(),
            };
            let boot_start = Instant::now();
            let process = if detached {
                let child = qemu::spawn_detached(&config)?;
                Process::Detached {
                    pid: child.id(),
                    child: Mutex::new(Some(child)),
                }
            } else {
                Process::Owned(Supervisor::spawn(&config)?)
            };
            let board = EdgeSim {
                process,
                agent: SocketAddr::from((Ipv4Addr::LOCALHOST, agent_port)),
                forwards: Mutex::new(forwards),
                run_dir: run_dir.clone(),
                console_log: config.console_log.clone(),
                stderr_log: config.stderr_log.clone(),
                monitor: config.monitor.clone(),
                timings: Timings {
                    setup,
                    boot: Duration::ZERO,
                    cache_built: base.built,
                },
                keep_run_dir: detached,
            };
            // A detached board is recorded before it boots, so that `edge-sim stop` finds it
            // even if this process is interrupted while waiting.
            let record = run_name.strip_prefix("board-").filter(|_| detached);
            if let Some(name) = record {
                board.state().save(&cache, name)?;
            }
            match board.wait_ready(options.boot_timeout) {
                Ok(()) => {
                    let mut board = board;
                    board.timings.boot = boot_start.elapsed();
                    return Ok(board);
                }
                Err(e) => {
                    if let Some(name) = record {
                        let _ = std::fs::remove_file(BoardState::path(&cache, name));
                    }
                    let retry = matches!(&e, Error::QemuExited { detail, .. }
                        if detail.contains("host forwarding") || detail.contains("Address already in use"));
                    board.kill_and_keep_logs();
                    if !retry {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Setup("cannot start the board".into())))
    }

    /// Polls the agent until it answers, QEMU exits, or `timeout` passes.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Err(Error::QemuExited {
                    status,
                    detail: qemu::failure_detail(&self.stderr_log, &self.console_log),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::BootTimeout {
                    secs: timeout.as_secs(),
                    detail: qemu::failure_detail(&self.stderr_log, &self.console_log),
                });
            }
            let wait = left.min(Duration::from_secs(30));
            match agent::request(self.agent, b"echo edge-sim-ready\n", b"", 20, wait) {
                Ok(out) if out.stdout == b"edge-sim-ready\n" => return Ok(()),
                Ok(out) => {
                    return Err(Error::Channel(format!(
                        "the agent answered the readiness check with status {} and {:?}",
                        out.status,
                        out.stderr_str()
                    )));
                }
                Err(RequestError::NotListening) | Err(RequestError::TimedOut) => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(RequestError::Failed(_)) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// Runs `argv` in the board (as-is, no shell; `PATH` includes `/payload`) and returns its
    /// exit status, stdout and stderr.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        self.run_with(&GuestCommand::new(argv))
    }

    /// Runs a shell script (busybox `sh`) in the board.
    pub fn sh(&self, script: &str) -> Result<Output> {
        self.run_with(&GuestCommand::new(["sh", "-c", script]))
    }

    /// Runs `cmd` in the board. Commands may run concurrently from several threads.
    pub fn run_with(&self, cmd: &GuestCommand) -> Result<Output> {
        if cmd.argv.is_empty() {
            return Err(Error::Channel("empty command".into()));
        }
        let argv: Vec<&OsStr> = cmd.argv.iter().map(OsString::as_os_str).collect();
        let script = agent::script_for(&argv, &cmd.env, cmd.cwd.as_deref());
        let secs = cmd.timeout.as_secs().max(1);
        // The host waits a little longer than the board, which kills the command first.
        let wait = Duration::from_secs(secs + 30);
        match agent::request(self.agent, &script, &cmd.stdin, secs, wait) {
            Ok(out) => Ok(out),
            Err(e) => Err(self.channel_error(e, secs)),
        }
    }

    fn channel_error(&self, e: RequestError, secs: u64) -> Error {
        if let Some(status) = self.exited() {
            return Error::QemuExited {
                status,
                detail: qemu::failure_detail(&self.stderr_log, &self.console_log),
            };
        }
        match e {
            RequestError::TimedOut => Error::CommandTimeout(secs),
            RequestError::NotListening => {
                Error::Channel("the board's agent closed the connection without a reply".into())
            }
            RequestError::Failed(why) => Error::Channel(why),
        }
    }

    /// The host port (on 127.0.0.1) that forwards to `guest_port`, if one was set up.
    pub fn host_port(&self, guest_port: u16) -> Option<u16> {
        self.forwards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&guest_port)
            .copied()
    }

    /// Forwards a new host port on 127.0.0.1 to `guest_port` while the board runs, and returns
    /// the host port (the existing one if `guest_port` is already forwarded).
    pub fn forward(&self, guest_port: u16) -> Result<u16> {
        let mut forwards = self.forwards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&host) = forwards.get(&guest_port) {
            return Ok(host);
        }
        let host = free_port()?;
        let reply = monitor::command(
            &self.monitor,
            &format!("hostfwd_add n0 tcp:127.0.0.1:{host}-:{guest_port}"),
        )?;
        if !reply.is_empty() {
            return Err(Error::Channel(format!(
                "adding a forward to guest port {guest_port}: {reply}"
            )));
        }
        forwards.insert(guest_port, host);
        if let Process::Detached { .. } = self.process {
            // Keep `edge-sim` processes attached later in the know.
            let state = BoardState {
                pid: self.pid(),
                agent_port: self.agent.port(),
                run_dir: self.run_dir.clone(),
                forwards: forwards.clone(),
            };
            if let Some((cache, name)) = self.state_location() {
                state.save(cache, name)?;
            }
        }
        Ok(host)
    }

    /// All forwards, as guest port -> host port.
    pub fn forwards(&self) -> BTreeMap<u16, u16> {
        self.forwards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How the board, running `nc`, a client or a server of its own, reaches the host's
    /// `127.0.0.1:host_port`: `10.0.2.2:host_port`.
    pub fn host_addr_from_guest(&self, host_port: u16) -> SocketAddr {
        SocketAddr::from((HOST_FROM_GUEST, host_port))
    }

    /// Puts a file or directory into the running board's `/payload` under `name` (visible at
    /// once; replaces an earlier one).
    pub fn add_payload(&self, src: &Path, name: &str) -> Result<()> {
        payload::stage(&self.run_dir.join("payload"), src, name)
    }

    /// The host address of the command agent (127.0.0.1:port).
    pub fn agent_addr(&self) -> SocketAddr {
        self.agent
    }

    /// The file holding the board's serial console (kernel messages and `/init`'s output).
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Process::Owned(s) => s.pid(),
            Process::Detached { pid, .. } => *pid,
            Process::Gone => 0,
        }
    }

    /// How long setup and boot took for this start.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// QEMU's exit status if it has exited.
    pub fn exited(&self) -> Option<String> {
        match &self.process {
            Process::Owned(s) => s.exited(),
            Process::Detached { pid, child } => {
                let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(c) = child.as_mut() {
                    return c.try_wait().ok().flatten().map(|s| s.to_string());
                }
                (!pid_alive(*pid)).then(|| "no longer running".to_string())
            }
            Process::Gone => Some("killed".to_string()),
        }
    }

    /// Where this board's state file is kept: the cache directory and the board's name
    /// (its run directory is `CACHE/run/board-NAME`).
    fn state_location(&self) -> Option<(&Path, &str)> {
        let cache = self.run_dir.parent().and_then(Path::parent)?;
        let name = self
            .run_dir
            .file_name()
            .and_then(OsStr::to_str)?
            .strip_prefix("board-")?;
        Some((cache, name))
    }

    /// Stops the board (kills QEMU) and removes its run directory and record.
    pub fn stop(self) {
        if let Process::Detached { pid, .. } = &self.process
            && is_our_qemu(*pid, &self.run_dir)
        {
            // SAFETY: kill has no memory effects; the pid was checked to be this board's QEMU.
            unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            if let Some((cache, name)) = self.state_location() {
                let _ = std::fs::remove_file(BoardState::path(cache, name));
            }
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
        // An owned board is killed and cleaned up by Drop.
    }

    fn state(&self) -> BoardState {
        BoardState {
            pid: self.pid(),
            agent_port: self.agent.port(),
            run_dir: self.run_dir.clone(),
            forwards: self.forwards(),
        }
    }

    /// Kills QEMU after a failed start, keeping the logs for the error message.
    fn kill_and_keep_logs(mut self) {
        self.keep_run_dir = true;
        if let Process::Detached { child, .. } = &self.process
            && let Some(mut c) = child.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EdgeSim {
    fn drop(&mut self) {
        if let Process::Owned(_) = self.process {
            // Dropping the supervisor kills QEMU and waits for it.
            drop(std::mem::replace(&mut self.process, Process::Gone));
            if !self.keep_run_dir && std::env::var_os("EDGE_SIM_KEEP_LOGS").is_none() {
                let _ = std::fs::remove_dir_all(&self.run_dir);
            }
        }
    }
}

/// Board names become file names: letters, digits, `-` and `_` only.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Setup(format!(
            "board name {name:?}: use letters, digits, - and _ only"
        )))
    }
}

/// The monitor socket's path: in the run directory unless that path is too long for a Unix
/// socket address.
fn monitor_path(run_dir: &Path) -> PathBuf {
    let path = run_dir.join("monitor.sock");
    if path.as_os_str().len() < 100 {
        return path;
    }
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::env::temp_dir().join(format!("edge-sim-{name}.sock"))
}

/// Removes run directories of boards whose process is gone (`PID-N` names only; detached
/// boards' `board-NAME` directories are removed by `stop`).
fn remove_stale_runs(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !pid_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
