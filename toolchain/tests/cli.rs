//! The `cargo-pop` command line: help texts and the errors reported before anything builds.

use std::process::{Command, Output};

fn cargo_pop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cargo-pop"))
        .args(args)
        .output()
        .expect("cargo-pop runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_reads_as_a_cargo_subcommand() {
    let out = cargo_pop(&["pop", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("Usage: cargo pop <COMMAND>"), "{help}");
    assert!(help.contains("build"), "{help}");

    let out = cargo_pop(&["pop", "build", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for option in [
        "--release",
        "--arch <ARCH>",
        "--package <SPEC>",
        "--manifest-path",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn unknown_arch_is_one_line() {
    let out = cargo_pop(&["build", "--arch", "mips"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "cargo-pop: error: unknown architecture `mips` (expected x86_64, aarch64 or all)\n"
    );
}

#[test]
fn missing_libos_is_reported() {
    let empty = std::env::temp_dir().join(format!("pop-no-repo-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-pop"))
        .args(["pop", "build"])
        .env("POP_REPO", &empty)
        .output()
        .unwrap();
    std::fs::remove_dir(&empty).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("cargo-pop: error: no libos found: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
