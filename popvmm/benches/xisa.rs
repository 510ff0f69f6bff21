//! `cargo bench -p popvmm --bench xisa`: what making an app movable between ISAs costs, so
//! far: a migration point offered every round of `images/asyncdemo` against the same
//! program without points (one task, one worker, so nothing else varies), under popvmm and
//! as a native Linux process in the same run; and the growth of each image's loaded bytes
//! from aligning it with its aarch64 twin (`cargo pop build --release --arch all`).
//!
//! Prints Markdown tables for BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shared/mod.rs"]
mod shared;

use common::repo;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs per figure (alternating with and without points; the median is reported).
const RUNS: usize = 9;
/// Rounds of the demo's loop per run.
const ROUNDS: &str = "400000";

fn compute_ns(cmd: &mut Command) -> f64 {
    let out = cmd
        .env("POP_DEMO_TIME", "1")
        .output()
        .expect("run asyncdemo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shared::number_after(&String::from_utf8_lossy(&out.stderr), "compute_ns ")
}

fn loaded_bytes(path: &Path) -> u64 {
    pop_toolchain::align::loaded_bytes(&std::fs::read(path).unwrap())
}

/// The natural (unaligned) link of `image`, as the link wrapper recorded it.
fn natural_of(image: &Path, triple: &str) -> Option<PathBuf> {
    let name = pop_toolchain::align::link_name(image).ok()?;
    let natural = repo()
        .join("target/pop")
        .join(triple)
        .join("links")
        .join(name)
        .join("natural.elf");
    natural.is_file().then_some(natural)
}

fn main() {
    let manifest = repo().join("images/Cargo.toml");
    let options = pop_toolchain::BuildOptions {
        release: true,
        arch: pop_toolchain::ArchSelection::All,
        manifest_path: Some(manifest.clone()),
        ..Default::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build --release --arch all");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "asyncdemo",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo build");
    assert!(status.success());
    let image = images
        .iter()
        .find(|p| p.ends_with("x86_64-unknown-hermit/release/asyncdemo"))
        .expect("asyncdemo image");
    let native = repo().join("images/target/release/asyncdemo");

    let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..RUNS {
        for (i, points) in ["points", "nopoints"].into_iter().enumerate() {
            let vm = compute_ns(
                Command::new(env!("CARGO_BIN_EXE_popvmm"))
                    .args([
                        "launch",
                        "--env",
                        "POP_WORKERS=1",
                        "--env",
                        "POP_DEMO_TIME=1",
                    ])
                    .arg(image)
                    .args(["--", "1", ROUNDS, points]),
            );
            let nat = compute_ns(
                Command::new(&native)
                    .env("POP_WORKERS", "1")
                    .args(["1", ROUNDS, points]),
            );
            samples[i].push(vm);
            samples[2 + i].push(nat);
        }
    }
    let [vm_p, vm_n, nat_p, nat_n] = samples.map(shared::median);
    let rounds: f64 = ROUNDS.parse().unwrap();
    println!(
        "Migration points (asyncdemo, 1 task, 1 worker, {ROUNDS} rounds; median of {RUNS}):\n"
    );
    println!("| where | with a point each round | without | per round | overhead |");
    println!("|---|---|---|---|---|");
    for (what, p, n) in [
        ("popvmm", vm_p, vm_n),
        ("native Linux process", nat_p, nat_n),
    ] {
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:.1} ns / {:.1} ns | {:+.2}% |",
            p / 1e6,
            n / 1e6,
            p / rounds,
            n / rounds,
            (p / n - 1.0) * 100.0
        );
    }

    println!(
        "\nLoaded bytes (PT_LOAD file sizes) before and after aligning each pair (release):\n"
    );
    println!("| image | x86-64 natural → aligned | aarch64 natural → aligned |");
    println!("|---|---|---|");
    let mut names: Vec<&PathBuf> = images
        .iter()
        .filter(|p| p.to_string_lossy().contains("x86_64-unknown-hermit"))
        .collect();
    names.sort();
    for x86 in names {
        let name = x86.file_name().unwrap().to_string_lossy().into_owned();
        let arm = images
            .iter()
            .find(|p| p.to_string_lossy().contains("aarch64-unknown-hermit") && p.ends_with(&name));
        let cell = |image: &Path, triple: &str| match natural_of(image, triple) {
            Some(n) => {
                let (before, after) = (loaded_bytes(&n), loaded_bytes(image));
                format!(
                    "{} → {} KiB ({:+.0}%)",
                    before / 1024,
                    after / 1024,
                    (after as f64 / before as f64 - 1.0) * 100.0
                )
            }
            None => "?".into(),
        };
        let arm_cell = arm.map_or("?".into(), |a| cell(a, "aarch64-unknown-hermit"));
        println!(
            "| {name} | {} | {arm_cell} |",
            cell(x86, "x86_64-unknown-hermit")
        );
    }
}
