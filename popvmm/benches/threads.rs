//! Threads of one VM on several nodes, on this machine over loopback TCP: what moving a
//! thread costs, what sharing a page between nodes does, how fast a thread reads memory
//! written on another node, and the speed-up of a CPU-bound program whose threads are spread
//! over two nodes of one core each, each beside a baseline measured in the same run. Prints
//! Markdown tables.
//!
//! Nodes 1 and 2 are `popvmm node` processes, node 0 the launch. With two cores or more
//! (unless `POPVMM_BENCH_PIN=0`) node 0 runs on CPU 0 and nodes 1 and 2 on CPU 1, as hosts
//! of their own would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;
use common::{Proc, repo};
use shared::{bulk_stream, free_port, median, number_after, raw_tcp, warm_up};

struct Bench {
    cluster: PathBuf,
    run: PathBuf,
    cpus: Option<[String; 2]>,
}

impl Bench {
    /// Starts `popvmm node` `id` of this bench's cluster (on CPU `cpu` of the two if pinned)
    /// and waits for its control socket.
    fn node(&self, id: u32, cpu: usize) -> Proc {
        let mut c = self.popvmm();
        c.args([
            "node",
            "--cluster",
            self.cluster.to_str().unwrap(),
            "--id",
            &id.to_string(),
        ]);
        if let Some(cpus) = &self.cpus {
            c.args(["--cpus", &cpus[cpu]]);
        }
        let p = Proc(
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        while !self
            .popvmm()
            .args(["peers", "--id", &id.to_string()])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "node {id} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn popvmm(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_popvmm"));
        c.env("XDG_RUNTIME_DIR", &self.run);
        c
    }

    /// Runs `image -- args` (in the cluster as node 0 if `cluster`, spread with `--spread`
    /// if `spread`); returns its stdout and the wall time.
    fn launch(&self, image: &Path, args: &[&str], cluster: bool, spread: bool) -> (String, f64) {
        let mut c = self.popvmm();
        c.arg("launch").args(["--memory", "512M"]);
        if cluster {
            c.args(["--cluster", self.cluster.to_str().unwrap(), "--id", "0"]);
        }
        if spread {
            c.arg("--spread");
        }
        if let Some(cpus) = &self.cpus {
            c.args(["--cpus", &cpus[0]]);
        }
        let t = Instant::now();
        let out = c.arg(image).arg("--").args(args).output().unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        (String::from_utf8(out.stdout).unwrap(), secs)
    }
}

fn main() {
    let options = pop_toolchain::BuildOptions {
        release: true,
        manifest_path: Some(repo().join("images/Cargo.toml")),
        ..Default::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build --release");
    let image = |name: &str| {
        images
            .iter()
            .find(|p| p.file_name().unwrap() == name)
            .unwrap()
            .clone()
    };
    let (spread, primesum) = (image("spread"), image("primesum"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "the thread benchmark's secret\n").unwrap();
    let mut text = String::from("secret_file = \"secret\"\n");
    for id in 0..3 {
        text += &format!(
            "[[node]]\nid = {id}\naddress = \"{}\"\nisa = \"x86_64\"\n",
            free_port()
        );
    }
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, text).unwrap();
    let pin = std::env::var("POPVMM_BENCH_PIN").map_or(true, |v| v != "0")
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let b = Bench {
        cluster,
        run: dir.path().join("run"),
        cpus: pin.then(|| ["0".to_string(), "1".to_string()]),
    };
    println!(
        "nodes: {}",
        if pin {
            "nodes 0 and 2 on CPU 0, node 1 on CPU 1"
        } else {
            "not pinned"
        }
    );
    // Node 2 is only the far end of the baseline's round trips: on the other CPU from node
    // 1, as node 0 is, so that they cross CPUs as a thread's moves do (waking a thread on
    // the other CPU costs tens of microseconds under this nested KVM).
    let _nodes: Vec<Proc> = [(1, 1), (2, 0)].map(|(id, cpu)| b.node(id, cpu)).into();

    // Moving a thread there and back, beside a round trip of as many bytes on the mesh.
    let (out, _) = b.launch(&spread, &["timing", "2000"], true, false);
    let (p50, p99) = (number_after(&out, "p50"), number_after(&out, "p99"));
    let ping = b
        .popvmm()
        .args([
            "ping", "--id", "1", "--to", "2", "--count", "2000", "--size", "2048",
        ])
        .output()
        .unwrap();
    let ping = String::from_utf8_lossy(&ping.stdout).into_owned();
    let rtt = number_after(&ping, "median");
    println!(
        "\n| thread move there and back | p50 | p99 | baseline: net-msg round trip of 2 KiB (about a thread's state, sent sparse) across the CPUs, median |"
    );
    println!("|---|---|---|---|");
    println!(
        "| 2000 moves, node 0 → 1 → 0 | {p50:.0} µs | {p99:.0} µs | {rtt:.0} µs (x2 = {:.0} µs) |",
        2.0 * rtt
    );

    // False sharing: two threads on two nodes incrementing two counters of one page, beside
    // the same two threads on one node.
    let rate = |out: &str| {
        let f: Vec<f64> = out
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (f[0] + f[1]) / (f[2] / 1000.0)
    };
    let (spread_out, _) = b.launch(&spread, &["falseshare", "2000"], true, false);
    let (alone_out, _) = b.launch(&spread, &["falseshare", "2000"], false, false);
    println!(
        "\n| false sharing (2 threads, 2 counters, 1 page, 2 s) | increments/s | each thread |"
    );
    println!("|---|---|---|");
    println!(
        "| threads on nodes 0 and 1 | {:.2e} | {} |",
        rate(&spread_out),
        spread_out.lines().next().unwrap_or("")
    );
    println!(
        "| baseline: both on node 0 | {:.2e} | {} |",
        rate(&alone_out),
        alone_out.lines().next().unwrap_or("")
    );

    // A thread on node 1 reading memory written on node 0, beside a net-msg bulk stream and
    // raw TCP copying as much into fresh memory across the same two CPUs. All three depend
    // on how dear this machine's first touches of memory are at the moment (see
    // BENCHMARKS.md), so they run in turns, each right after a warm-up (so that all of them
    // get memory the host backs), and each figure is given as the median and the best of
    // seven (the best: the run least held up by the machine).
    let mib = 256;
    let turns = 7;
    let (mut scans, mut writes, mut probes, mut streams, mut raws) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let warm = 1536;
    for _ in 0..turns {
        warm_up(warm);
        let (out, _) = b.launch(&spread, &["scan", &mib.to_string()], true, false);
        scans.push(number_after(&out, " in "));
        writes.push(number_after(&out, "written on node 0 in "));
        // A bulk stream into node 1's process, from node 2 (on node 0's CPU), as the scan's
        // pages come into it.
        warm_up(warm);
        let probe = b
            .popvmm()
            .args([
                "ping",
                "--id",
                "2",
                "--to",
                "1",
                "--stream",
                &mib.to_string(),
            ])
            .output()
            .unwrap();
        probes.push(number_after(
            &String::from_utf8_lossy(&probe.stdout),
            " in ",
        ));
        warm_up(warm);
        streams.push(bulk_stream(mib << 20, pin));
        warm_up(warm);
        raws.push(raw_tcp(mib << 20, pin));
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (secs, fastest) = (median(scans.clone()), best(&scans));
    let mb = (mib << 20) as f64 / 1e6;
    println!(
        "\n| reading {mib} MiB written on the other node, into fresh memory ({turns} runs in turns, each after touching and freeing {warm} MiB) | median | MB/s | the scan's share | best | the scan's share |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| a thread on node 1, pages fetched on demand | {secs:.3} s | {:.0} | | {fastest:.3} s | |",
        mb / secs
    );
    let wrote = median(writes.clone());
    println!(
        "| for scale: the guest writing them on node 0 (its first touch of fresh memory) | {wrote:.3} s | {:.0} | | {:.3} s | |",
        mb / wrote,
        best(&writes)
    );
    for (what, v) in [
        (
            "a bulk stream node 2 → node 1, into fresh memory in node 1's process (`popvmm ping --stream`)",
            &probes,
        ),
        (
            "a net-msg bulk stream, 2 MiB records, between two threads of the bench",
            &streams,
        ),
        ("raw loopback TCP, 256 KiB writes", &raws),
    ] {
        let (m, b) = (median(v.clone()), best(v));
        println!(
            "| baseline: {what} | {m:.3} s | {:.0} | {:.0}% | {b:.3} s | {:.0}% |",
            mb / m,
            100.0 * m / secs,
            100.0 * b / fastest
        );
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\nEach run, in turns: scans {} s (writes {} s); streams node 2 → 1 {} s; bulk streams {} s; raw TCP {} s.",
        list(&scans),
        list(&writes),
        list(&probes),
        list(&streams),
        list(&raws)
    );

    // primesum, 4 threads: all on one node of one core, or 2 and 2 on two nodes of one core
    // each (a cluster of those two only: node 0 on CPU 0, a node 1 of its own on CPU 1).
    let mut text = String::from("secret_file = \"secret\"\n");
    for id in 0..2 {
        text += &format!(
            "[[node]]\nid = {id}\naddress = \"{}\"\nisa = \"x86_64\"\n",
            free_port()
        );
    }
    let two = Bench {
        cluster: dir.path().join("two.toml"),
        run: dir.path().join("run2"),
        cpus: b.cpus.clone(),
    };
    std::fs::write(&two.cluster, text).unwrap();
    let _one = two.node(1, 1);
    let max = std::env::var("POPVMM_BENCH_PRIMES").unwrap_or_else(|_| "20000000".into());
    let runs = 3;
    let timed = |args: &[&str], cluster: bool, spread: bool| -> f64 {
        median(
            (0..runs)
                .map(|_| two.launch(&primesum, args, cluster, spread).1)
                .collect(),
        )
    };
    let a = timed(&[&max, "4"], false, false);
    let s = timed(&[&max, "4"], true, true);
    let k = timed(&[&max, "4", "snake"], true, false);
    println!("\n| primesum {max}, 4 threads (median of {runs}, whole launch) | time | speed-up |");
    println!("|---|---|---|");
    println!("| baseline: 4 threads on node 0 (one core) | {a:.2} s | 1.00x |");
    println!(
        "| threads 0, 2 on node 0, 1, 3 on node 1 (one core each): `launch --spread` | {s:.2} s | {:.2}x |",
        a / s
    );
    println!(
        "| threads 0, 3 on node 0, 1, 2 on node 1 (one core each): `primesum MAX 4 snake` | {k:.2} s | {:.2}x |",
        a / k
    );
}
