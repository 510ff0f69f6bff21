//! `cargo bench -p popvmm --bench launch`: what a unikernel costs against a native Linux process,
//! both measured in the same run on the same machine, with the example apps built in release
//! mode (`cargo pop build --release` for popvmm, plain `cargo build --release` natively).
//!
//! Prints a Markdown table (median of several runs, and the best run) for BENCHMARKS.md:
//! hello end to end, launch to `main`, thread spawn + join, a futex ping-pong round trip
//! between two threads, and the speed-up of 4 threads over 1 on a CPU-bound prime count.

#[path = "../tests/common/mod.rs"]
mod common;
use common::repo;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Runs per figure (the median is reported).
const RUNS: usize = 15;

/// How to start one app: as a unikernel under popvmm, or as a native process.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Vm,
    Native,
}

struct Apps {
    images: PathBuf,
    native: PathBuf,
}

impl Apps {
    fn build() -> Apps {
        let manifest = repo().join("images/Cargo.toml");
        let options = pop_toolchain::BuildOptions {
            release: true,
            manifest_path: Some(manifest.clone()),
            ..Default::default()
        };
        let images = pop_toolchain::build(&options).expect("cargo pop build --release");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .status()
            .expect("cargo build");
        assert!(status.success());
        Apps {
            images: images[0].parent().unwrap().to_path_buf(),
            native: repo().join("images/target/release"),
        }
    }

    fn command(&self, mode: Mode, app: &str, args: &[&str]) -> Command {
        match mode {
            Mode::Vm => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_popvmm"));
                c.arg("launch")
                    .arg(self.images.join(app))
                    .arg("--")
                    .args(args);
                c
            }
            Mode::Native => {
                let mut c = Command::new(self.native.join(app));
                c.args(args);
                c
            }
        }
    }

    fn run(&self, mode: Mode, app: &str, args: &[&str]) -> Output {
        let out = self.command(mode, app, args).output().expect("run");
        assert!(
            out.status.success(),
            "{app} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// Median and minimum of `samples` (nanoseconds).
fn stats(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[0])
}

/// The value of `key=` in the output.
fn field(out: &Output, key: &str) -> f64 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn now_ns() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as f64
}

fn fmt(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

struct Row {
    what: &'static str,
    vm: (f64, f64),
    native: (f64, f64),
}

fn measure(apps: &Apps, mode: Mode, sample: impl Fn(&Apps, Mode) -> f64) -> (f64, f64) {
    sample(apps, mode); // warm-up: page cache, lazy host state
    stats((0..RUNS).map(|_| sample(apps, mode)).collect())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; nothing to list.
    }
    let apps = Apps::build();
    let mut rows = Vec::new();

    let hello = |apps: &Apps, mode| {
        let start = Instant::now();
        apps.run(mode, "hello", &[]);
        start.elapsed().as_nanos() as f64
    };
    rows.push(Row {
        what: "hello, end to end (spawn to exit)",
        vm: measure(&apps, Mode::Vm, hello),
        native: measure(&apps, Mode::Native, hello),
    });

    let to_main = |apps: &Apps, mode| {
        let start = now_ns();
        let out = apps.run(mode, "checks", &["boottime"]);
        field(&out, "main_realtime_ns") - start
    };
    rows.push(Row {
        what: "launch to `main`",
        vm: measure(&apps, Mode::Vm, to_main),
        native: measure(&apps, Mode::Native, to_main),
    });

    let spawn_join = |apps: &Apps, mode| {
        field(
            &apps.run(mode, "checks", &["threads", "200"]),
            "spawn_join_ns",
        )
    };
    rows.push(Row {
        what: "thread spawn + join",
        vm: measure(&apps, Mode::Vm, spawn_join),
        native: measure(&apps, Mode::Native, spawn_join),
    });

    let pingpong = |apps: &Apps, mode| {
        field(
            &apps.run(mode, "checks", &["pingpong", "2000"]),
            "pingpong_ns",
        )
    };
    rows.push(Row {
        what: "futex ping-pong round trip (Mutex+Condvar)",
        vm: measure(&apps, Mode::Vm, pingpong),
        native: measure(&apps, Mode::Native, pingpong),
    });

    println!(
        "| what | popvmm (median / best) | native Linux process (median / best) | ratio (medians) |"
    );
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} / {} | {} / {} | {:.2}x |",
            r.what,
            fmt(r.vm.0),
            fmt(r.vm.1),
            fmt(r.native.0),
            fmt(r.native.1),
            r.vm.0 / r.native.0
        );
    }

    // CPU-bound scaling: the same prime count with 1 and with 4 threads.
    const MAX: &str = "3000000";
    let primesum = |threads: &'static str| {
        move |apps: &Apps, mode| {
            let start = Instant::now();
            apps.run(mode, "primesum", &[MAX, threads]);
            start.elapsed().as_nanos() as f64
        }
    };
    println!();
    println!("| primesum MAX={MAX} | 1 thread | 4 threads | speed-up | host cores |");
    println!("|---|---|---|---|---|");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (name, mode) in [("popvmm", Mode::Vm), ("native", Mode::Native)] {
        let one = measure(&apps, mode, primesum("1")).0;
        let four = measure(&apps, mode, primesum("4")).0;
        println!(
            "| {name} | {} | {} | {:.2}x | {cores} |",
            fmt(one),
            fmt(four),
            one / four
        );
    }
}
