//! Whole-VM live migration (pre-copy and post-copy) between two nodes on this machine over loopback TCP:
//! downtime and total time for idle and write-busy guests of 64 MiB to 1 GiB, beside the time
//! raw TCP takes to copy the same bytes in the same run. Prints a Markdown table.
//!
//! Idle: `migrateme` holding three quarters of its memory filled, sleeping in its loop. Busy:
//! the same without the filled memory, with a thread rewriting half of the guest's memory
//! without pause. Eight migrations per case (there and back, four times); medians.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;
use common::{Proc, repo};
use shared::{free_port, median, raw_tcp};

/// One control request to node `id`; returns the final answer (progress lines skipped).
fn control(run: &Path, id: u32, req: &Value) -> Value {
    let path = run.join(format!("popvmm/node{id}.sock"));
    let mut s = UnixStream::connect(path).expect("control socket");
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).expect("JSON answer");
        if v.get("progress").is_none() {
            return v;
        }
    }
}

fn main() {
    let options = pop_toolchain::BuildOptions {
        release: true,
        manifest_path: Some(repo().join("images/Cargo.toml")),
        ..Default::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build --release");
    let migrateme = images
        .iter()
        .find(|p| p.file_name().unwrap() == "migrateme")
        .unwrap()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::write(
        dir.path().join("secret"),
        "the migration benchmark's secret\n",
    )
    .unwrap();
    let mut text = String::from("secret_file = \"secret\"\n");
    // `POPVMM_BENCH_FRAME_MAC=0`: without per-frame tags (a trusted link).
    let mac = std::env::var("POPVMM_BENCH_FRAME_MAC").map_or(true, |v| v != "0");
    text += &format!("frame_mac = {mac}\n");
    println!("frame tags: {}", if mac { "on" } else { "off" });
    for id in 0..2 {
        text += &format!(
            "[[node]]\nid = {id}\naddress = \"{}\"\nisa = \"x86_64\"\n",
            free_port()
        );
    }
    // Each node gets one of the machine's cores, as if on a host of its own (`--cpus`), and
    // so do the two ends of the raw copy. Unpinned (`POPVMM_BENCH_PIN=0`), the scheduler
    // often puts both ends of a transfer on one core: the same migration, and the same raw
    // copy, then take anything from 1x to 1.7x as long.
    let pin = std::env::var("POPVMM_BENCH_PIN").map_or(true, |v| v != "0")
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    println!(
        "nodes: {}",
        if pin {
            "node 0 on CPU 0, node 1 on CPU 1 (raw copy: writer on CPU 0, reader on CPU 1)"
        } else {
            "not pinned"
        }
    );
    let cpus = |id: u32| -> Vec<String> {
        if pin {
            vec!["--cpus".into(), id.to_string()]
        } else {
            vec![]
        }
    };
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, text).unwrap();
    let popvmm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_popvmm"));
        c.env("XDG_RUNTIME_DIR", &run)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let _node1 = Proc(
        popvmm()
            .args(["node", "--cluster", cluster.to_str().unwrap(), "--id", "1"])
            .args(cpus(1))
            .spawn()
            .unwrap(),
    );
    println!(
        "| guest | memory | mode | downtime (median) | total time (median) | MB sent | raw TCP, same bytes | total / raw |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // `POPVMM_BENCH_SIZES=256,1024`: only these guest sizes (MiB).
    let sizes: Vec<u64> = std::env::var("POPVMM_BENCH_SIZES")
        .map(|v| v.split(',').map(|s| s.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![64, 256, 1024]);
    for mib in sizes {
        for busy in [false, true] {
            // `POPVMM_BENCH_GUESTS=idle` (or `busy`): only those guests.
            if std::env::var("POPVMM_BENCH_GUESTS")
                .is_ok_and(|g| g != if busy { "busy" } else { "idle" })
            {
                continue;
            }
            // Idle: holds three quarters of its memory filled, then sleeps. Busy: a thread
            // rewrites half of it without pause.
            let (write_mib, fill_mib) = if busy { (mib / 2, 0) } else { (0, mib * 3 / 4) };
            let _vm = Proc(
                popvmm()
                    .args([
                        "launch",
                        "--cluster",
                        cluster.to_str().unwrap(),
                        "--id",
                        "0",
                    ])
                    .args(cpus(0))
                    .arg("--memory")
                    .arg(format!("{mib}M"))
                    .arg(&migrateme)
                    .args(["--", "100000", "100", &write_mib.to_string(), "0"])
                    .arg(fill_mib.to_string())
                    .spawn()
                    .unwrap(),
            );
            // Let it start (and the writer touch its buffer once).
            let t0 = Instant::now();
            while !run.join("popvmm/node0.sock").exists() {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "launch did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(300 + 4 * (write_mib + fill_mib)));
            for mode in ["precopy", "postcopy"] {
                let (mut down, mut total, mut bytes, mut raw) = (vec![], vec![], vec![], vec![]);
                let mut at = 0;
                // `POPVMM_BENCH_MIGRATIONS=N`: migrations per case (default 8: the first ones
                // into a node find fresh memory, which this machine's host takes back when it
                // is freed, and run 2-5x slower; the median is of all of them).
                let count: usize = std::env::var("POPVMM_BENCH_MIGRATIONS")
                    .map(|v| v.parse().unwrap())
                    .unwrap_or(8);
                for _ in 0..count {
                    let to = 1 - at;
                    let req = json!({"cmd": "migrate", "vm": "migrateme", "to": to,
                                 "mode": mode, "downtime_ms": 5});
                    let v = control(&run, at, &req);
                    assert_eq!(v["ok"], true, "{v}");
                    let s = &v["summary"];
                    down.push(s["downtime_ms"].as_f64().unwrap());
                    total.push(s["total_ms"].as_f64().unwrap());
                    let b = s["bytes"].as_u64().unwrap();
                    if std::env::var_os("POPVMM_BENCH_VERBOSE").is_some() && !s["phases"].is_null()
                    {
                        eprintln!(
                            "  phases (ms): {}; memory reused: {}; pages sent again: {}",
                            s["phases"], s["reused_memory"], s["resent_pages"]
                        );
                    }
                    bytes.push(b as f64);
                    // The best of three raw copies (the machine is shared and noisy).
                    let best = (0..3).map(|_| raw_tcp(b, pin)).fold(f64::MAX, f64::min);
                    raw.push(best * 1e3);
                    at = to;
                }
                // `POPVMM_BENCH_VERBOSE=1`: every migration's figures, not only the medians.
                if std::env::var_os("POPVMM_BENCH_VERBOSE").is_some() {
                    eprintln!(
                        "{mib} MiB {} {mode}: total {total:.1?} ms, downtime {down:.2?} ms, raw {raw:.1?} ms",
                        if busy { "busy" } else { "idle" }
                    );
                }
                let (down, total, bytes, raw) =
                    (median(down), median(total), median(bytes), median(raw));
                println!(
                    "| {} | {mib} MiB | {mode} | {down:.2} ms | {total:.1} ms | {:.1} | {raw:.1} ms | {:.2}x |",
                    if busy {
                        format!("busy (rewrites {write_mib} MiB)")
                    } else {
                        format!("idle (holds {fill_mib} MiB)")
                    },
                    bytes / 1e6,
                    total / raw
                );
            }
            let _ = std::fs::remove_file(run.join("popvmm/node0.sock"));
        }
    }
}
