//! The guest/host contract between the pop library OS (`libos`) and the VMM (`popvmm`).
//!
//! Everything both sides must agree on lives here and nowhere else: the guest memory map,
//! the boot information the VMM hands to the guest, the hypercall numbers and their
//! register conventions, the structures passed through guest memory, and the ABI version.
//!
//! The crate is `no_std`, has no dependencies and only plain `#[repr(C)]` data, so that it
//! can be compiled into the guest (for the hermit targets) and into the host VMM alike.
//! Any change to a layout or a number here must bump [`ABI_VERSION`].
#![no_std]

pub mod errno;
pub mod hypercall;
pub mod layout;

pub use hypercall::Hypercall;

/// Version of this contract. The VMM refuses an image whose [`AbiNote`] carries another one.
pub const ABI_VERSION: u32 = 5;

/// Magic bytes at the start of [`AbiNote`].
pub const ABI_MAGIC: [u8; 8] = *b"POPLIBOS";

/// Name of the ELF section in which the libos places its [`AbiNote`]. An image without it was
/// not linked with the libos and is refused by the VMM.
pub const ABI_SECTION: &str = ".pop_abi";

/// An instruction set: the one type for it in the whole project (images, cluster files, VM
/// states). Its number ([`Isa::abi`]) is what [`AbiNote::arch`] and saved states carry.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 (long mode).
    X86_64 = 1,
    /// AArch64 (EL1).
    Aarch64 = 2,
}

impl Isa {
    /// Every ISA.
    pub const ALL: [Isa; 2] = [Isa::X86_64, Isa::Aarch64];

    /// The ISA this code was compiled for.
    #[cfg(target_arch = "aarch64")]
    pub const NATIVE: Isa = Isa::Aarch64;
    /// The ISA this code was compiled for.
    #[cfg(not(target_arch = "aarch64"))]
    pub const NATIVE: Isa = Isa::X86_64;

    /// Its number in [`AbiNote::arch`] and on the wire.
    pub const fn abi(self) -> u32 {
        self as u32
    }

    /// The ISA numbered `n`, if there is one.
    pub fn from_abi(n: u32) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.abi() == n)
    }

    /// `x86_64` or `aarch64` (as Rust's `target_arch`, and in cluster files).
    pub const fn name(self) -> &'static str {
        match self {
            Isa::X86_64 => "x86_64",
            Isa::Aarch64 => "aarch64",
        }
    }

    /// The ISA called `name` (see [`Isa::name`]).
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl core::fmt::Display for Isa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The marker the libos links into every image (section [`ABI_SECTION`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiNote {
    /// Always [`ABI_MAGIC`].
    pub magic: [u8; 8],
    /// The [`ABI_VERSION`] the libos was built with.
    pub version: u32,
    /// The architecture the libos was built for (one of [`arch`]).
    pub arch: u32,
}

impl AbiNote {
    /// Size in bytes of the note as stored in the image.
    pub const SIZE: usize = core::mem::size_of::<AbiNote>();

    /// Decodes a note from the raw bytes of the [`ABI_SECTION`] section.
    pub fn from_bytes(bytes: &[u8]) -> Option<AbiNote> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[0..8]);
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let arch = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        Some(AbiNote {
            magic,
            version,
            arch,
        })
    }
}

/// Magic value at the start of [`BootInfo`].
pub const BOOT_INFO_MAGIC: u64 = 0x504f_5042_4f4f_5431; // "POPBOOT1"

/// What the VMM tells the guest at boot. Written by the VMM at [`layout::BOOT_INFO_ADDR`]
/// (node-private memory) before the first vCPU runs; read-only for the guest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// Always [`BOOT_INFO_MAGIC`].
    pub magic: u64,
    /// The [`ABI_VERSION`] the VMM speaks.
    pub abi_version: u32,
    /// This node's id in its cluster (0 when running alone).
    pub node_id: u32,
    /// Number of program arguments (including the program name).
    pub argc: u64,
    /// Guest address of the NULL-terminated `argv` array of C strings.
    pub argv: u64,
    /// Guest address of the NULL-terminated `envp` array of `KEY=VALUE` C strings.
    pub envp: u64,
    /// First byte of application-writable (shareable) memory: [`layout::SHARED_BASE`].
    pub shared_start: u64,
    /// One past the last byte of application-writable memory.
    pub shared_end: u64,
    /// First byte of the heap: the first page after the image's writable segments.
    pub heap_start: u64,
    /// One past the last byte of the heap (equal to `shared_end`).
    pub heap_end: u64,
    /// Guest address of the TLS initialisation image (`PT_TLS` `p_vaddr`), 0 if none.
    pub tls_image: u64,
    /// Bytes of initialised TLS data (`p_filesz`).
    pub tls_filesz: u64,
    /// Total bytes of the TLS block (`p_memsz`).
    pub tls_memsz: u64,
    /// Required alignment of the TLS block (`p_align`, at least 1).
    pub tls_align: u64,
    /// Frequency of the guest's counter in kHz (x86-64: TSC; aarch64: CNTVCT).
    pub counter_khz: u64,
    /// Guest counter value at the reference instant.
    pub boot_counter: u64,
    /// Host `CLOCK_REALTIME` in nanoseconds at the reference instant.
    pub boot_realtime_ns: u64,
    /// Host `CLOCK_MONOTONIC` in nanoseconds at the reference instant.
    pub boot_monotonic_ns: u64,
    /// What `available_parallelism` reports (at least 1).
    pub parallelism: u32,
    /// Most vCPUs (threads, main included) the VMM will run at once.
    pub max_vcpus: u32,
    /// The process id the application sees.
    pub pid: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// Most nodes a cluster has (and [`crate::Hypercall::Nodes`] reports).
pub const MAX_NODES: usize = 64;

/// One node of the cluster as [`crate::Hypercall::Nodes`] reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's id.
    pub id: u32,
    /// Its ISA ([`Isa::abi`]).
    pub isa: u32,
    /// 1 if it is up (reachable from the VM's node, or that node itself), else 0.
    pub up: u32,
}

/// Per-vCPU data of the libos, at [`layout::percpu_data`] for vCPU `i`. The VMM points the
/// vCPU's thread-pointer-independent base register at it (x86-64: `GS.base`) and fills in the
/// identity fields each time it starts a thread on that vCPU. Node-private memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerCpu {
    /// Guest address of this structure (so `gs:[0]` yields a pointer).
    pub self_addr: u64,
    /// Index of the vCPU (0 for the main thread's vCPU).
    pub vcpu_id: u32,
    /// Id of the thread currently running on the vCPU (main thread: 1).
    pub tid: u32,
}

/// `struct stat` as the hermit targets' std expects it (`hermit_abi::stat`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Device id.
    pub st_dev: u64,
    /// Inode number.
    pub st_ino: u64,
    /// Number of hard links.
    pub st_nlink: u64,
    /// File type and permission bits (`S_IF*` | mode).
    pub st_mode: u32,
    /// Owner user id.
    pub st_uid: u32,
    /// Owner group id.
    pub st_gid: u32,
    /// Device id for special files.
    pub st_rdev: u64,
    /// Size in bytes.
    pub st_size: i64,
    /// Preferred I/O block size.
    pub st_blksize: i64,
    /// Number of 512-byte blocks.
    pub st_blocks: i64,
    /// Last access time.
    pub st_atim: Timespec,
    /// Last modification time.
    pub st_mtim: Timespec,
    /// Last status change time.
    pub st_ctim: Timespec,
}

/// `struct timespec` of the hermit targets (`hermit_abi::timespec`: 32-bit nanoseconds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timespec {
    /// Seconds.
    pub tv_sec: i64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub tv_nsec: i32,
}

/// File type bits of [`Stat::st_mode`] (the values of `hermit_abi`).
pub mod mode {
    /// Mask of the file type bits.
    pub const S_IFMT: u32 = 0o17_0000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o4_0000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o10_0000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o12_0000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o2_0000;
    /// FIFO.
    pub const S_IFIFO: u32 = 0o1_0000;
}

/// `open` flags as the hermit targets' std passes them (the values of `hermit_abi`).
pub mod open_flags {
    /// Open for reading only.
    pub const O_RDONLY: i32 = 0o0;
    /// Open for writing only.
    pub const O_WRONLY: i32 = 0o1;
    /// Open for reading and writing.
    pub const O_RDWR: i32 = 0o2;
    /// Mask of the access mode.
    pub const O_ACCMODE: i32 = 0o3;
    /// Create the file if it does not exist.
    pub const O_CREAT: i32 = 0o100;
    /// With `O_CREAT`: fail if the file exists.
    pub const O_EXCL: i32 = 0o200;
    /// Truncate to zero length.
    pub const O_TRUNC: i32 = 0o1000;
    /// Writes append.
    pub const O_APPEND: i32 = 0o2000;
    /// Non-blocking I/O (ignored for files).
    pub const O_NONBLOCK: i32 = 0o4000;
    /// Fail unless the path is a directory.
    pub const O_DIRECTORY: i32 = 0o200000;
}

/// `lseek` whence values.
pub mod whence {
    /// From the start of the file.
    pub const SEEK_SET: i32 = 0;
    /// From the current position.
    pub const SEEK_CUR: i32 = 1;
    /// From the end of the file.
    pub const SEEK_END: i32 = 2;
}

/// Layout of one `dirent64` record as written by [`Hypercall::Getdents64`]:
/// `d_ino: u64` at 0, `d_off: i64` at 8, `d_reclen: u16` at 16, `d_type: u8` at 18, the
/// NUL-terminated name at [`dirent::NAME_OFFSET`]; records are 8-byte aligned.
pub mod dirent {
    /// Offset of `d_name` within a record.
    pub const NAME_OFFSET: usize = 19;
    /// Record alignment.
    pub const ALIGN: usize = 8;
    /// Unknown file type.
    pub const DT_UNKNOWN: u8 = 0;
    /// Directory.
    pub const DT_DIR: u8 = 4;
    /// Regular file.
    pub const DT_REG: u8 = 8;
    /// Symbolic link.
    pub const DT_LNK: u8 = 10;

    /// Length of the record holding a name of `name_len` bytes (NUL and padding included).
    pub const fn record_len(name_len: usize) -> usize {
        (NAME_OFFSET + name_len + 1 + ALIGN - 1) & !(ALIGN - 1)
    }
}

/// Register state saved by the libos's exception entry on x86-64, handed to the VMM by
/// [`Hypercall::Fault`]. Lowest address first: the general registers pushed by the entry
/// stub, the vector and error code, then the frame the CPU pushed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct X86FaultFrame {
    /// r15 at the fault.
    pub r15: u64,
    /// r14 at the fault.
    pub r14: u64,
    /// r13 at the fault.
    pub r13: u64,
    /// r12 at the fault.
    pub r12: u64,
    /// r11 at the fault.
    pub r11: u64,
    /// r10 at the fault.
    pub r10: u64,
    /// r9 at the fault.
    pub r9: u64,
    /// r8 at the fault.
    pub r8: u64,
    /// rbp at the fault.
    pub rbp: u64,
    /// rdi at the fault.
    pub rdi: u64,
    /// rsi at the fault.
    pub rsi: u64,
    /// rdx at the fault.
    pub rdx: u64,
    /// rcx at the fault.
    pub rcx: u64,
    /// rbx at the fault.
    pub rbx: u64,
    /// rax at the fault.
    pub rax: u64,
    /// Exception vector (0..32).
    pub vector: u64,
    /// Error code (0 for vectors without one).
    pub error_code: u64,
    /// Faulting instruction pointer.
    pub rip: u64,
    /// Code segment.
    pub cs: u64,
    /// Flags.
    pub rflags: u64,
    /// Stack pointer at the fault.
    pub rsp: u64,
    /// Stack segment.
    pub ss: u64,
}

/// Register state saved by the libos's exception vectors on aarch64, handed to the VMM by
/// [`Hypercall::Fault`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aarch64FaultFrame {
    /// x0 to x30 at the exception (x29 is the frame pointer, x30 the link register).
    pub x: [u64; 31],
    /// The interrupted code's stack pointer (`SP_EL0`).
    pub sp: u64,
    /// `ELR_EL1`: where the exception was taken.
    pub elr: u64,
    /// `SPSR_EL1`: the interrupted processor state.
    pub spsr: u64,
    /// `ESR_EL1`: the exception syndrome.
    pub esr: u64,
    /// `FAR_EL1`: the faulting address (data and instruction aborts).
    pub far: u64,
    /// Which vector: 0 synchronous, 1 IRQ, 2 FIQ, 3 SError, plus 4 times the source group
    /// (0 current EL with SP_EL0, 1 current EL with SP_ELx, 2 lower EL AArch64, 3 AArch32).
    pub kind: u64,
}

/// Exit status of `popvmm launch` when the guest aborts (`abort`, a panic): as a shell
/// reports a process killed by SIGABRT.
pub const EXIT_ABORT: i32 = 134;
/// Exit status of `popvmm launch` when the guest faults (page fault, invalid opcode, ...): as a
/// shell reports a process killed by SIGSEGV.
pub const EXIT_FAULT: i32 = 139;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_hermit_abi() {
        assert_eq!(core::mem::size_of::<Timespec>(), 16);
        assert_eq!(core::mem::size_of::<Stat>(), 120);
        assert_eq!(core::mem::size_of::<X86FaultFrame>(), 22 * 8);
        assert_eq!(core::mem::size_of::<Aarch64FaultFrame>(), 37 * 8);
        assert_eq!(core::mem::size_of::<hypercall::HypercallBlock>(), 6 * 8);
        assert_eq!(dirent::record_len(1), 24);
        assert_eq!(dirent::record_len(5), 32);
    }

    #[test]
    fn note_round_trips() {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&ABI_MAGIC);
        raw[8..12].copy_from_slice(&ABI_VERSION.to_le_bytes());
        raw[12..16].copy_from_slice(&Isa::X86_64.abi().to_le_bytes());
        let note = AbiNote::from_bytes(&raw).unwrap();
        assert_eq!(note.version, ABI_VERSION);
        assert_eq!(Isa::from_abi(note.arch), Some(Isa::X86_64));
        assert_eq!(Isa::from_name("aarch64"), Some(Isa::Aarch64));
        assert_eq!(Isa::from_abi(0), None);
        assert!(AbiNote::from_bytes(&raw[..15]).is_none());
    }
}
