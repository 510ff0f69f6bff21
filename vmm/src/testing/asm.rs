//! A tiny x86-64 assembler for hand-written test guests.

use pop_abi::layout::IMAGE_BASE;

/// 64-bit general-purpose registers, by hardware number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
}

/// Argument registers of a hypercall, in order.
pub const ARGS: [Reg; 5] = [Reg::Rdi, Reg::Rsi, Reg::Rdx, Reg::R10, Reg::R8];

/// Machine code being assembled at [`IMAGE_BASE`].
#[derive(Default)]
pub struct Asm {
    /// The machine code so far.
    pub code: Vec<u8>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Asm {
        Asm::default()
    }

    /// Guest address of the next instruction.
    pub fn here(&self) -> u64 {
        IMAGE_BASE + self.code.len() as u64
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.code.extend_from_slice(b);
        self
    }

    /// `mov reg, imm64`
    pub fn mov_imm(&mut self, reg: Reg, imm: u64) -> &mut Self {
        let r = reg as u8;
        self.bytes(&[0x48 | (r >> 3), 0xb8 + (r & 7)])
            .bytes(&imm.to_le_bytes())
    }

    /// `mov dst, src`
    pub fn mov(&mut self, dst: Reg, src: Reg) -> &mut Self {
        let (d, s) = (dst as u8, src as u8);
        self.bytes(&[
            0x48 | ((s >> 3) << 2) | (d >> 3),
            0x89,
            0xc0 | ((s & 7) << 3) | (d & 7),
        ])
    }

    /// `mov rax, [addr]` (addr below 2 GiB)
    pub fn load_rax(&mut self, addr: u32) -> &mut Self {
        self.bytes(&[0x48, 0x8b, 0x04, 0x25])
            .bytes(&addr.to_le_bytes())
    }

    /// `mov [addr], rax` (addr below 2 GiB)
    pub fn store_rax(&mut self, addr: u32) -> &mut Self {
        self.bytes(&[0x48, 0x89, 0x04, 0x25])
            .bytes(&addr.to_le_bytes())
    }

    /// `mov rax, fs:[0]`
    pub fn load_rax_fs0(&mut self) -> &mut Self {
        self.bytes(&[0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0])
    }

    /// `mov rax, gs:[offset]`
    pub fn load_rax_gs(&mut self, offset: u32) -> &mut Self {
        self.bytes(&[0x65, 0x48, 0x8b, 0x04, 0x25])
            .bytes(&offset.to_le_bytes())
    }

    /// A hypercall with immediate arguments; the result is in rax.
    pub fn hypercall(&mut self, nr: u16, args: &[u64]) -> &mut Self {
        for (reg, value) in ARGS.iter().zip(args) {
            self.mov_imm(*reg, *value);
        }
        self.trap(nr)
    }

    /// `mov r11, HYPERCALL_MMIO_ADDR + 8 * nr; mov [r11], rax`: issues hypercall `nr` with
    /// the argument registers as they are.
    pub fn trap(&mut self, nr: u16) -> &mut Self {
        let slot = pop_abi::layout::HYPERCALL_MMIO_ADDR + 8 * u64::from(nr);
        self.mov_imm(Reg::R11, slot).bytes(&[0x49, 0x89, 0x03])
    }

    /// `write(fd, addr, len)`
    pub fn write(&mut self, fd: u64, addr: u64, len: u64) -> &mut Self {
        self.hypercall(pop_abi::Hypercall::Write as u16, &[fd, addr, len])
    }

    /// `exit(status)`
    pub fn exit(&mut self, status: u64) -> &mut Self {
        self.hypercall(pop_abi::Hypercall::Exit as u16, &[status])
    }

    /// Pads with `int3` up to `offset` from the image base.
    pub fn pad_to(&mut self, offset: usize) -> &mut Self {
        assert!(self.code.len() <= offset, "code too long");
        self.code.resize(offset, 0xcc);
        self
    }
}
