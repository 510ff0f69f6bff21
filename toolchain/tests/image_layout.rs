//! Builds `images/hello` with the library API and checks that the image has the layout of
//! `pop-abi`'s memory map. Needs the libos to build (it compiles std for the hermit target,
//! about a minute from cold).

use goblin::elf::{Elf, header, program_header as ph};
use pop_abi::layout::{IMAGE_BASE, PAGE_SIZE, PRIVATE_LIMIT, SHARED_BASE};
use pop_toolchain::{BuildOptions, repo};

fn build_hello() -> Vec<u8> {
    let root = repo::default_root();
    let options = BuildOptions {
        packages: vec!["hello".into()],
        manifest_path: Some(root.join("images/Cargo.toml")),
        ..BuildOptions::default()
    };
    let images = pop_toolchain::build(&options).expect("cargo pop build of images/hello");
    assert_eq!(images.len(), 1, "{images:?}");
    assert!(
        images[0].ends_with("x86_64-unknown-hermit/debug/hello"),
        "{images:?}"
    );
    std::fs::read(&images[0]).unwrap()
}

fn symbol(elf: &Elf, name: &str) -> Option<u64> {
    elf.syms
        .iter()
        .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
        .map(|s| s.st_value)
}

#[test]
fn hello_image_follows_the_memory_map() {
    let bytes = build_hello();
    let elf = Elf::parse(&bytes).unwrap();
    assert_eq!(elf.header.e_type, header::ET_EXEC, "static, not PIE");
    assert_eq!(elf.header.e_machine, header::EM_X86_64);
    assert_eq!(Some(elf.entry), symbol(&elf, "_start"));
    assert_eq!(elf.entry, IMAGE_BASE, "_start comes first");

    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == ph::PT_LOAD)
        .collect();
    assert_eq!(loads.len(), 3, "text, rodata, data");
    let (text, rodata, data) = (loads[0], loads[1], loads[2]);
    assert_eq!(
        (text.p_vaddr, text.p_flags),
        (IMAGE_BASE, ph::PF_R | ph::PF_X)
    );
    assert_eq!(rodata.p_flags, ph::PF_R);
    assert!(rodata.p_vaddr + rodata.p_memsz <= PRIVATE_LIMIT);
    assert_eq!(
        (data.p_vaddr, data.p_flags),
        (SHARED_BASE, ph::PF_R | ph::PF_W)
    );
    for load in &loads {
        let writable = load.p_flags & ph::PF_W != 0;
        assert_eq!(writable, load.p_vaddr >= SHARED_BASE, "{load:?}");
    }

    let tls = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == ph::PT_TLS)
        .expect("a PT_TLS segment");
    assert!(tls.p_vaddr >= rodata.p_vaddr && tls.p_vaddr + tls.p_filesz <= PRIVATE_LIMIT);

    let data_start = symbol(&elf, "__pop_data_start").unwrap();
    let data_end = symbol(&elf, "__pop_data_end").unwrap();
    assert_eq!(data_start, SHARED_BASE);
    assert_eq!(data_end % PAGE_SIZE, 0);
    assert!(data_end >= data.p_vaddr + data.p_memsz);

    let note = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(pop_abi::ABI_SECTION))
        .expect("the libos's .pop_abi section survives --gc-sections");
    let start = note.sh_offset as usize;
    let note = pop_abi::AbiNote::from_bytes(&bytes[start..start + note.sh_size as usize])
        .expect("a whole AbiNote");
    assert_eq!(note.magic, pop_abi::ABI_MAGIC);
    assert_eq!(note.version, pop_abi::ABI_VERSION);
    assert_eq!(note.arch, pop_abi::Isa::X86_64.abi());

    for name in ["sys_write", "sys_exit", "runtime_entry", "pop_current_nid"] {
        assert!(symbol(&elf, name).is_some(), "{name} missing");
    }
}
