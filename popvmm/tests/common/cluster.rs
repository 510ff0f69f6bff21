//! A test cluster of `popvmm` processes: a cluster file with nodes 0..3 on Unix sockets,
//! `popvmm node` processes, a launch as node 0, and the CLI's `ps` and `migrate`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Proc, repo};

pub const SOON: Duration = Duration::from_secs(60);

/// The `die_on` of [`Cluster::start_limited`] that starts a node as one whose kernel had no
/// userfaultfd write-protect (it does not die).
const NO_WRITE_PROTECT: &str = "no write-protect";

/// The unikernel image of app `name` (built once with `cargo pop build`).
pub fn image(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let options = pop_toolchain::BuildOptions {
            manifest_path: Some(repo().join("images/Cargo.toml")),
            ..Default::default()
        };
        pop_toolchain::build(&options).expect("cargo pop build of images/")
    });
    built
        .iter()
        .find(|p| p.file_name().unwrap() == name)
        .unwrap_or_else(|| panic!("no image {name}"))
        .clone()
}

/// A cluster file with nodes 0..3 on Unix sockets (node 3 declared aarch64, never started),
/// and a private directory for the control sockets.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub nodes: Vec<Option<Proc>>,
}

impl Cluster {
    pub fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "the migration tests' secret\n").unwrap();
        std::fs::write(
            dir.path().join("other"),
            "not the cluster's secret at all\n",
        )
        .unwrap();
        let mut text = String::from("secret_file = \"secret\"\nheartbeat_ms = 200\n");
        for (id, isa) in [(0, "x86_64"), (1, "x86_64"), (2, "x86_64"), (3, "aarch64")] {
            let addr = dir.path().join(format!("n{id}.sock"));
            text += &format!(
                "[[node]]\nid = {id}\naddress = \"unix:{}\"\nisa = \"{isa}\"\n",
                addr.display()
            );
        }
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, text).unwrap();
        Cluster {
            dir,
            file,
            nodes: (0..4).map(|_| None).collect(),
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_popvmm"));
        c.env("XDG_RUNTIME_DIR", self.dir.path().join("run"));
        c
    }

    pub fn popvmm(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Starts `popvmm node` N (with the wrong secret if `wrong_secret`), waiting for its
    /// control socket.
    pub fn start(&mut self, id: usize, wrong_secret: bool) {
        self.start_with(id, wrong_secret, None);
    }

    /// [`Cluster::start`], the node dying when the message `die_on` arrives.
    pub fn start_with(&mut self, id: usize, wrong_secret: bool, die_on: Option<&str>) {
        self.start_limited(id, wrong_secret, die_on, None);
    }

    /// [`Cluster::start`] as a node whose kernel had no userfaultfd write-protect.
    pub fn start_without_write_protect(&mut self, id: usize) {
        self.start_limited(id, false, Some(NO_WRITE_PROTECT), None);
    }

    /// [`Cluster::start_with`], the node's address space limited to `limit` bytes.
    pub fn start_limited(
        &mut self,
        id: usize,
        wrong_secret: bool,
        die_on: Option<&str>,
        limit: Option<u64>,
    ) {
        let mut c = self.command();
        if let Some(bytes) = limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only `setrlimit`, which is async-signal-safe, runs in the child.
            unsafe {
                c.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        match die_on {
            Some(NO_WRITE_PROTECT) => {
                c.env("POPVMM_TEST_NO_WRITE_PROTECT", "1");
            }
            Some(m) => {
                c.env("POPVMM_TEST_DIE_ON", m);
            }
            None => {}
        }
        c.args(["node", "--cluster", self.file.to_str().unwrap(), "--id"])
            .arg(id.to_string());
        if wrong_secret {
            c.arg("--secret-file").arg(self.dir.path().join("other"));
        }
        // Its stderr (warnings, panics) goes to a file, shown when a migration fails.
        let log = std::fs::File::create(self.dir.path().join(format!("node{id}.log"))).unwrap();
        let child = c
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[id] = Some(Proc(child));
        let t0 = Instant::now();
        while !self
            .popvmm(&["peers", "--id", &id.to_string()])
            .status
            .success()
        {
            assert!(t0.elapsed() < SOON, "node {id} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `popvmm launch --cluster ... --id 0 IMAGE -- ARGS` with piped output.
    pub fn launch(&self, options: &[&str], name: &str, args: &[&str]) -> Proc {
        self.launch_env(&[], options, name, args)
    }

    /// [`Cluster::launch`] with `env` in the launch's environment.
    pub fn launch_env(
        &self,
        env: &[(&str, &str)],
        options: &[&str],
        name: &str,
        args: &[&str],
    ) -> Proc {
        let child = self
            .command()
            .envs(env.iter().copied())
            .args([
                "launch",
                "--cluster",
                self.file.to_str().unwrap(),
                "--id",
                "0",
            ])
            .args(options)
            .arg(image(name))
            .arg("--")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut launched = Proc(child);
        // Until ps lists the VM (or the launch is over already: a short program).
        let t0 = Instant::now();
        loop {
            if launched.0.try_wait().unwrap().is_some() {
                break;
            }
            let out = self.popvmm(&["ps", "--id", "0", "--json"]);
            let listed = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|vms| !vms.is_empty());
            if listed {
                break;
            }
            assert!(t0.elapsed() < SOON, "the VM did not appear in ps");
            std::thread::sleep(Duration::from_millis(20));
        }
        launched
    }

    /// `popvmm ps --json` asked of node 0.
    /// The VMs `popvmm ps` lists. The query asks every node; on a loaded machine one may not
    /// answer in time, so a failed query is retried for a few seconds before giving up.
    pub fn vms(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.popvmm(&["ps", "--id", "0", "--json"]);
            let listed = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned());
            match listed {
                Some(vms) if out.status.success() => return vms,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                _ => panic!("popvmm ps failed: {}", text(&out.stderr)),
            }
        }
    }

    /// `popvmm migrate`, asking node 0 (which relays it if the VM runs elsewhere).
    pub fn migrate(&self, vm: &str, to: u32, extra: &[&str]) -> Output {
        self.migrate_asking(0, vm, to, extra)
    }

    /// `popvmm migrate`, asking node `asked`.
    pub fn migrate_asking(&self, asked: u32, vm: &str, to: u32, extra: &[&str]) -> Output {
        let mut args = vec!["migrate", vm, "--to"];
        let to = to.to_string();
        let asked = asked.to_string();
        args.push(&to);
        args.extend_from_slice(&["--id", &asked]);
        args.extend_from_slice(extra);
        let out = self.popvmm(&args);
        if !out.status.success() {
            for id in 0..4 {
                if let Ok(log) =
                    std::fs::read_to_string(self.dir.path().join(format!("node{id}.log")))
                    && !log.is_empty()
                {
                    eprintln!("--- node {id}'s stderr:\n{log}");
                }
            }
        }
        out
    }
}

/// Waits (bounded) for the launch to end; returns its status, stdout and stderr.
pub fn finish(mut p: Proc) -> (i32, String, String) {
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the VM never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // (A caller that took a pipe to read it as the VM ran gets nothing of it here.)
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = p.0.stdout.take() {
        o.read_to_string(&mut out).unwrap();
    }
    if let Some(mut e) = p.0.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    (status.code().unwrap_or(-1), out, err)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
