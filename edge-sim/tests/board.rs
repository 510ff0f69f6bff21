//! Boots the simulated aarch64 board and checks what the rest of the project relies on: exact
//! output and exit status of commands, a static aarch64 program using KVM inside, port
//! forwarding both ways, and cache reuse. One boot for all of it (boots cost seconds under TCG).
//!
//! The probe (tests/probe) is built here for aarch64-unknown-linux-musl with the project's
//! pinned nightly (see edge_sim::musl), into the workspace's target directory.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_sim::musl::{Recipe, TARGET};
use edge_sim::{EdgeSim, GuestCommand, Options};

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Builds the probe for aarch64 (incrementally: the first build compiles std, ~1-2 min). It
/// shares the workspace's target directory, so std for the board is compiled once for the
/// probe and popvmm alike.
fn build_probe() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe");
    let out = target_dir();
    let recipe = Recipe::for_dir(&dir, None, true).expect("aarch64 musl build recipe");
    let status = recipe
        .cargo_build(&dir.join("Cargo.toml"), &out)
        .arg("--quiet")
        .status()
        .expect("running cargo");
    assert!(status.success(), "building the aarch64 probe failed");
    out.join(TARGET).join("release/edge-sim-probe")
}

/// Connects to 127.0.0.1:port, retrying while nothing listens in the board yet (QEMU accepts
/// the connection and closes it at once then), and returns the first line received.
fn connect_and_greet(port: u16, send: &[u8]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no listener behind port {port}");
        if let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut line = String::new();
            if BufReader::new(&stream).read_line(&mut line).is_ok() && !line.is_empty() {
                (&stream).write_all(send).unwrap();
                return line;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn board_runs_commands_with_kvm_and_forwards_ports() {
    let probe = build_probe();
    let board_owned = EdgeSim::start(&Options {
        payload: vec![(probe, "probe".into())],
        forwards: vec![9000],
        ..Options::default()
    })
    .expect("board starts");
    let board = &board_owned;
    let t = board.timings();
    eprintln!(
        "edge-sim board: setup {:.2} s (cache {}), boot {:.2} s",
        t.setup.as_secs_f64(),
        if t.cache_built { "built" } else { "reused" },
        t.boot.as_secs_f64()
    );

    // Output and exit status, exactly.
    let out = board.run(&["probe", "exit", "7"]).unwrap();
    assert_eq!(out.status, 7);
    assert_eq!(out.stdout_str(), "probe stdout on aarch64\n");
    assert_eq!(out.stderr_str(), "probe stderr\n");
    assert_eq!(
        board.run(&["/payload/probe", "exit", "0"]).unwrap().status,
        0
    );

    let out = board.run(&["probe", "bytes"]).unwrap();
    let all: Vec<u8> = (0..=255u8).collect();
    assert_eq!(out.stdout, all);
    assert_eq!(out.stderr, all.iter().rev().copied().collect::<Vec<u8>>());

    let input: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = board
        .run_with(&GuestCommand::new(["probe", "cat"]).stdin(input.clone()))
        .unwrap();
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "stdin came back changed");

    // Arguments reach the command as given, without shell expansion.
    let out = board
        .run(&[
            "sh",
            "-c",
            "printf '%s|' \"$@\"",
            "sh",
            "a b",
            "it's",
            "$HOME",
            "x\ny",
            "",
        ])
        .unwrap();
    assert_eq!(out.stdout_str(), "a b|it's|$HOME|x\ny||");
    let out = board
        .run_with(
            &GuestCommand::new(["sh", "-c", "echo $K; pwd"])
                .env("K", "v w")
                .cwd("/tmp"),
        )
        .unwrap();
    assert_eq!(out.stdout_str(), "v w\n/tmp\n");
    assert_eq!(board.run(&["no-such-command"]).unwrap().status, 127);

    // Unwinding works in the musl build, and KVM works inside the board.
    assert_eq!(
        board.run(&["probe", "unwind"]).unwrap().stdout_str(),
        "caught: true\n"
    );
    let out = board.run(&["probe", "kvm"]).unwrap();
    assert_eq!(out.status, 0, "KVM probe failed: {}", out.stderr_str());
    assert!(
        out.stdout_str().starts_with("kvm ok: api 12"),
        "{}",
        out.stdout_str()
    );

    // A command past its timeout is killed; the board stays usable.
    let started = Instant::now();
    let out = board
        .run_with(&GuestCommand::new(["sleep", "60"]).timeout(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(out.status, 137);
    assert!(started.elapsed() < Duration::from_secs(30));

    std::thread::scope(|s| {
        // Host -> board through the forward set up at start, and one added while running.
        for guest_port in [9000u16, 9001] {
            let host_port = if guest_port == 9000 {
                board.host_port(9000).expect("forward for 9000")
            } else {
                board.forward(9001).expect("forward added at run time")
            };
            assert_eq!(board.host_port(guest_port), Some(host_port));
            let listener =
                s.spawn(move || board.run(&["probe", "listen", &guest_port.to_string()]));
            let greeting = connect_and_greet(host_port, b"hello from the host\n");
            assert_eq!(greeting, "hello from the board\n");
            let out = listener.join().unwrap().unwrap();
            assert_eq!(
                out.stdout_str(),
                "board got: hello from the host\n",
                "{out:?}"
            );
        }

        // Board -> host: 10.0.2.2 is the host's loopback.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = s.spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(b"hello from the host\n").unwrap();
            line
        });
        let addr = board.host_addr_from_guest(port).to_string();
        assert_eq!(addr, format!("10.0.2.2:{port}"));
        let out = board.run(&["probe", "connect", &addr]).unwrap();
        assert_eq!(
            out.stdout_str(),
            "board got: hello from the host\n",
            "{out:?}"
        );
        assert_eq!(server.join().unwrap(), "hello from the board\n");

        // Several commands at once, running side by side (one after another would take 9 s).
        let started = Instant::now();
        let runs: Vec<_> = (0..3)
            .map(|i| s.spawn(move || board.sh(&format!("sleep 3; echo {i}")).unwrap()))
            .collect();
        for (i, run) in runs.into_iter().enumerate() {
            assert_eq!(run.join().unwrap().stdout_str(), format!("{i}\n"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
    });

    // No route beyond QEMU's network: the board reaches the host's loopback and nothing else.
    let routes = board.run(&["ip", "route"]).unwrap().stdout_str();
    assert!(!routes.contains("default"), "{routes}");

    // The cache is warm now: preparing again downloads and builds nothing.
    let started = Instant::now();
    let base = edge_sim::prepare(None, false, false).unwrap();
    assert!(!base.built);
    assert!(started.elapsed() < Duration::from_secs(2));

    let pid = board.pid();
    drop(board_owned);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map_or(true, |c| !c.contains("qemu")),
        "QEMU still runs after the board was dropped"
    );
}

/// A board QEMU refuses to start fails at once, and the error carries what QEMU said and the
/// tail of both logs (not only their paths).
#[test]
fn board_that_cannot_start_shows_its_logs() {
    let err = EdgeSim::start(&Options {
        cpus: 4096,
        ..Options::default()
    })
    .err()
    .expect("QEMU refuses 4096 vCPUs");
    let text = err.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap();
    assert!(
        first.starts_with("QEMU exited (exit status: 1): qemu-system-aarch64:"),
        "{text}"
    );
    assert!(first.contains("CPUs"), "{text}");
    let rest: Vec<&str> = lines.collect();
    assert!(
        rest.iter()
            .any(|l| l.starts_with("  QEMU stderr (") && l.ends_with("):")),
        "{text}"
    );
    assert!(
        rest.iter()
            .any(|l| l.trim_start().starts_with("qemu-system-aarch64:")),
        "{text}"
    );
    assert!(rest.iter().any(|l| l.starts_with("  console (")), "{text}");
}
