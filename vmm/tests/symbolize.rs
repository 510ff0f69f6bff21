//! Crash reports of a real ELF with DWARF and frame pointers: a freestanding C program built
//! by the host's `gcc` (skipped when there is none), linked at the image base with the ABI
//! note, that writes through a null pointer two calls deep.

use std::path::PathBuf;
use std::process::Command;

use vmm::Outcome;
use vmm::image::Image;
use vmm::testing::{captured, text};

const PROGRAM: &str = r#"
struct note { char magic[8]; unsigned version, arch; };
__attribute__((section(".pop_abi"), used))
static const struct note pop_abi = { {'P','O','P','L','I','B','O','S'}, ABI_VERSION, 1 };

__attribute__((noinline)) void crash(volatile long *p) {
    *p = 42;
}

__attribute__((noinline)) void middle(void) {
    crash(0);
    __asm__ volatile("" ::: "memory");
}

void _start(void) {
    middle();
    for (;;) {}
}
"#;

/// Builds the program, or `None` if there is no C compiler.
fn build() -> Option<PathBuf> {
    let dir = std::env::temp_dir().join(format!("popvmm-sym-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("crash.c");
    let program = PROGRAM.replace("ABI_VERSION", &pop_abi::ABI_VERSION.to_string());
    std::fs::write(&source, program).unwrap();
    let exe = dir.join("crash");
    let status = Command::new("gcc")
        .args([
            "-g",
            "-O0",
            "-fno-omit-frame-pointer",
            "-ffreestanding",
            "-nostdlib",
            "-static",
            "-no-pie",
        ])
        .args([
            "-mno-red-zone",
            "-fcf-protection=none",
            "-Wl,--build-id=none",
            "-Wl,-Ttext-segment=0x400000",
        ])
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .status()
        .ok()?;
    status.success().then_some(exe)
}

#[test]
fn null_write_reports_function_line_and_backtrace() {
    let Some(exe) = build() else {
        eprintln!("skipped: no gcc");
        return;
    };
    let image = Image::from_file(&exe).expect("a valid image");
    let (config, _, err) = captured();
    let outcome = vmm::launch::run_image(
        image,
        &config,
        std::sync::Arc::new(vmm::timings::Timings::new(std::time::Instant::now())),
    );
    assert_eq!(outcome.unwrap(), Outcome::Fault);
    let report = text(&err);
    let first = report.lines().next().unwrap();
    assert!(first.contains(" in crash ("), "{report}");
    assert!(first.contains("crash.c:7)"), "{report}");
    let backtrace = report.split("backtrace:\n").nth(1).unwrap();
    let frames: Vec<&str> = backtrace.lines().collect();
    assert!(
        frames[0].starts_with("  #0 0x")
            && frames[0].contains(" crash at ")
            && frames[0].ends_with("crash.c:7"),
        "{report}"
    );
    assert!(
        frames[1].starts_with("  #1 0x")
            && frames[1].contains(" middle at ")
            && frames[1].ends_with("crash.c:11"),
        "{report}"
    );
    assert!(
        frames[2].starts_with("  #2 0x")
            && frames[2].contains(" _start at ")
            && frames[2].ends_with("crash.c:16"),
        "{report}"
    );
}
