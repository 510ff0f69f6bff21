//! `popvmm` on simulated aarch64 boards (`edge-sim`: Debian's arm64 kernel under
//! qemu-system-aarch64, with real KVM inside): popvmm built for the board, the example apps
//! built for aarch64, and clusters of `popvmm node`s on a board.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge_sim::{EdgeSim, GuestCommand, Options};
use pop_toolchain::{ArchSelection, BuildOptions};
use serde_json::Value;

use super::repo;

/// Image paths by name for `arch`. The aarch64 images are built as aligned pairs with
/// their x86-64 twins (`--arch all`), as a cross-ISA app ships them: the boards run those.
pub fn images(arch: &str) -> HashMap<String, PathBuf> {
    let selection = match arch {
        "aarch64" => ArchSelection::All,
        _ => arch.parse::<ArchSelection>().unwrap(),
    };
    let options = BuildOptions {
        arch: selection,
        manifest_path: Some(repo().join("images/Cargo.toml")),
        ..Default::default()
    };
    let triple = format!("{arch}-unknown-hermit");
    pop_toolchain::build(&options)
        .expect("cargo pop build")
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&triple))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into(), p))
        .collect()
}

/// Builds popvmm for the board (static, aarch64-unknown-linux-musl), with the failure
/// hooks the tests use (`POPVMM_TEST_DIE_ON`; inert without it).
pub fn popvmm_aarch64() -> PathBuf {
    let root = repo();
    let target_dir = root.join("target");
    let recipe = edge_sim::musl::Recipe::for_dir(&root, None, true).expect("aarch64 musl recipe");
    let status = recipe
        .cargo_build(&root.join("Cargo.toml"), &target_dir)
        .args(["--quiet", "-p", "popvmm", "--bin", "popvmm"])
        .args(["--features", "pop-migrate/testing"])
        .status()
        .expect("cargo build of popvmm for aarch64");
    assert!(status.success(), "building popvmm for aarch64 failed");
    target_dir.join("aarch64-unknown-linux-musl/release/popvmm")
}

/// What one run gave: stdout, stderr, exit status.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub status: i32,
}

impl Run {
    fn of(out: edge_sim::Output) -> Run {
        Run {
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
            status: out.status,
        }
    }
}

/// `s` quoted for the board's shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shared secret of the board clusters.
pub const SECRET: &str = "the board cluster tests secret";

/// The board clusters' cluster file before its nodes: the secret, and heartbeats patient
/// enough for emulated boards on a loaded machine (a node is lost after 10 s of silence).
pub const HEADER: &str = "secret_file = \"secret\"\nheartbeat_ms = 1000\nheartbeat_misses = 10\n";

/// Held by each test that boots boards: one at a time, so that the emulated boards (two
/// cores here) do not starve each other into missed deadlines.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static BOARDS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BOARDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A board with popvmm and the aarch64 `images` in /payload, the host ports edge-sim picks
/// forwarded to `forwards` (guest ports).
pub fn board_with(images: &[&str], forwards: Vec<u16>) -> EdgeSim {
    static BUILT: std::sync::OnceLock<(PathBuf, HashMap<String, PathBuf>)> =
        std::sync::OnceLock::new();
    let (popvmm, built) = BUILT.get_or_init(|| (popvmm_aarch64(), self::images("aarch64")));
    let mut payload = vec![(popvmm.clone(), "popvmm".to_string())];
    for name in images {
        payload.push((built[*name].clone(), name.to_string()));
    }
    EdgeSim::start(&Options {
        payload,
        forwards,
        ..Options::default()
    })
    .expect("start the simulated aarch64 board")
}

/// Where a board cluster keeps its files (cluster file, secret, logs, control sockets).
const DIR: &str = "/tmp/c";

/// Nodes 0..n of one cluster on one board, on Unix sockets: node 0 is the launches' (the
/// VMs' home), the others are `popvmm node`s started with [`BoardCluster::start_node`].
pub struct BoardCluster {
    pub board: EdgeSim,
}

impl BoardCluster {
    /// A board with popvmm and the aarch64 `images` in /payload, and the cluster file of
    /// nodes 0..n.
    pub fn new(n: u32, images: &[&str]) -> BoardCluster {
        let mut file = String::new();
        for id in 0..n {
            file += &format!(
                "[[node]]\nid = {id}\naddress = \"unix:{DIR}/n{id}.sock\"\nisa = \"aarch64\"\n"
            );
        }
        BoardCluster::on(board_with(images, Vec::new()), &file)
    }

    /// The cluster whose nodes `file` lists (its `[[node]]` entries; the secret is the
    /// tests' [`SECRET`]), on `board`.
    pub fn on(board: EdgeSim, nodes: &str) -> BoardCluster {
        let file = format!("{HEADER}{nodes}");
        let setup = Run::of(
            board
                .sh(&format!(
                    "mkdir -p {DIR}/run && printf '%s\\n' {} > {DIR}/secret \
                     && printf %s {} > {DIR}/cluster.toml",
                    quote(SECRET),
                    quote(&file)
                ))
                .expect("run on the board"),
        );
        assert_eq!(setup.status, 0, "{setup:?}");
        BoardCluster { board }
    }

    /// Runs `script` in the cluster's directory with its control sockets' directory set,
    /// at most `timeout`.
    pub fn sh_for(&self, script: &str, timeout: Duration) -> Run {
        let script = format!("cd {DIR} || exit 98\nexport XDG_RUNTIME_DIR={DIR}/run\n{script}");
        let cmd = GuestCommand::new(["sh", "-c", &script]).timeout(timeout);
        Run::of(self.board.run_with(&cmd).expect("run on the board"))
    }

    /// [`BoardCluster::sh_for`] with a two-minute bound.
    pub fn sh(&self, script: &str) -> Run {
        self.sh_for(script, Duration::from_secs(120))
    }

    /// Starts `popvmm node` `id` in the background (dying when message `die_on` arrives)
    /// and waits until it answers on its control socket.
    pub fn start_node(&self, id: u32, die_on: Option<&str>) {
        let env = die_on.map_or(String::new(), |m| format!("POPVMM_TEST_DIE_ON={m} "));
        let run = self.sh(&format!(
            "{env}setsid popvmm node --cluster cluster.toml --id {id} \
             > node{id}.out 2> node{id}.log < /dev/null &
             for i in $(seq 300); do popvmm peers --id {id} > /dev/null 2>&1 && exit 0; \
             sleep 0.1; done; cat node{id}.log; exit 1"
        ));
        assert_eq!(run.status, 0, "node {id} did not start: {run:?}");
    }

    /// The `popvmm launch --cluster` command line of a VM of `name` (an image in /payload)
    /// launched as node `id`.
    fn launch_line(id: u32, options: &[&str], name: &str, args: &[&str]) -> String {
        let mut line = format!("RUST_LOG=warn popvmm launch --cluster cluster.toml --id {id}");
        for o in options {
            line += &format!(" {}", quote(o));
        }
        line += &format!(" /payload/{name} --");
        for a in args {
            line += &format!(" {}", quote(a));
        }
        line
    }

    /// Launches a VM and waits for it to end.
    pub fn launch(&self, options: &[&str], name: &str, args: &[&str]) -> Run {
        self.sh(&Self::launch_line(0, options, name, args))
    }

    /// Launches a VM in the background (its output into `vm.out`, `vm.err`, its status into
    /// `vm.status`) and waits until it runs (`ps` lists it, or it printed).
    pub fn launch_bg(&self, options: &[&str], name: &str, args: &[&str]) {
        self.launch_bg_as(0, options, name, args);
    }

    /// [`BoardCluster::launch_bg`] as node `id`.
    pub fn launch_bg_as(&self, id: u32, options: &[&str], name: &str, args: &[&str]) {
        let line = Self::launch_line(id, options, name, args);
        let run = self.sh(&format!(
            "rm -f vm.out vm.err vm.status vm.pid; \
             (setsid sh -c {} < /dev/null > /dev/null 2>&1 &); \
             for i in $(seq 600); do [ -s vm.out ] && exit 0; [ -f vm.status ] && break; \
             popvmm ps --id 0 --json 2>/dev/null | grep -q '\"name\"' && exit 0; \
             sleep 0.1; done; cat vm.err; exit 1",
            quote(&format!(
                "{line} > vm.out 2> vm.err & echo $! > vm.pid; wait $!; echo $? > vm.status"
            ))
        ));
        assert_eq!(run.status, 0, "the VM printed nothing: {run:?}");
    }

    /// Kills the launch of [`BoardCluster::launch_bg`] (its VM goes with it) and waits for
    /// it to be gone.
    pub fn kill_vm(&self) {
        let run = self.sh(
            "kill -9 $(cat vm.pid); for i in $(seq 300); do [ -f vm.status ] && exit 0; \
             sleep 0.1; done; exit 1",
        );
        assert_eq!(run.status, 0, "the launch did not end: {run:?}");
    }

    /// Waits (at most two minutes) for the VM of [`BoardCluster::launch_bg`] to end: its
    /// stdout, stderr and exit status.
    pub fn wait_vm(&self) -> Run {
        let run = self.sh(
            "for i in $(seq 1200); do [ -f vm.status ] && break; sleep 0.1; done; \
             [ -f vm.status ] || exit 99; cat vm.out",
        );
        assert_ne!(run.status, 99, "the VM did not end");
        let err = self.sh("cat vm.err").stdout;
        let status = self.sh("cat vm.status").stdout.trim().parse().unwrap();
        Run {
            stdout: run.stdout,
            stderr: err,
            status,
        }
    }

    /// `popvmm migrate VM --to N EXTRA`, asked of node 0.
    pub fn migrate(&self, vm: &str, to: u32, extra: &[&str]) -> Run {
        self.migrate_asking(0, vm, to, extra)
    }

    /// `popvmm migrate VM --to N EXTRA`, asked of node `asked`.
    pub fn migrate_asking(&self, asked: u32, vm: &str, to: u32, extra: &[&str]) -> Run {
        self.sh(&format!(
            "popvmm migrate --id {asked} {vm} --to {to} {}",
            extra.join(" ")
        ))
    }

    /// The VMs `popvmm ps --json` lists (asked of node 0).
    pub fn vms(&self) -> Vec<Value> {
        self.vms_asking(0)
    }

    /// The VMs `popvmm ps --json` lists, asked of node `asked`.
    pub fn vms_asking(&self, asked: u32) -> Vec<Value> {
        let run = self.sh(&format!("popvmm ps --id {asked} --json"));
        serde_json::from_str::<Value>(&run.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_else(|| panic!("ps: {run:?}"))
    }

    /// Waits (at most a minute) until `ps --threads` shows thread `tid` on `node` in `state`
    /// (any state if `None`).
    pub fn wait_thread(&self, tid: u64, node: u64, state: Option<&str>) {
        let t0 = std::time::Instant::now();
        loop {
            let run = self.sh("popvmm ps --threads --id 0 --json");
            let list = serde_json::from_str::<Value>(&run.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            if list.iter().any(|t| {
                t["tid"] == tid && t["node"] == node && state.is_none_or(|s| t["state"] == s)
            }) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "thread {tid} never showed on node {node}: {list:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A node's log (its stderr), for failure messages.
    pub fn log(&self, id: u32) -> String {
        self.sh(&format!("cat node{id}.log")).stdout
    }
}

/// Runs `popvmm launch OPTIONS /payload/NAME -- ARGS` on `board` (no cluster).
pub fn on_board(board: &EdgeSim, name: &str, options: &[&str], args: &[&str]) -> Run {
    let image = format!("/payload/{name}");
    let mut argv = vec!["/payload/popvmm", "launch"];
    argv.extend_from_slice(options);
    argv.push(&image);
    argv.push("--");
    argv.extend_from_slice(args);
    Run::of(board.run(&argv).expect("run on the board"))
}

/// Runs `popvmm launch OPTIONS IMAGE -- ARGS` on this x86-64 host.
pub fn on_x86(image: &Path, options: &[&str], args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_popvmm"))
        .arg("launch")
        .args(options)
        .arg(image)
        .arg("--")
        .args(args)
        .output()
        .unwrap();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        status: out.status.code().unwrap_or(-1),
    }
}
