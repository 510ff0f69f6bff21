//! The `edge-sim` command line: a persistent board (start, run -b, put, forward, status, stop)
//! and its errors. One boot.

use std::process::{Command, Output};

fn edge_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-sim"))
        .args(args)
        .output()
        .expect("running edge-sim")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Stops the named board even when an assertion fails.
struct Stop(String);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = edge_sim(&["stop", "--name", &self.0]);
    }
}

#[test]
fn help_and_errors_are_one_line() {
    let out = edge_sim(&["--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("Run a command in a board"));

    let out = edge_sim(&["run", "--payload", "/no/such/file", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert_eq!(
        text(&out.stderr),
        "edge-sim: error: --payload /no/such/file: /no/such/file does not exist\n"
    );

    let out = edge_sim(&["run", "-b", "no-such-board-here", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("no board no-such-board-here running"));
}

#[test]
fn persistent_board_runs_many_commands() {
    let name = format!("cli-test-{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("note.txt");
    std::fs::write(&file, "from the host\n").unwrap();

    let _stop = Stop(name.clone());
    let out = edge_sim(&["start", "--name", &name, "--forward", "8080"]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let started = text(&out.stdout);
    assert!(
        started.contains(&format!("board {name} running")),
        "{started}"
    );
    assert!(started.contains("-> board port 8080"), "{started}");

    let out = edge_sim(&[
        "run",
        "-b",
        &name,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    let spec = format!("{}:note", file.display());
    let out = edge_sim(&["put", "--name", &name, &spec]);
    assert!(out.status.success(), "put: {}", text(&out.stderr));
    let out = edge_sim(&["run", "-b", &name, "--", "cat", "/payload/note"]);
    assert_eq!(text(&out.stdout), "from the host\n");

    let out = edge_sim(&["forward", "--name", &name, "9999"]);
    assert!(out.status.success(), "forward: {}", text(&out.stderr));
    let port: u16 = text(&out.stdout).trim().parse().expect("a port number");
    let out = edge_sim(&["status", "--name", &name]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains(&format!("forward 127.0.0.1:{port} -> board port 9999")),
        "{}",
        text(&out.stdout)
    );

    let out = edge_sim(&["stop", "--name", &name]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    let out = edge_sim(&["status", "--name", &name]);
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}
