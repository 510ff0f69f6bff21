//! The `popvmm` binary: error reporting (one line, status 125) and end-to-end runs of small
//! hand-built ELF images.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use goblin::elf::header::EM_AARCH64;
use goblin::elf::program_header::{PF_R, PF_W, PT_LOAD};
use pop_abi::Hypercall;
use pop_abi::layout::{IMAGE_BASE, SHARED_BASE};
use vmm::testing::ElfBuilder;
use vmm::testing::asm::{Asm, Reg};

fn popvmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popvmm"))
        .args(args)
        .output()
        .expect("run popvmm")
}

/// A scratch directory for this test binary.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("popvmm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// Asserts that `out` is a launch error: status 125 and one stderr line containing `needle`.
fn assert_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("popvmm: error: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

#[test]
fn help_and_version() {
    let out = popvmm(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("launch"));
    let out = popvmm(&["launch", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--memory",
        "--env",
        "--mount",
        "--max-threads",
        "--timings",
        "IMAGE",
        "ARGS",
    ] {
        assert!(help.contains(option), "{option} in {help}");
    }
    let out = popvmm(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("popvmm "));
}

#[test]
fn image_errors_are_one_line() {
    let dir = scratch("images");
    assert_error(
        &popvmm(&["launch", "/does/not/exist"]),
        "cannot read /does/not/exist",
    );
    let garbage = write_file(&dir, "garbage", b"not an elf at all");
    assert_error(
        &popvmm(&["launch", &garbage]),
        &format!("{garbage} is not an ELF file"),
    );
    let arm = write_file(
        &dir,
        "arm",
        &ElfBuilder::new()
            .machine(EM_AARCH64)
            .code(&[0])
            .abi_note()
            .build(),
    );
    assert_error(
        &popvmm(&["launch", &arm]),
        "is an aarch64 ELF; this popvmm runs x86_64 images",
    );
    assert_error(
        &popvmm(&["launch", "/bin/true"]),
        "build it with `cargo pop build`",
    );
    let big = ElfBuilder::new()
        .code(&[0xf4])
        .segment(PT_LOAD, PF_R | PF_W, SHARED_BASE, b"", 300 << 20)
        .abi_note();
    let big = write_file(&dir, "big", &big.build());
    assert_error(&popvmm(&["launch", &big]), "it needs at least 309 MiB");
}

#[test]
fn option_errors_are_one_line() {
    let dir = scratch("options");
    let dir_s = dir.display().to_string();
    assert_error(
        &popvmm(&["launch", "--memory", "lots", "/bin/true"]),
        "invalid size 'lots'",
    );
    assert_error(
        &popvmm(&["launch", "--memory", "100G", "/bin/true"]),
        "more than the maximum",
    );
    assert_error(
        &popvmm(&["launch", "--env", "NOVALUE", "/bin/true"]),
        "expected KEY=VALUE",
    );
    assert_error(
        &popvmm(&["launch", "--mount", "nocolon", "/bin/true"]),
        "HOST_DIR:GUEST_DIR",
    );
    assert_error(
        &popvmm(&["launch", "--mount", "/no/such/dir:/x", "/bin/true"]),
        "/no/such/dir",
    );
    assert_error(
        &popvmm(&["launch", "--mount", &format!("{dir_s}:rel"), "/bin/true"]),
        "absolute",
    );
    assert_error(
        &popvmm(&["launch", "--max-threads", "0", "/bin/true"]),
        "1 to 128",
    );
    assert_error(
        &popvmm(&["launch", "--no-such-option", "/bin/true"]),
        "--no-such-option",
    );
    assert_error(&popvmm(&["launch"]), "IMAGE");
    assert_error(
        &popvmm(&["launch", "--cpus", "2-1", "/bin/true"]),
        "CPU numbers or ranges",
    );
    // A CPU this machine does not have (the set cannot be below 1024 CPUs here).
    assert_error(
        &popvmm(&["launch", "--cpus", "1023", "/bin/true"]),
        "cannot run on CPUs 1023: this machine has none of them",
    );
    assert_error(
        &popvmm(&["node", "--cpus", "1023", "--cluster", "/x", "--id", "0"]),
        "cannot run on CPUs 1023",
    );
}

#[test]
fn cpus_confine_a_launch_and_a_node_to_them() {
    let dir = scratch("cpus");
    let image = hello_image(&dir, b"on CPU 0\n", 3);
    let out = popvmm(&["launch", "--cpus", "0", &image]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"on CPU 0\n");

    // A node's threads (those it starts later too) may run on CPU 0 only.
    write_file(&dir, "secret", b"the cpus test's secret\n");
    let cluster = write_file(
        &dir,
        "cluster.toml",
        format!(
            "secret_file = \"secret\"\n[[node]]\nid = 0\naddress = \"unix:{}\"\nisa = \"x86_64\"\n",
            dir.join("n0.sock").display()
        )
        .as_bytes(),
    );
    let mut node = Command::new(env!("CARGO_BIN_EXE_popvmm"))
        .args(["node", "--cpus", "0", "--cluster", &cluster, "--id", "0"])
        .args(["--control", &dir.join("control.sock").display().to_string()])
        .spawn()
        .unwrap();
    let tasks = format!("/proc/{}/task", node.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut allowed = Vec::new();
    while allowed.len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        allowed = std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .filter_map(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("Cpus_allowed_list:")
                        .map(|v| v.trim().to_string())
                })
            })
            .collect();
    }
    let _ = node.kill();
    let _ = node.wait();
    assert!(allowed.len() >= 3, "the node's threads: {allowed:?}");
    assert!(allowed.iter().all(|a| a == "0"), "{allowed:?}");
}

/// An image that writes `text` to stdout and exits with `status`.
fn hello_image(dir: &Path, text: &[u8], status: u64) -> String {
    let mut a = Asm::new();
    a.write(1, IMAGE_BASE + 0x800, text.len() as u64)
        .exit(status);
    a.pad_to(0x800).bytes(text);
    write_file(
        dir,
        "hello",
        &ElfBuilder::new().code(&a.code).abi_note().build(),
    )
}

#[test]
fn runs_an_image_and_exits_with_its_status() {
    let dir = scratch("run");
    let image = hello_image(&dir, b"hello from the guest\n", 42);
    let out = popvmm(&["launch", "--memory", "16M", &image]);
    assert_eq!(
        out.status.code(),
        Some(42),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello from the guest\n");
    assert!(out.stderr.is_empty());

    let out = popvmm(&["launch", "--timings", &image, "--", "a", "b"]);
    assert_eq!(out.status.code(), Some(42));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("popvmm: timings: kvm "), "{stderr}");
    assert!(
        stderr.contains("boot-to-exit") && stderr.trim_end().ends_with(" ms"),
        "{stderr}"
    );
}

#[test]
fn a_crash_exits_with_139_and_a_report() {
    let dir = scratch("crash");
    let mut a = Asm::new();
    a.hypercall(Hypercall::Fault as u16, &[0x3000_0000]);
    let image = write_file(
        &dir,
        "crash",
        &ElfBuilder::new().code(&a.code).abi_note().build(),
    );
    let out = popvmm(&["launch", &image]);
    assert_eq!(out.status.code(), Some(139));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("popvmm: guest fault: "), "{stderr}");
    assert!(stderr.contains("backtrace:"), "{stderr}");
}

#[test]
fn files_under_a_mount_are_readable() {
    let dir = scratch("mount");
    std::fs::create_dir_all(dir.join("share")).unwrap();
    std::fs::write(dir.join("share/greeting.txt"), b"from the host").unwrap();
    // open("/data/greeting.txt"); read(fd, buf, 64); write(1, buf, n); exit(0)
    let buf = SHARED_BASE + 0x1000;
    let mut a = Asm::new();
    a.hypercall(Hypercall::Open as u16, &[IMAGE_BASE + 0x800, 0, 0]);
    a.mov(Reg::Rdi, Reg::Rax);
    a.mov_imm(Reg::Rsi, buf)
        .mov_imm(Reg::Rdx, 64)
        .trap(Hypercall::Read as u16);
    a.mov(Reg::Rdx, Reg::Rax);
    a.mov_imm(Reg::Rdi, 1)
        .mov_imm(Reg::Rsi, buf)
        .trap(Hypercall::Write as u16);
    a.exit(0);
    a.pad_to(0x800).bytes(b"/data/./greeting.txt\0");
    let image = write_file(
        &dir,
        "cat",
        &ElfBuilder::new().code(&a.code).abi_note().build(),
    );
    let mount = format!("{}:/data", dir.join("share").display());
    let out = popvmm(&["launch", "--mount", &mount, &image]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"from the host");
    // Without the mount the guest sees nothing: open fails with ENOENT (the exit status).
    let mut a = Asm::new();
    a.hypercall(Hypercall::Open as u16, &[IMAGE_BASE + 0x800, 0, 0]);
    a.bytes(&[0x48, 0xf7, 0xd8]); // neg rax
    a.mov(Reg::Rdi, Reg::Rax).trap(Hypercall::Exit as u16);
    a.pad_to(0x800).bytes(b"/data/greeting.txt\0");
    let image = write_file(
        &dir,
        "open",
        &ElfBuilder::new().code(&a.code).abi_note().build(),
    );
    assert_eq!(popvmm(&["launch", &image]).status.code(), Some(2));
    assert_eq!(
        popvmm(&["launch", "--mount", &mount, &image]).status.code(),
        Some(-3i32 as u8 as i32)
    );
}
