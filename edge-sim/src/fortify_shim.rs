//! A one-function aarch64 ELF object, written byte by byte: `__fprintf_chk`, which Debian's
//! arm64 `libunwind.a` (built against glibc with `_FORTIFY_SOURCE`) calls for its error
//! messages and musl lacks. It drops the `flag` argument and tail-calls `fprintf`:
//! `__fprintf_chk(file, flag, fmt, ...)` -> `fprintf(file, fmt, ...)` (the variadic arguments
//! in x3..x7 move down one register; libunwind's messages pass no more than that).

/// The object file's bytes.
pub fn object() -> Vec<u8> {
    // ORR Xd, XZR, Xm (mov xd, xm) for x1..x6 <- x2..x7, then B fprintf.
    let mut text = Vec::new();
    for d in 1u32..=6 {
        let insn = 0xAA00_03E0 | ((d + 1) << 16) | d;
        text.extend_from_slice(&insn.to_le_bytes());
    }
    let branch_at = text.len() as u64;
    text.extend_from_slice(&0x1400_0000u32.to_le_bytes());

    let strtab = b"\0__fprintf_chk\0fprintf\0";
    let shstrtab = b"\0.text\0.rela.text\0.symtab\0.strtab\0.shstrtab\0.note.GNU-stack\0";
    let name = |table: &[u8], s: &str| -> u32 {
        let needle: Vec<u8> = [s.as_bytes(), b"\0"].concat();
        table
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .map(|p| p as u32)
            .expect("name in table")
    };

    // Symbols: null, __fprintf_chk (global function in .text), fprintf (undefined).
    let mut symtab = vec![0u8; 24];
    symtab.extend(symbol(
        name(strtab, "__fprintf_chk"),
        0x12,
        1,
        text.len() as u64,
    ));
    symtab.extend(symbol(name(strtab, "fprintf"), 0x10, 0, 0));
    // R_AARCH64_JUMP26 (282) at the branch, against symbol 2.
    let mut rela = Vec::new();
    rela.extend_from_slice(&branch_at.to_le_bytes());
    rela.extend_from_slice(&((2u64 << 32) | 282).to_le_bytes());
    rela.extend_from_slice(&0i64.to_le_bytes());

    let mut out = vec![0u8; 64];
    let mut place = |data: &[u8], align: usize| -> u64 {
        while !out.len().is_multiple_of(align) {
            out.push(0);
        }
        let at = out.len() as u64;
        out.extend_from_slice(data);
        at
    };
    let text_off = place(&text, 4);
    let rela_off = place(&rela, 8);
    let sym_off = place(&symtab, 8);
    let str_off = place(strtab, 1);
    let shstr_off = place(shstrtab, 1);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let sh_off = out.len() as u64;
    let sections: [[u64; 10]; 7] = [
        [0; 10],
        // name, type, flags, addr, offset, size, link, info, align, entsize
        [
            name(shstrtab, ".text") as u64,
            1,
            0x6,
            0,
            text_off,
            text.len() as u64,
            0,
            0,
            4,
            0,
        ],
        [
            name(shstrtab, ".rela.text") as u64,
            4,
            0x40,
            0,
            rela_off,
            24,
            3,
            1,
            8,
            24,
        ],
        [
            name(shstrtab, ".symtab") as u64,
            2,
            0,
            0,
            sym_off,
            symtab.len() as u64,
            4,
            1,
            8,
            24,
        ],
        [
            name(shstrtab, ".strtab") as u64,
            3,
            0,
            0,
            str_off,
            strtab.len() as u64,
            0,
            0,
            1,
            0,
        ],
        [
            name(shstrtab, ".shstrtab") as u64,
            3,
            0,
            0,
            shstr_off,
            shstrtab.len() as u64,
            0,
            0,
            1,
            0,
        ],
        [
            name(shstrtab, ".note.GNU-stack") as u64,
            1,
            0,
            0,
            shstr_off,
            0,
            0,
            0,
            1,
            0,
        ],
    ];
    for s in sections {
        out.extend_from_slice(&(s[0] as u32).to_le_bytes());
        out.extend_from_slice(&(s[1] as u32).to_le_bytes());
        for v in &s[2..6] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(s[6] as u32).to_le_bytes());
        out.extend_from_slice(&(s[7] as u32).to_le_bytes());
        out.extend_from_slice(&s[8].to_le_bytes());
        out.extend_from_slice(&s[9].to_le_bytes());
    }

    // The ELF header: 64-bit, little-endian, relocatable, AArch64 (183).
    let mut header = Vec::with_capacity(64);
    header.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    header.extend_from_slice(&[0; 8]);
    header.extend_from_slice(&1u16.to_le_bytes()); // ET_REL
    header.extend_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&0u64.to_le_bytes()); // entry
    header.extend_from_slice(&0u64.to_le_bytes()); // phoff
    header.extend_from_slice(&sh_off.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // flags
    header.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    header.extend_from_slice(&0u16.to_le_bytes()); // phentsize
    header.extend_from_slice(&0u16.to_le_bytes()); // phnum
    header.extend_from_slice(&64u16.to_le_bytes()); // shentsize
    header.extend_from_slice(&(sections.len() as u16).to_le_bytes());
    header.extend_from_slice(&5u16.to_le_bytes()); // shstrndx
    out[..64].copy_from_slice(&header);
    out
}

fn symbol(name: u32, info: u8, shndx: u16, size: u64) -> Vec<u8> {
    let mut s = Vec::with_capacity(24);
    s.extend_from_slice(&name.to_le_bytes());
    s.push(info);
    s.push(0);
    s.extend_from_slice(&shndx.to_le_bytes());
    s.extend_from_slice(&0u64.to_le_bytes());
    s.extend_from_slice(&size.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_an_aarch64_relocatable() {
        let obj = super::object();
        assert_eq!(&obj[..4], b"\x7fELF");
        assert_eq!(u16::from_le_bytes([obj[16], obj[17]]), 1);
        assert_eq!(u16::from_le_bytes([obj[18], obj[19]]), 183);
        // mov x1, x2 is the first instruction.
        assert_eq!(&obj[64..68], &0xAA02_03E1u32.to_le_bytes());
    }
}
