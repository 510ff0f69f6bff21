//! aarch64 for real: `popvmm` built for `aarch64-unknown-linux-musl` runs the example apps,
//! built with `cargo pop build --arch aarch64`, on aarch64 KVM inside the simulated edge board
//! (`edge-sim`: Debian's arm64 kernel under qemu-system-aarch64). Every app must give the same
//! stdout and exit status as on x86-64, and faults must be reported the same way.

mod common;
use common::board::{images, on_board, on_x86, popvmm_aarch64};
use common::repo;
use std::path::PathBuf;

use edge_sim::{EdgeSim, Options};

/// Builds the `vmm` crate's own unit tests for the board; returns the test binary.
fn vmm_unit_tests_aarch64() -> PathBuf {
    let root = repo();
    let recipe = edge_sim::musl::Recipe::for_dir(&root, None, true).expect("aarch64 musl recipe");
    let out = recipe
        .cargo_build(&root.join("Cargo.toml"), &root.join("target"))
        .args([
            "--quiet",
            "-p",
            "vmm",
            "--lib",
            "--tests",
            "--message-format=json",
        ])
        .output()
        .expect("cargo build of vmm's tests for aarch64");
    assert!(
        out.status.success(),
        "building vmm's tests for aarch64 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["target"]["name"] == "vmm" && m["target"]["kind"][0] == "lib")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("the test binary of vmm's library")
}

#[test]
fn vcpu_states_and_the_counter_round_trip_on_aarch64_kvm() {
    let tests = vmm_unit_tests_aarch64();
    let board = EdgeSim::start(&Options {
        payload: vec![(tests, "vmm-tests".to_string())],
        ..Options::default()
    })
    .expect("start the simulated aarch64 board");
    // The backend's own tests, on real aarch64 KVM: a saved state restored into a fresh vCPU
    // reads back the same and runs on as the original does, and the VM's counter never goes back (vCPUs made, states
    // restored), which Linux before 6.4 would do at every vCPU creation.
    let run = board
        .run(&[
            "/payload/vmm-tests",
            "--test-threads",
            "1",
            "arch::aarch64::",
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status,
        0,
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for test in [
        "a_saved_state_restored_into_a_fresh_vcpu_reads_back_the_same ... ok",
        "a_thread_saved_mid_loop_continues_on_a_fresh_vcpu_as_it_would_have ... ok",
        "the_counter_never_goes_back_when_vcpus_are_made_or_states_restored ... ok",
        "a_state_survives_the_wire_and_bad_ones_are_refused ... ok",
    ] {
        assert!(stdout.contains(test), "{stdout}");
    }
}

#[test]
fn the_apps_behave_on_aarch64_kvm_as_on_x86_64() {
    let popvmm = popvmm_aarch64();
    let arm = images("aarch64");
    let x86 = images("x86_64");
    let mut payload = vec![(popvmm, "popvmm".to_string())];
    for (name, path) in &arm {
        payload.push((path.clone(), name.clone()));
    }
    let board = EdgeSim::start(&Options {
        payload,
        ..Options::default()
    })
    .expect("start the simulated aarch64 board");
    let kvm = board.run(&["ls", "/dev/kvm"]).unwrap();
    assert_eq!(kvm.status, 0, "no /dev/kvm on the board");

    let mut failures = Vec::new();
    let mut same = |name: &str, options: &[&str], board_options: &[&str], args: &[&str]| {
        let a = on_x86(&x86[name], options, args);
        let b = on_board(&board, name, board_options, args);
        if a.stdout != b.stdout || a.status != b.status {
            failures.push(format!(
                "{name} {args:?}: x86-64 gave status {} and {:?}, aarch64 status {} and {:?} (stderr {:?})",
                a.status, a.stdout, b.status, b.stdout, b.stderr
            ));
        }
        b
    };

    // Output and exit statuses equal to x86-64.
    same("hello", &[], &[], &[]);
    same("primesum", &[], &[], &["20000"]);
    same("primesum", &[], &[], &[]);
    same("checks", &[], &[], &["exit", "7"]);
    same("checks", &[], &[], &["enosys"]);
    let env = ["--env", "POP_A=1", "--env", "GREETING=hi there"];
    // argv[0] is the image path, which differs; everything after it must not.
    let x86_args = on_x86(&x86["checks"], &env, &["args", "x y"]);
    let arm_args = on_board(&board, "checks", &env, &["args", "x y"]);
    assert_eq!(arm_args.status, 0);
    assert_eq!(
        arm_args.stdout.split_once('\n').map(|(_, rest)| rest),
        x86_args.stdout.split_once('\n').map(|(_, rest)| rest)
    );
    assert!(arm_args.stdout.starts_with("arg[0]=/payload/checks\n"));

    // The std tour with a read-write mount (a directory of the board's own file system).
    let x86_dir = std::env::temp_dir().join(format!("popvmm-arm-tour-{}", std::process::id()));
    std::fs::create_dir_all(&x86_dir).unwrap();
    let x86_mount = format!("{}:/data:rw", x86_dir.display());
    assert_eq!(board.run(&["mkdir", "-p", "/tmp/tour"]).unwrap().status, 0);
    let tour = same(
        "stdtour",
        &["--mount", &x86_mount, "--env", "POP_TOUR=arm"],
        &["--mount", "/tmp/tour:/data:rw", "--env", "POP_TOUR=arm"],
        &["/data"],
    );
    assert!(tour.stdout.ends_with("tour done\n"), "{}", tour.stdout);
    let _ = std::fs::remove_dir_all(&x86_dir);

    // Mounts: read-only unless :rw, nothing outside them.
    assert_eq!(
        board
            .sh("mkdir -p /tmp/ro && echo from the board > /tmp/ro/f.txt")
            .unwrap()
            .status,
        0
    );
    let read = on_board(
        &board,
        "checks",
        &["--mount", "/tmp/ro:/in"],
        &["read", "/in/f.txt"],
    );
    assert_eq!(read.stdout, "from the board\n");
    let write = on_board(
        &board,
        "checks",
        &["--mount", "/tmp/ro:/in"],
        &["write", "/in/f.txt", "x"],
    );
    assert_eq!(write.stdout, "error: Read-only file system (os error 30)\n");
    assert_eq!(write.status, 1);
    let outside = on_board(&board, "checks", &[], &["read", "/tmp/ro/f.txt"]);
    assert_eq!(
        outside.stdout,
        "error: No such file or directory (os error 2)\n"
    );

    // A panic: its message and status 134.
    let panic = on_board(&board, "checks", &[], &["panic"]);
    assert_eq!(panic.status, 134);
    assert!(
        panic.stderr.contains("boom from checks"),
        "{}",
        panic.stderr
    );

    // Faults: registers and a symbolized backtrace, status 139.
    let null = on_board(&board, "checks", &[], &["null"]);
    assert_eq!(null.status, 139, "{}", null.stderr);
    assert!(
        null.stderr.starts_with("popvmm: guest fault: data abort"),
        "{}",
        null.stderr
    );
    assert!(
        null.stderr.contains("address 0x0 (read, translation fault"),
        "{}",
        null.stderr
    );
    assert!(null.stderr.contains(" pc 0x"), "{}", null.stderr);
    let backtrace = null.stderr.split("backtrace:").nth(1).unwrap_or_default();
    let top: String = backtrace.lines().take(3).collect();
    assert!(
        top.contains("checks::faults::crash_here"),
        "{}",
        null.stderr
    );
    let ud = on_board(&board, "checks", &[], &["ud"]);
    assert_eq!(ud.status, 139);
    assert!(
        ud.stderr
            .starts_with("popvmm: guest fault: undefined instruction"),
        "{}",
        ud.stderr
    );
    assert!(
        ud.stderr.contains("checks::faults::invalid_instruction"),
        "{}",
        ud.stderr
    );

    // Image errors are one line, as on x86-64: here an x86-64 image on the aarch64 board.
    board.add_payload(&x86["hello"], "hello-x86").unwrap();
    let wrong = board
        .run(&["/payload/popvmm", "launch", "/payload/hello-x86"])
        .unwrap();
    assert_eq!(wrong.status, 125);
    assert_eq!(
        String::from_utf8_lossy(&wrong.stderr),
        "popvmm: error: /payload/hello-x86 is an x86_64 ELF; this popvmm runs aarch64 images\n"
    );

    if !failures.is_empty() {
        // The board's kernel logs user-space crashes (e.g. of popvmm itself) with their PC.
        let dmesg = board.sh("dmesg | tail -n 20").unwrap();
        panic!(
            "{}\nboard dmesg:\n{}",
            failures.join("\n"),
            String::from_utf8_lossy(&dmesg.stdout)
        );
    }
}
