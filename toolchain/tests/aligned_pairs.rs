//! `cargo pop build --arch all`: every program of `images/` gets an x86-64 and an aarch64
//! image in which what application state can point at is at the same address, and the
//! verifier refuses pairs that do not line up, naming what does not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use goblin::elf::Elf;
use pop_toolchain::align::verify::{map_of, verify, verify_either};
use pop_toolchain::{ArchSelection, BuildOptions, Error, repo};

/// The release images of `images/` by (arch directory, name), built as a pair.
fn pairs() -> HashMap<String, [PathBuf; 2]> {
    let options = BuildOptions {
        release: true,
        arch: ArchSelection::All,
        manifest_path: Some(repo::default_root().join("images/Cargo.toml")),
        ..BuildOptions::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build --arch all");
    let mut by_name: HashMap<String, [PathBuf; 2]> = HashMap::new();
    for image in images {
        let name = image.file_name().unwrap().to_string_lossy().into_owned();
        let side = usize::from(image.to_string_lossy().contains("aarch64-unknown-hermit"));
        by_name
            .entry(name)
            .or_insert_with(|| [PathBuf::new(), PathBuf::new()])[side] = image;
    }
    by_name
}

/// Address of the symbol whose demangled path (without hashes) is `path`.
fn address_of(image: &Path, path: &str) -> Option<u64> {
    let data = std::fs::read(image).unwrap();
    let elf = Elf::parse(&data).unwrap();
    elf.syms.iter().find_map(|s| {
        let name = elf.strtab.get_at(s.st_name)?;
        (pop_toolchain::align::units::demangled(name) == path).then_some(s.st_value)
    })
}

fn misaligned(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::Misaligned(why)) => why,
        other => panic!("expected a misaligned pair, got {other:?}"),
    }
}

#[test]
fn every_program_gets_an_aligned_pair_that_verifies() {
    let pairs = pairs();
    for name in [
        "hello",
        "hello2",
        "helloN",
        "primesum",
        "pthreads",
        "stdtour",
        "checks",
        "migrateme",
    ] {
        let [x86, arm] = pairs
            .get(name)
            .unwrap_or_else(|| panic!("{name} not built"));
        assert!(arm.exists() && x86.exists(), "{name}");
        let report = verify(x86, arm).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(report.same_address > 100, "{name}: {report}");
        // What an async task or a `Box<dyn Trait>` holds: functions std and the app share.
        for path in [
            "std::io::stdio::_print",
            "std::rt::lang_start_internal",
            "<alloc::raw_vec::RawVecInner>::finish_grow",
        ] {
            let (a, b) = (address_of(x86, path), address_of(arm, path));
            assert!(a.is_some(), "{name}: {path} missing");
            assert_eq!(a, b, "{name}: {path}");
        }
        // The libos's state that a crossing carries: its heap allocator and futex waiters.
        for path in ["pop_libos::heap::HEAP", "pop_libos::sync::WAITERS"] {
            let (a, b) = (address_of(x86, path), address_of(arm, path));
            assert!(a.is_some() && a == b, "{name}: {path}: {a:x?} / {b:x?}");
        }
        // The shared data starts at one place and both maps sit beside the images.
        assert!(map_of(x86).is_file() && map_of(arm).is_file());
    }
    let [x86, arm] = &pairs["primesum"];
    assert_eq!(
        address_of(x86, "primesum::is_prime"),
        address_of(arm, "primesum::is_prime")
    );
    // The executor of migratable apps: its state, and the flag a crossing sets.
    let [x86, arm] = &pairs["asyncdemo"];
    for path in ["pop::executor::RUNTIME", "POP_CROSSING_PENDING"] {
        let (a, b) = (address_of(x86, path), address_of(arm, path));
        assert!(a.is_some() && a == b, "asyncdemo: {path}: {a:x?} / {b:x?}");
    }
}

#[test]
fn pairs_that_do_not_line_up_are_refused_with_what_differs_named() {
    let pairs = pairs();
    let dir = std::env::temp_dir().join(format!("pop-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Two programs' images: the same std, at other addresses.
    let why = misaligned(verify(&pairs["hello"][0], &pairs["primesum"][1]));
    assert!(why.contains("` (.text) is at 0x"), "{why}");
    assert!(why.contains("on x86_64 and 0x"), "{why}");

    // The order of the arguments does not matter to `verify_either`, but it does to
    // `verify`.
    verify_either(&pairs["hello"][1], &pairs["hello"][0]).unwrap();
    let why = misaligned(verify(&pairs["hello"][1], &pairs["hello"][0]));
    assert!(
        why.contains("expected an x86-64 image, then an aarch64 image"),
        "{why}"
    );

    // One byte of a paired constant changed.
    let arm = &pairs["hello"][1];
    let copy = dir.join("hello");
    std::fs::copy(arm, &copy).unwrap();
    std::fs::copy(map_of(arm), map_of(&copy)).unwrap();
    let mut data = std::fs::read(&copy).unwrap();
    let (offset, addr) = {
        let elf = Elf::parse(&data).unwrap();
        let start = elf
            .syms
            .iter()
            .find(|s| elf.strtab.get_at(s.st_name) == Some("__pop_aligned_rodata_start"))
            .unwrap()
            .st_value;
        let sh = elf
            .section_headers
            .iter()
            .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(".rodata"))
            .unwrap();
        ((sh.sh_offset + start - sh.sh_addr) as usize + 3, start + 3)
    };
    data[offset] ^= 0x40;
    std::fs::write(&copy, &data).unwrap();
    let why = misaligned(verify(&pairs["hello"][0], &copy));
    assert!(
        why.contains(&format!("paired .rodata bytes differ at {addr:#x}")),
        "{why}"
    );

    // An image linked without alignment (a single-ISA build's) is named as such.
    let natural = dir.join("natural");
    let record =
        std::fs::read_dir(repo::default_root().join("target/pop/x86_64-unknown-hermit/links"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("hello-")
            })
            .expect("the recorded link of hello");
    std::fs::copy(record.join("natural.elf"), &natural).unwrap();
    std::fs::copy(record.join("natural.map"), map_of(&natural)).unwrap();
    let why = misaligned(verify(&natural, &pairs["hello"][1]));
    assert!(why.contains("the x86_64 image is not aligned"), "{why}");

    // From the command line: one line, exit status 1.
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-pop"))
        .args(["pop", "verify"])
        .arg(&pairs["hello"][0])
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("cargo-pop: error: the image pair is not aligned: "),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn each_hazard_class_is_refused_with_the_type_named() {
    let options = BuildOptions {
        arch: ArchSelection::All,
        manifest_path: Some(repo::default_root().join("images/Cargo.toml")),
        packages: vec!["hazards".into(), "hello".into()],
        ..BuildOptions::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build --arch all (dev)");
    let find = |name: &str, arch: &str| {
        images
            .iter()
            .find(|p| p.ends_with(format!("{arch}-unknown-hermit/debug/{name}")))
            .unwrap_or_else(|| panic!("{name} for {arch} not built: {images:?}"))
            .clone()
    };
    // The pair lines up: it is only its types that cannot cross.
    let report = verify(&find("hazards", "x86_64"), &find("hazards", "aarch64")).unwrap();
    assert!(
        report.types_described && report.types_compared > 1000,
        "{report}"
    );
    let why = match report.crossable() {
        Err(Error::CannotCross(why)) => why,
        other => panic!("expected hazards, got {other:?}"),
    };
    for named in [
        // cfg(target_arch): another layout.
        "type `hazards::PerIsa` differs: 32 bytes on x86_64, 16 on aarch64",
        // std's HashMap in a static, and a HashSet kept across an await.
        "`hazards::TABLE` holds `Mutex<core::option::Option<std::collections::hash::map::HashMap<u32, u32",
        "`hazards::keeps::{async_fn_env#0}.set` holds `HashSet<u8",
        "hashbrown) probes in 16-byte groups on x86_64 and 8-byte groups on aarch64",
        // A 128-bit atomic where aarch64 has one, a lock on x86-64.
        "`hazards::Wide.count` holds `Atomic<u128>`: 128-bit atomics are native on aarch64 only",
        "type `hazards::Wide` differs",
    ] {
        assert!(why.contains(named), "{named} missing from: {why}");
    }
    // A static whose initial value differs by ISA is not paired: each image keeps its own,
    // in its own range (so the pair still verifies).
    let (a, b) = (
        address_of(&find("hazards", "x86_64"), "hazards::ISA_ID"),
        address_of(&find("hazards", "aarch64"), "hazards::ISA_ID"),
    );
    assert!(a.is_some() && b.is_some() && a != b, "{a:x?} / {b:x?}");
    // The build wrote the same beside the x86-64 image, for a crossing to refuse.
    let written =
        std::fs::read_to_string(pop_toolchain::align::hazards_of(&find("hazards", "x86_64")))
            .unwrap();
    assert_eq!(
        written.lines().count(),
        report.refusals().len(),
        "{written}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-pop"))
        .args(["verify"])
        .arg(find("hazards", "aarch64"))
        .arg(find("hazards", "x86_64"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("cargo-pop: error: the image pair cannot cross ISAs: "),
        "{err}"
    );

    // hello holds none of these: with types described, it can cross, and the command line
    // says so in one line.
    let hello = verify(&find("hello", "x86_64"), &find("hello", "aarch64")).unwrap();
    hello.crossable().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cargo-pop"))
        .args(["verify"])
        .arg(find("hello", "x86_64"))
        .arg(find("hello", "aarch64"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("aligned: ") && text.contains("types compared"),
        "{text}"
    );
    assert!(
        std::fs::read_to_string(pop_toolchain::align::hazards_of(&find("hello", "x86_64")))
            .unwrap()
            .is_empty()
    );
    // Release images without type information cannot be checked, so they cannot cross.
    let pairs = pairs();
    let release = verify(&pairs["hello"][0], &pairs["hello"][1]).unwrap();
    let why = format!("{:?}", release.crossable());
    assert!(why.contains("no type information"), "{why}");
}
