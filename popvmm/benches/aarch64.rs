//! `cargo bench -p popvmm --bench aarch64`: popvmm on aarch64 KVM inside the simulated edge board
//! (`edge-sim`: qemu-system-aarch64 under TCG, so every figure is *emulated* and slow), beside
//! the same figures for popvmm on this x86-64 host, measured in the same run.
//!
//! Prints a Markdown table for BENCHMARKS.md: hello end to end, the VMM's setup before the
//! guest's first instruction (KVM setup and image load, from `popvmm launch --timings`), and
//! thread spawn + join (medians of several runs).
//!
//! With `-- --nodes`: what moving takes, three nodes on the board beside three on this host
//! (Unix sockets both): a thread there and back, whole-VM pre-copy and post-copy of a 64 MiB
//! `migrateme` (medians of four migrations each), a thread scanning 16 MiB written on the
//! other node, and the net-msg round trip between the nodes as the baseline.

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;
use common::repo;
use shared::{median, number_after};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use edge_sim::{EdgeSim, Options};
use pop_toolchain::{ArchSelection, BuildOptions};

/// Runs per figure.
const RUNS: usize = 7;

fn build_images(arch: &str) -> PathBuf {
    let options = BuildOptions {
        release: true,
        arch: arch.parse::<ArchSelection>().unwrap(),
        manifest_path: Some(repo().join("images/Cargo.toml")),
        ..Default::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build --release");
    images[0].parent().unwrap().to_path_buf()
}

fn popvmm_aarch64() -> PathBuf {
    let root = repo();
    let recipe = edge_sim::musl::Recipe::for_dir(&root, None, true).expect("aarch64 recipe");
    let status = recipe
        .cargo_build(&root.join("Cargo.toml"), &root.join("target"))
        .args(["--quiet", "-p", "popvmm", "--bin", "popvmm"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    root.join("target/aarch64-unknown-linux-musl/release/popvmm")
}

fn field(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// KVM setup plus image load, in ns, from the `popvmm: timings: kvm X ms, load Y ms, ...` line
/// that `popvmm launch --timings` prints on stderr.
fn setup_ns(stderr: &str) -> f64 {
    let ms = |key: &str| -> f64 {
        stderr
            .split(key)
            .nth(1)
            .and_then(|rest| rest.trim().split(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {stderr}"))
    };
    (ms("kvm") + ms("load")) * 1e6
}

fn fmt(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// The three figures for one architecture.
struct Figures {
    hello: f64,
    to_main: f64,
    spawn_join: f64,
}

fn x86(images: &Path) -> Figures {
    let launch = |app: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_popvmm"))
            .arg("launch")
            .arg(images.join(app))
            .arg("--")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    Figures {
        hello: median(
            (0..RUNS)
                .map(|_| {
                    let t = Instant::now();
                    launch("hello", &[]);
                    t.elapsed().as_nanos() as f64
                })
                .collect(),
        ),
        to_main: median(
            (0..RUNS)
                .map(|_| {
                    let out = Command::new(env!("CARGO_BIN_EXE_popvmm"))
                        .args(["launch", "--timings"])
                        .arg(images.join("hello"))
                        .output()
                        .unwrap();
                    setup_ns(&String::from_utf8_lossy(&out.stderr))
                })
                .collect(),
        ),
        spawn_join: median(
            (0..RUNS)
                .map(|_| field(&launch("checks", &["threads", "50"]), "spawn_join_ns"))
                .collect(),
        ),
    }
}

fn aarch64(board: &EdgeSim) -> Figures {
    // The board's shell has no nanosecond clock, so hello is timed from the host through the
    // board's command agent, minus the agent's own round trip (running `true`).
    let timed = |argv: &[&str]| {
        let t = Instant::now();
        let out = board.run(argv).expect("run on the board");
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        (
            t.elapsed().as_nanos() as f64,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let agent = median((0..RUNS).map(|_| timed(&["true"]).0).collect());
    let hello = median(
        (0..RUNS)
            .map(|_| timed(&["popvmm", "launch", "/payload/hello"]).0 - agent)
            .collect(),
    );
    // popvmm's own account of the phases up to the guest's first instruction.
    let to_main = median(
        (0..RUNS)
            .map(|_| {
                let out = board
                    .run(&["popvmm", "launch", "--timings", "/payload/hello"])
                    .unwrap();
                setup_ns(&String::from_utf8_lossy(&out.stderr))
            })
            .collect(),
    );
    let spawn_join = median(
        (0..RUNS)
            .map(|_| {
                let (_, out) =
                    timed(&["popvmm", "launch", "/payload/checks", "--", "threads", "50"]);
                field(&out, "spawn_join_ns")
            })
            .collect(),
    );
    Figures {
        hello,
        to_main,
        spawn_join,
    }
}

/// Migrations per mode (there and back, twice).
const MIGRATIONS: usize = 4;

/// What moving takes on one ISA: a thread there and back (p50, p99, in µs), whole-VM
/// pre-copy and post-copy (total and downtime, in ms, medians), a thread's scan of memory
/// written on the other node (s), and a net-msg round trip of 2 KiB between the nodes (µs).
struct Moves {
    thread: (f64, f64),
    precopy: (f64, f64),
    postcopy: (f64, f64),
    scan: f64,
    rtt: f64,
}

/// The migrate figures from `popvmm migrate`'s last line: total ms, downtime ms.
fn migrated(out: &str) -> (f64, f64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("migrated VM"))
        .unwrap_or_else(|| panic!("not migrated: {out}"));
    (number_after(line, "): "), number_after(line, "downtime "))
}

/// Medians of the (total, downtime) pairs.
fn medians(pairs: Vec<(f64, f64)>) -> (f64, f64) {
    let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
    (median(a), median(b))
}

const MIGRATEME: [&str; 5] = ["600", "50", "8", "0", "12"];

fn x86_moves() -> Moves {
    use common::cluster::{Cluster, finish};
    let mut c = Cluster::new();
    c.start(1, false);
    c.start(2, false);
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let (status, out, _) = finish(c.launch(&[], "spread", &["timing", "200"]));
    assert_eq!(status, 0);
    let thread = (number_after(&out, "p50"), number_after(&out, "p99"));
    let mut modes = Vec::new();
    for mode in ["precopy", "postcopy"] {
        let vm = c.launch(&["--memory", "64M"], "migrateme", &MIGRATEME);
        std::thread::sleep(std::time::Duration::from_millis(500));
        let pairs = (0..MIGRATIONS)
            .map(|i| {
                migrated(&text(&c.migrate(
                    "migrateme",
                    1 + (i % 2) as u32,
                    &["--mode", mode],
                )))
            })
            .collect();
        modes.push(medians(pairs));
        drop(vm);
    }
    let (status, out, _) = finish(c.launch(&[], "spread", &["scan", "16"]));
    assert_eq!(status, 0);
    let ping = c.popvmm(&[
        "ping", "--id", "1", "--to", "2", "--count", "200", "--size", "2048",
    ]);
    Moves {
        thread,
        precopy: modes[0],
        postcopy: modes[1],
        scan: number_after(&out, " in "),
        rtt: number_after(&text(&ping), "median"),
    }
}

fn arm_moves() -> Moves {
    use common::board::BoardCluster;
    let c = BoardCluster::new(3, &["spread", "migrateme"]);
    c.start_node(1, None);
    c.start_node(2, None);
    let out = c.launch(&[], "spread", &["timing", "200"]);
    assert_eq!(out.status, 0, "{out:?}");
    let thread = (
        number_after(&out.stdout, "p50"),
        number_after(&out.stdout, "p99"),
    );
    let mut modes = Vec::new();
    for mode in ["precopy", "postcopy"] {
        c.launch_bg(&["--memory", "64M"], "migrateme", &MIGRATEME);
        let pairs = (0..MIGRATIONS)
            .map(|i| {
                migrated(
                    &c.migrate("migrateme", 1 + (i % 2) as u32, &["--mode", mode])
                        .stdout,
                )
            })
            .collect();
        modes.push(medians(pairs));
        c.kill_vm();
    }
    let scan = c.launch(&[], "spread", &["scan", "16"]);
    assert_eq!(scan.status, 0, "{scan:?}");
    let ping = c.sh("popvmm ping --id 1 --to 2 --count 200 --size 2048");
    Moves {
        thread,
        precopy: modes[0],
        postcopy: modes[1],
        scan: number_after(&scan.stdout, " in "),
        rtt: number_after(&ping.stdout, "median"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::args().any(|a| a == "--nodes") {
        let (arm, x86) = (arm_moves(), x86_moves());
        println!(
            "| what (debug images; medians) | aarch64 nodes in the simulated board (emulated, TCG) | x86-64 nodes on this host | ratio |"
        );
        println!("|---|---|---|---|");
        let ms = |v: f64| v * 1e6;
        let us = |v: f64| v * 1e3;
        for (what, a, b) in [
            (
                "thread move there and back (200), p50",
                us(arm.thread.0),
                us(x86.thread.0),
            ),
            (
                "thread move there and back (200), p99",
                us(arm.thread.1),
                us(x86.thread.1),
            ),
            (
                "baseline: net-msg 2 KiB round trip between the nodes",
                us(arm.rtt),
                us(x86.rtt),
            ),
            (
                "whole VM, 64 MiB (12 filled, 8 rewritten), pre-copy: total",
                ms(arm.precopy.0),
                ms(x86.precopy.0),
            ),
            (
                "... pre-copy: downtime",
                ms(arm.precopy.1),
                ms(x86.precopy.1),
            ),
            (
                "... post-copy: total",
                ms(arm.postcopy.0),
                ms(x86.postcopy.0),
            ),
            (
                "... post-copy: downtime",
                ms(arm.postcopy.1),
                ms(x86.postcopy.1),
            ),
            (
                "a thread scanning 16 MiB written on the other node",
                arm.scan * 1e9,
                x86.scan * 1e9,
            ),
        ] {
            println!("| {what} | {} | {} | {:.0}x |", fmt(a), fmt(b), a / b);
        }
        return;
    }
    let x86_images = build_images("x86_64");
    let arm_images = build_images("aarch64");
    let mut payload = vec![(popvmm_aarch64(), "popvmm".to_string())];
    for app in ["hello", "checks"] {
        payload.push((arm_images.join(app), app.to_string()));
    }
    let board = EdgeSim::start(&Options {
        payload,
        ..Options::default()
    })
    .expect("start the board");
    let arm = aarch64(&board);
    let x86 = x86(&x86_images);
    println!(
        "| what (release images, median of {RUNS}) | aarch64 in the simulated board (emulated, TCG) | x86-64 on this host | ratio |"
    );
    println!("|---|---|---|---|");
    for (what, a, b) in [
        ("hello, end to end", arm.hello, x86.hello),
        (
            "KVM setup + image load (`--timings`)",
            arm.to_main,
            x86.to_main,
        ),
        ("thread spawn + join", arm.spawn_join, x86.spawn_join),
    ] {
        println!("| {what} | {} | {} | {:.0}x |", fmt(a), fmt(b), a / b);
    }
}
