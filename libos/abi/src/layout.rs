//! The guest memory map. Guest virtual addresses equal guest physical addresses (identity
//! mapping) on every architecture, and application data sits at the same addresses on x86-64
//! and aarch64.
//!
//! ```text
//! 0x0000_0000  ..0x0000_1000   never mapped: a NULL dereference faults
//! 0x0000_1000  ..0x0001_0000   arch tables (x86-64: GDT, IDT)
//! 0x0000_3000                  BootInfo (one page)
//! 0x0000_4000  ..0x0001_0000   argv / envp strings and pointer arrays
//! 0x0001_0000  ..0x0009_0000   page tables, built by the VMM
//! 0x0010_0000  ..0x0030_0000   per-vCPU areas (TSS, PerCpu, exception stack), PERCPU_SIZE each
//! 0x0040_0000  ..              image: text, rodata, TLS template, relro (node-private, read-only)
//! 0x3000_0000                  hypercall page (mapped, never backed by memory)
//! 0x3fff_c000  ..0x4000_0000   x86-64: KVM's TSS pages (never backed by memory)
//! 0x4000_0000  ..SHARED_BASE+memory  application-writable: .data, .bss, heap (stacks, TLS)
//! ```
//!
//! Everything below [`SHARED_BASE`] is node-private; only `[SHARED_BASE, shared_end)` holds
//! application-writable state and is what the DSM shares between nodes.

/// Size of a base page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large page (x86-64 2 MiB page; aarch64 2 MiB block with a 4 KiB granule).
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;

/// x86-64: the GDT (null, code, data, then one 16-byte TSS descriptor per vCPU).
pub const GDT_ADDR: u64 = 0x1000;
/// x86-64: size reserved for the GDT.
pub const GDT_SIZE: u64 = 0x1000;
/// x86-64: the IDT (256 16-byte gates), filled by the libos at boot.
pub const IDT_ADDR: u64 = 0x2000;
/// x86-64: size of the IDT.
pub const IDT_SIZE: u64 = 0x1000;
/// The [`crate::BootInfo`].
pub const BOOT_INFO_ADDR: u64 = 0x3000;
/// argv and envp: strings and pointer arrays, written by the VMM.
pub const BOOT_ARGS_ADDR: u64 = 0x4000;
/// Bytes reserved for argv and envp.
pub const BOOT_ARGS_SIZE: u64 = 0xC000;
/// Page tables built by the VMM.
pub const PAGE_TABLES_ADDR: u64 = 0x1_0000;
/// Bytes reserved for page tables (128 tables).
pub const PAGE_TABLES_SIZE: u64 = 0x8_0000;
/// Start of the per-vCPU areas.
pub const PERCPU_ADDR: u64 = 0x10_0000;
/// Size of one per-vCPU area: the TSS at offset 0 (x86-64), the [`crate::PerCpu`] at
/// [`PERCPU_DATA_OFFSET`], and the exception stack growing down from the area's end.
pub const PERCPU_SIZE: u64 = 0x4000;
/// Offset of [`crate::PerCpu`] within a per-vCPU area.
pub const PERCPU_DATA_OFFSET: u64 = 0x100;
/// Most vCPUs a VM can have (threads that exist at once, main included).
pub const MAX_VCPUS: u32 = 128;
/// Where the linker places the image's first (text) segment.
pub const IMAGE_BASE: u64 = 0x40_0000;
/// The hypercall page: mapped in the guest's page tables but not backed by memory, so that
/// a store to it exits to the VMM (see [`crate::hypercall`]).
pub const HYPERCALL_MMIO_ADDR: u64 = 0x3000_0000;
/// Size of the hypercall page.
pub const HYPERCALL_MMIO_SIZE: u64 = PAGE_SIZE;
/// x86-64: the three pages KVM needs for its real-mode TSS (`KVM_SET_TSS_ADDR`).
pub const KVM_TSS_ADDR: u64 = 0x3fff_c000;
/// Node-private memory (tables, image) must end at or below this address.
pub const PRIVATE_LIMIT: u64 = HYPERCALL_MMIO_ADDR;
/// Start of application-writable memory: the linker places `.data` and `.bss` here.
pub const SHARED_BASE: u64 = 0x4000_0000;
/// Largest application-writable memory a VM may have.
pub const MAX_SHARED_SIZE: u64 = 64 << 30;

/// Guest address of the per-vCPU area of vCPU `vcpu`.
pub const fn percpu_area(vcpu: u32) -> u64 {
    PERCPU_ADDR + vcpu as u64 * PERCPU_SIZE
}

/// Guest address of the [`crate::PerCpu`] of vCPU `vcpu`.
pub const fn percpu_data(vcpu: u32) -> u64 {
    percpu_area(vcpu) + PERCPU_DATA_OFFSET
}

/// Initial exception stack pointer of vCPU `vcpu` (16-byte aligned top of its area).
pub const fn exception_stack_top(vcpu: u32) -> u64 {
    percpu_area(vcpu) + PERCPU_SIZE
}

/// x86-64 GDT selectors. The application runs in ring 3 with the user segments (hardware KVM
/// runs ring 0 natively too, but software-virtualised KVM such as PVM only runs guest user
/// mode natively); exception handlers run in ring 0 with the kernel segments.
pub mod gdt {
    /// Ring-0 64-bit code segment (exception handlers).
    pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
    /// Ring-0 data segment.
    pub const KERNEL_DATA_SELECTOR: u16 = 0x10;
    /// Ring-3 data segment, with RPL 3.
    pub const USER_DATA_SELECTOR: u16 = 0x18 | 3;
    /// Ring-3 64-bit code segment, with RPL 3.
    pub const USER_CODE_SELECTOR: u16 = 0x20 | 3;
    /// Number of 8-byte GDT entries before the TSS descriptors.
    pub const FIXED_ENTRIES: u32 = 5;
    /// Selector of the TSS of vCPU `vcpu` (each TSS descriptor takes two GDT entries).
    pub const fn tss_selector(vcpu: u32) -> u16 {
        ((FIXED_ENTRIES + vcpu * 2) * 8) as u16
    }
}

const _: () = assert!(PERCPU_ADDR + MAX_VCPUS as u64 * PERCPU_SIZE <= IMAGE_BASE);
const _: () = assert!(gdt::tss_selector(MAX_VCPUS) as u64 <= GDT_SIZE);
const _: () = assert!(PAGE_TABLES_ADDR + PAGE_TABLES_SIZE <= PERCPU_ADDR);
const _: () = assert!(BOOT_ARGS_ADDR + BOOT_ARGS_SIZE <= PAGE_TABLES_ADDR);
