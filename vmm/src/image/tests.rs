use super::*;
use crate::testing::{ElfBuilder, abi_note_bytes};
use goblin::elf::header::{EM_386, EM_AARCH64, ET_REL};
use goblin::elf::program_header::PF_R;

fn parse(bytes: Vec<u8>) -> Result<Image, ImageError> {
    Image::parse("app".into(), Arc::new(bytes.into()))
}

fn message(bytes: Vec<u8>) -> String {
    parse(bytes).unwrap_err().to_string()
}

/// A well-formed image: code, read-only data, writable data with bss, and TLS.
fn good() -> ElfBuilder {
    ElfBuilder::new()
        .code(&[0xf4; 64])
        .segment(PT_LOAD, PF_R, 0x60_0000, b"rodata", 6)
        .segment(PT_LOAD, PF_R | PF_W, SHARED_BASE, &[1, 2, 3], 0x1_0000)
        .segment(PT_TLS, PF_R, 0x60_0000, b"ro", 16)
        .abi_note()
}

#[test]
fn accepts_a_well_formed_image() {
    let image = parse(good().build()).unwrap();
    assert_eq!(image.entry, IMAGE_BASE);
    assert_eq!(image.segments.len(), 3);
    assert_eq!(image.private_size(), 8 << 20);
    assert_eq!(image.heap_start(), SHARED_BASE + 0x1_0000);
    assert_eq!(
        image.tls,
        Some(Tls {
            vaddr: 0x60_0000,
            filesz: 2,
            memsz: 16,
            align: 0x1000
        })
    );
    assert!(image.check_fits(16 << 20).is_ok());
}

#[test]
fn rejects_garbage_and_foreign_elves() {
    assert_eq!(
        message(b"hello world, not an elf".to_vec()),
        "app is not an ELF file"
    );
    assert_eq!(message(Vec::new()), "app is not an ELF file");
    assert_eq!(
        message(good().machine(EM_AARCH64).build()),
        "app is an aarch64 ELF; this popvmm runs x86_64 images"
    );
    assert!(message(good().machine(EM_386).build()).starts_with("app is an x86 (32-bit) ELF"));
    assert!(message(good().kind(ET_REL).build()).contains("not an executable"));
    let mut truncated = good().build();
    truncated.truncate(70);
    assert!(message(truncated).starts_with("app is not a valid ELF file"));
}

#[test]
fn rejects_images_without_the_libos() {
    let no_note = ElfBuilder::new().code(&[0xf4]).build();
    let msg = message(no_note);
    assert!(
        msg.contains("no .pop_abi section") && msg.contains("cargo pop build"),
        "{msg}"
    );

    let with = |note: Vec<u8>| {
        message(
            ElfBuilder::new()
                .code(&[0xf4])
                .section(ABI_SECTION, &note)
                .build(),
        )
    };
    assert!(
        with(abi_note_bytes(
            b"NOTPOPOS",
            ABI_VERSION,
            pop_abi::Isa::NATIVE.abi()
        ))
        .contains("magic")
    );
    assert!(
        with(abi_note_bytes(
            &ABI_MAGIC,
            ABI_VERSION + 1,
            pop_abi::Isa::NATIVE.abi()
        ))
        .contains(&format!("version {}", ABI_VERSION + 1))
    );
    assert!(
        with(abi_note_bytes(
            &ABI_MAGIC,
            ABI_VERSION,
            pop_abi::Isa::Aarch64.abi()
        ))
        .contains("built for aarch64")
    );
    assert!(with(vec![1, 2, 3]).contains("truncated"));
}

#[test]
fn the_host_true_is_an_elf_without_the_libos() {
    let bytes = std::fs::read("/bin/true").unwrap();
    let msg = message(bytes);
    assert!(msg.contains("not linked with the pop libos"), "{msg}");
}

#[test]
fn rejects_segments_outside_the_memory_map() {
    let low = ElfBuilder::new()
        .code(&[0xf4])
        .segment(PT_LOAD, PF_R, 0x1000, b"x", 1)
        .abi_note();
    assert!(message(low.build()).contains("below the image base"));
    let writable_private = ElfBuilder::new()
        .code(&[0xf4])
        .segment(PT_LOAD, PF_R | PF_W, 0x80_0000, b"x", 1)
        .abi_note();
    assert!(message(writable_private.build()).contains("outside application memory"));
    let high_ro = ElfBuilder::new()
        .code(&[0xf4])
        .segment(PT_LOAD, PF_R, SHARED_BASE, b"x", 1)
        .abi_note();
    assert!(message(high_ro.build()).contains("private memory limit"));
    let bad_entry = good().entry(0x60_0000);
    assert!(message(bad_entry.build()).contains("entry point"));
    let huge = ElfBuilder::new()
        .code(&[0xf4])
        .segment(PT_LOAD, PF_R, 0x50_0000, b"x", u64::MAX)
        .abi_note();
    assert!(message(huge.build()).starts_with("app is not a valid ELF file"));
}

#[test]
fn memory_must_hold_data_heap_and_stack() {
    let big_bss = ElfBuilder::new()
        .code(&[0xf4])
        .segment(PT_LOAD, PF_R | PF_W, SHARED_BASE, b"", 20 << 20)
        .abi_note();
    let image = parse(big_bss.build()).unwrap();
    let err = image.check_fits(16 << 20).unwrap_err().to_string();
    assert_eq!(
        err,
        "--memory 16 MiB is too small for app: it needs at least 29 MiB (20 MiB of writable segments + 1 MiB heap + 8 MiB main stack)"
    );
    assert!(image.check_fits(30 << 20).is_ok());
}

#[test]
fn raw_code_images_start_at_the_image_base() {
    let image = Image::raw_code(&[0x90, 0xf4]);
    assert_eq!(image.entry, IMAGE_BASE);
    assert_eq!(image.private_size(), 6 << 20);
    assert_eq!(image.heap_start(), SHARED_BASE);
}
