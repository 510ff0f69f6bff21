//! End to end: the example apps of `images/`, built unmodified by `cargo pop build`, run as
//! unikernels under `popvmm launch` on real KVM, checked against what a user would see (and
//! against the same programs built natively for Linux).

mod common;
use common::{repo, scratch_dirs_of};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Image paths by name, built once per test binary.
fn images() -> &'static HashMap<String, PathBuf> {
    static IMAGES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let options = pop_toolchain::BuildOptions {
            manifest_path: Some(repo().join("images/Cargo.toml")),
            ..Default::default()
        };
        let built = pop_toolchain::build(&options).expect("cargo pop build of images/");
        built
            .into_iter()
            .map(|path| (path.file_name().unwrap().to_string_lossy().into(), path))
            .collect()
    })
}

/// The unikernel image of app `name`.
fn image(name: &str) -> &'static Path {
    images()
        .get(name)
        .unwrap_or_else(|| panic!("no image {name} in {:?}", images().keys()))
}

/// The native Linux build of app `name` (plain `cargo build`), built once.
fn native(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let manifest = repo().join("images/Cargo.toml");
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .env_remove("RUSTFLAGS")
            .status()
            .expect("run cargo");
        assert!(status.success(), "native build of images/");
    });
    repo().join("images/target/debug").join(name)
}

/// Runs `popvmm launch OPTIONS IMAGE -- ARGS`.
fn launch(options: &[&str], name: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popvmm"))
        .arg("launch")
        .args(options)
        .arg(image(name))
        .arg("--")
        .args(args)
        .output()
        .expect("run popvmm")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh scratch directory.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("popvmm-images-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_vm_alone_sees_one_node_itself() {
    let out = launch(&[], "checks", &["nodes"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "node 0 x86_64 up (here)\n");
}

#[test]
fn hello_prints_its_node() {
    let out = launch(&[], "hello", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello, world (node 0)\n");
    assert_eq!(stderr(&out), "");
}

/// The seed tutorial's `is_prime`, computed here natively: 0 and 1 count as prime.
fn tutorial_sums(max: u64) -> Vec<u64> {
    let is_prime = |n: u64| (2..n).all(|i| !n.is_multiple_of(i));
    (0..4)
        .map(|t| {
            (t * max / 4..(t + 1) * max / 4)
                .filter(|&n| is_prime(n))
                .count() as u64
        })
        .collect()
}

fn primesum_output(sums: &[u64]) -> String {
    let mut text = String::new();
    for (t, sum) in sums.iter().enumerate() {
        text += &format!("thread {t} sum is {sum}\n");
    }
    text + &format!("sum is {}\n", sums.iter().sum::<u64>())
}

#[test]
fn primesum_with_a_small_max_matches_a_native_computation() {
    let out = launch(&[], "primesum", &["20000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), primesum_output(&tutorial_sums(20000)));
}

#[test]
fn primesum_default_gives_the_tutorial_sums() {
    let out = launch(&[], "primesum", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), primesum_output(&[9594, 8392, 8013, 7863]));
}

#[test]
fn args_and_only_the_given_env_reach_main() {
    let out = launch(
        &["--env", "POP_A=1", "--env", "GREETING=hello world"],
        "checks",
        &["args", "two words", "--flag"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected = format!(
        "arg[0]={}\narg[1]=args\narg[2]=two words\narg[3]=--flag\nenv GREETING=hello world\nenv POP_A=1\n",
        image("checks").display()
    );
    assert_eq!(stdout(&out), expected);
}

#[test]
fn popvmm_launch_takes_arguments_as_cargo_s_runner_gives_them() {
    // `runner = "popvmm launch --"`: cargo runs `RUNNER EXE ARGS...`; and without `--`,
    // everything after the image goes to the application too.
    let checks = image("checks");
    let expected = format!(
        "arg[0]={}\narg[1]=args\narg[2]=--nocapture\narg[3]=-x\n",
        checks.display()
    );
    for form in [
        vec!["launch", "--"],
        vec!["launch", "--memory", "64M", "--"],
        vec!["launch"],
    ] {
        let mut argv: Vec<std::ffi::OsString> = form.iter().map(Into::into).collect();
        argv.push(checks.into());
        argv.extend(["args", "--nocapture", "-x"].map(Into::into));
        let out = Command::new(env!("CARGO_BIN_EXE_popvmm"))
            .args(&argv)
            .output()
            .expect("run popvmm");
        assert_eq!(out.status.code(), Some(0), "{form:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), expected, "{form:?}");
    }
}

#[test]
fn process_exit_status_is_popvmms_status() {
    for code in ["0", "7", "255"] {
        let out = launch(&[], "checks", &["exit", code]);
        assert_eq!(
            out.status.code(),
            Some(code.parse().unwrap()),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_panic_prints_its_message_and_exits_non_zero() {
    let out = launch(&[], "checks", &["panic"]);
    assert_eq!(out.status.code(), Some(134));
    let err = stderr(&out);
    assert!(err.contains("panicked at"), "{err}");
    assert!(err.contains("boom from checks"), "{err}");
}

#[test]
fn a_null_dereference_reports_registers_and_a_symbolized_backtrace() {
    let out = launch(&[], "checks", &["null"]);
    assert_eq!(out.status.code(), Some(139));
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    let first = err.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("popvmm: guest fault: page fault (#PF)"),
        "{err}"
    );
    assert!(first.contains("address 0x0 (read, not present)"), "{err}");
    assert!(err.contains("rip 0x"), "{err}");
    assert!(err.contains("cr2 0x0000000000000000"), "{err}");
    let backtrace = err.split("backtrace:").nth(1).expect("a backtrace");
    // Frame 0 is the faulting load (`read_volatile` when not inlined), frame 1 at the latest
    // the function that made it.
    let top: String = backtrace.lines().take(3).collect();
    assert!(top.contains("checks::faults::crash_here"), "{err}");
    assert!(backtrace.contains("checks::faults::null"), "{err}");
    assert!(backtrace.contains("checks::main"), "{err}");
}

#[test]
fn an_invalid_instruction_is_reported() {
    let out = launch(&[], "checks", &["ud"]);
    assert_eq!(out.status.code(), Some(139));
    let err = stderr(&out);
    assert!(
        err.starts_with("popvmm: guest fault: invalid opcode (#UD)"),
        "{err}"
    );
    assert!(err.contains("checks::faults::invalid_instruction"), "{err}");
}

#[test]
fn an_unimplemented_system_call_fails_cleanly() {
    let out = launch(&[], "checks", &["enosys"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // std for the hermit targets files ENOSYS under `Uncategorized`.
    assert_eq!(stdout(&out), "enosys: Uncategorized os error 38\n");
}

#[test]
fn files_work_inside_mounts_and_nowhere_else() {
    let dir = scratch("files");
    std::fs::create_dir_all(dir.join("rw")).unwrap();
    std::fs::create_dir_all(dir.join("ro")).unwrap();
    std::fs::write(dir.join("ro/input.txt"), "from the host\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "outside\n").unwrap();
    let rw = format!("{}:/out:rw", dir.join("rw").display());
    let ro = format!("{}:/in", dir.join("ro").display());
    let mounts = ["--mount", rw.as_str(), "--mount", ro.as_str()];

    let out = launch(&mounts, "checks", &["write", "/out/result.txt", "written"]);
    assert_eq!(stdout(&out), "wrote 7 bytes\n", "{}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.join("rw/result.txt")).unwrap(),
        "written"
    );

    let out = launch(&mounts, "checks", &["read", "/in/input.txt"]);
    assert_eq!(stdout(&out), "from the host\n", "{}", stderr(&out));

    let out = launch(&mounts, "checks", &["write", "/in/input.txt", "x"]);
    assert_eq!(stdout(&out), "error: Read-only file system (os error 30)\n");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(dir.join("ro/input.txt")).unwrap(),
        "from the host\n"
    );

    for outside in ["/secret.txt", "/in/../secret.txt", "/in/../../secret.txt"] {
        let out = launch(&mounts, "checks", &["read", outside]);
        assert_eq!(
            stdout(&out),
            "error: No such file or directory (os error 2)\n",
            "{outside}"
        );
        assert_eq!(out.status.code(), Some(1));
    }
    // Without any mount the guest sees no host file at all.
    let host_path = dir.join("ro/input.txt");
    let out = launch(&[], "checks", &["read", host_path.to_str().unwrap()]);
    assert_eq!(
        stdout(&out),
        "error: No such file or directory (os error 2)\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_vm_has_a_private_tmp_with_no_mount_and_it_goes_away_with_it() {
    let child = Command::new(env!("CARGO_BIN_EXE_popvmm"))
        .args(["launch", image("checks").to_str().unwrap(), "tmp"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "temp_dir: /tmp\nread back: hello from the guest\nnumber: 42\nlisted: hello.txt work\nleft: 0\n"
    );
    assert_eq!(scratch_dirs_of(pid), Vec::<String>::new());

    // Each VM has its own: what one left there, the next does not see.
    let out = launch(&[], "checks", &["write", "/tmp/left.txt", "x"]);
    assert_eq!(stdout(&out), "wrote 1 bytes\n", "{}", stderr(&out));
    let out = launch(&[], "checks", &["read", "/tmp/left.txt"]);
    assert_eq!(
        stdout(&out),
        "error: No such file or directory (os error 2)\n"
    );

    // `--no-tmp`: none.
    let out = launch(&["--no-tmp"], "checks", &["write", "/tmp/x", "x"]);
    assert_eq!(
        stdout(&out),
        "error: No such file or directory (os error 2)\n"
    );
    assert_eq!(out.status.code(), Some(1));

    // A mount at /tmp is the guest's /tmp.
    let dir = scratch("tmp");
    let mount = format!("{}:/tmp:rw", dir.display());
    let out = launch(
        &["--mount", &mount],
        "checks",
        &["write", "/tmp/kept.txt", "kept"],
    );
    assert_eq!(stdout(&out), "wrote 4 bytes\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("kept.txt")).unwrap(),
        "kept"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn more_threads_than_allowed_fail_cleanly() {
    // Enough work that the first worker still runs when the second is spawned (a worker
    // that had already ended would have given its vCPU back).
    let out = launch(&["--max-threads", "2"], "primesum", &["2000000"]);
    assert_eq!(out.status.code(), Some(134));
    assert!(
        stderr(&out).contains("unable to create thread"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn too_little_memory_is_a_one_line_error() {
    let out = launch(&["--memory", "4M"], "hello", &[]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("popvmm: error: "), "{err}");
}

/// Runs `name ARGS` natively and under popvmm (with `vm_options`, and `vm_args` in place of
/// `args` where paths differ) and asserts identical stdout and exit status.
fn assert_same_as_native(name: &str, args: &[&str], vm_options: &[&str], vm_args: &[&str]) {
    let native_out = Command::new(native(name))
        .args(args)
        .env_clear()
        .env("POP_TOUR", "differential")
        .output()
        .expect("run the native build");
    let mut options = vec!["--env", "POP_TOUR=differential"];
    options.extend_from_slice(vm_options);
    let vm_out = launch(&options, name, vm_args);
    assert_eq!(
        stdout(&vm_out),
        stdout(&native_out),
        "{name}: stderr under popvmm: {}",
        stderr(&vm_out)
    );
    assert_eq!(vm_out.status.code(), native_out.status.code(), "{name}");
}

#[test]
fn differential_std_programs_behave_as_native_linux_processes() {
    assert_same_as_native("hello", &[], &[], &[]);
    assert_same_as_native("primesum", &["30000"], &[], &["30000"]);
    assert_same_as_native("checks", &["exit", "42"], &[], &["exit", "42"]);
    let native_dir = scratch("tour-native");
    let vm_dir = scratch("tour-vm");
    let mount = format!("{}:/data:rw", vm_dir.display());
    assert_same_as_native(
        "stdtour",
        &[native_dir.to_str().unwrap()],
        &["--mount", &mount],
        &["/data"],
    );
    let out = launch(&["--mount", &mount], "stdtour", &["/data"]);
    assert!(stdout(&out).ends_with("tour done\n"));
    let _ = std::fs::remove_dir_all(&native_dir);
    let _ = std::fs::remove_dir_all(&vm_dir);
}

#[test]
fn async_tasks_on_pop_s_executor_print_what_they_print_natively() {
    let native_out = Command::new(native("asyncdemo"))
        .args(["5", "3000"])
        .output()
        .expect("run the native build");
    assert!(native_out.status.success());
    let expected = stdout(&native_out);
    assert!(
        expected.contains("task 4: sum ") && expected.ends_with('\n'),
        "{expected}"
    );
    // One worker or several (the calling thread is one), the same lines; without the
    // migration points too.
    for workers in ["1", "2", "4"] {
        let env = format!("POP_WORKERS={workers}");
        let out = launch(&["--env", &env], "asyncdemo", &["5", "3000"]);
        assert_eq!(
            stdout(&out),
            expected,
            "{workers} workers: {}",
            stderr(&out)
        );
        assert_eq!(out.status.code(), Some(0));
    }
    let out = launch(&[], "asyncdemo", &["5", "3000", "nopoints"]);
    assert_eq!(stdout(&out), expected, "{}", stderr(&out));
}

/// Runs `popvmm launch` like [`launch`], killing it after `limit` (a lost futex wake-up
/// would otherwise hang the test).
fn launch_with_limit(name: &str, args: &[&str], limit: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_popvmm"))
        .arg("launch")
        .arg(image(name))
        .arg("--")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run popvmm");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name} {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn futex_hand_offs_lose_no_wake_up() {
    // Two threads hand a token back and forth through Mutex + Condvar: every round needs a
    // wake-up that reaches a waiter, whether it spins or blocks in the VMM.
    let out = launch_with_limit(
        "checks",
        &["pingpong", "50000"],
        std::time::Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("pingpong_ns="), "{}", stdout(&out));
    // More threads (vCPUs) than host cores: every join must return.
    let out = launch_with_limit(
        "checks",
        &["spin", "6", "1000000"],
        std::time::Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
