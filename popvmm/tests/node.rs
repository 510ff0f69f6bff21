//! `popvmm node`, `peers`, `stat` and `ping` end to end: clusters of 3 node processes over
//! loopback TCP and Unix sockets, a wrong secret, a stopped node (missed heartbeats), a killed
//! and restarted node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SOON: Duration = Duration::from_secs(30);

/// A node process, killed when dropped.
struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn popvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popvmm"))
        .args(args)
        .output()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

struct Cluster {
    dir: tempfile::TempDir,
    file: PathBuf,
    nodes: Vec<Option<NodeProc>>,
}

impl Cluster {
    fn new(n: usize, tcp: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("secret"),
            "a test cluster's shared secret\n",
        )
        .unwrap();
        let mut text = String::from("secret_file = \"secret\"\nheartbeat_ms = 200\n");
        for id in 0..n {
            let addr = if tcp {
                // The kernel picks a free port; the node binds it again a moment later.
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().to_string()
            } else {
                format!("unix:{}", dir.path().join(format!("n{id}.sock")).display())
            };
            text += &format!("[[node]]\nid = {id}\naddress = \"{addr}\"\nisa = \"x86_64\"\n");
        }
        let file = dir.path().join("cluster.toml");
        std::fs::write(&file, text).unwrap();
        Cluster {
            dir,
            file,
            nodes: (0..n).map(|_| None).collect(),
        }
    }

    fn control(&self, id: usize) -> String {
        self.dir
            .path()
            .join(format!("c{id}.sock"))
            .display()
            .to_string()
    }

    fn start_with(&mut self, id: usize, extra: &[&str]) {
        let child = Command::new(env!("CARGO_BIN_EXE_popvmm"))
            .args([
                "node",
                "--cluster",
                self.file.to_str().unwrap(),
                "--id",
                &id.to_string(),
            ])
            .args(["--control", &self.control(id)])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.nodes[id] = Some(NodeProc(child));
        let path = self.control(id);
        assert!(
            eventually(|| Path::new(&path).exists()),
            "node {id} has no control socket"
        );
    }

    fn start(&mut self, id: usize) {
        self.start_with(id, &[])
    }

    fn child(&self, id: usize) -> &Child {
        &self.nodes[id].as_ref().unwrap().0
    }

    fn json(&self, id: usize, cmd: &[&str]) -> Value {
        let c = self.control(id);
        let mut args = cmd.to_vec();
        args.extend(["--control", &c, "--json"]);
        let out = popvmm(&args);
        assert!(
            out.status.success(),
            "popvmm {cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn states(&self, id: usize) -> Vec<String> {
        let v = self.json(id, &["peers"]);
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["state"].as_str().unwrap().to_string())
            .collect()
    }

    fn all_up(&self, id: usize) -> bool {
        self.states(id).iter().all(|s| s == "up" || s == "local")
    }
}

fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SOON;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn three_nodes_list_peers_ping_and_count() {
    for tcp in [true, false] {
        let mut c = Cluster::new(3, tcp);
        for id in 0..3 {
            c.start(id);
        }
        for id in 0..3 {
            assert!(eventually(|| c.all_up(id)), "node {id}: {:?}", c.states(id));
        }
        // The table: a header and one line per node, `*` on the asking node only.
        let out = popvmm(&["peers", "--control", &c.control(1)]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for (i, line) in lines[1..].iter().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if i == 1 {
                assert_eq!(
                    &fields[..5],
                    [
                        "*",
                        "1",
                        c.json(1, &["peers"])[1]["address"].as_str().unwrap(),
                        "x86_64",
                        "local"
                    ],
                    "{text}"
                );
            } else {
                assert_eq!(fields[0], i.to_string(), "{text}");
                assert_eq!(fields[3], "up", "{text}");
            }
        }
        // Pings and the counters they leave (type 1), then a reset.
        let out = popvmm(&[
            "ping",
            "--control",
            &c.control(1),
            "--to",
            "2",
            "--count",
            "7",
            "--size",
            "100",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("7 round trips of 100 bytes"));
        for id in [1, 2] {
            let s = c.json(id, &["stat"]);
            let t = &s["stats"]["by_type"]["1"];
            assert_eq!(
                (t["msgs_sent"].as_u64(), t["msgs_received"].as_u64()),
                (Some(7), Some(7)),
                "node {id}: {s}"
            );
            assert_eq!(
                t["bytes_sent"].as_u64(),
                Some(7 * (24 + 100 + 16)),
                "node {id}: {s}"
            );
        }
        let out = popvmm(&["stat", "--control", &c.control(2), "--reset"]);
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains("sent 7 messages") && text.contains("counters reset"),
            "{text}"
        );
        assert_eq!(
            c.json(2, &["stat"])["stats"]["total"]["msgs_sent"].as_u64(),
            Some(0)
        );
        // A timed bulk stream, received into fresh memory on node 2; an odd size is refused.
        let stream = |mib: &str| {
            popvmm(&[
                "ping",
                "--control",
                &c.control(1),
                "--to",
                "2",
                "--stream",
                mib,
            ])
        };
        let out = stream("16");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("node 1 -> node 2: streamed 16 MiB in "),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = stream("3");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("give an even number"),
            "{err}"
        );
    }
}

#[test]
fn stopped_node_is_detected_and_killed_node_reconnects() {
    for tcp in [true, false] {
        let mut c = Cluster::new(3, tcp);
        for id in 0..3 {
            c.start(id);
        }
        assert!(eventually(|| (0..3).all(|id| c.all_up(id))));
        // A stopped process keeps its sockets open: only missed heartbeats reveal it.
        signal(c.child(2), "-STOP");
        let t0 = Instant::now();
        assert!(eventually(
            || c.states(0)[2] == "down" && c.states(1)[2] == "down"
        ));
        eprintln!(
            "stopped node detected after {:?} (heartbeat 200 ms, 3 misses)",
            t0.elapsed()
        );
        assert!(c.json(0, &["stat"])["stats"]["heartbeat_losses"].as_u64() >= Some(1));
        let out = popvmm(&["ping", "--control", &c.control(0), "--to", "2"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("node 2 is not connected"));
        // Killed, then restarted: the others take it back.
        signal(c.child(2), "-KILL");
        c.nodes[2] = None;
        c.start(2);
        assert!(eventually(|| (0..3).all(|id| c.all_up(id))));
        let peers = c.json(0, &["peers"]);
        assert!(peers[2]["connects"].as_u64().unwrap() >= 2, "{peers}");
        let out = popvmm(&["ping", "--control", &c.control(0), "--to", "2"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_node_with_the_wrong_secret_stays_out() {
    let mut c = Cluster::new(3, false);
    let wrong = c.dir.path().join("wrong");
    std::fs::write(&wrong, "not the cluster's secret, at all").unwrap();
    c.start(0);
    c.start(1);
    c.start_with(2, &["--secret-file", wrong.to_str().unwrap()]);
    assert!(eventually(|| c.all_up(0) || c.states(0)[1] == "up"));
    assert!(eventually(
        || c.json(0, &["stat"])["stats"]["handshakes_failed"].as_u64() >= Some(1)
    ));
    assert_eq!(c.states(0), ["local", "up", "down"]);
    assert_eq!(c.states(2), ["down", "down", "local"]);
}

#[test]
fn clients_explain_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = popvmm(&["peers", "--control", sock.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node answers on"));
    let out = popvmm(&[
        "node",
        "--cluster",
        dir.path().join("nope.toml").to_str().unwrap(),
        "--id",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}
