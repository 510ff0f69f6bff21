//! The GDT (flat 64-bit code and data segments for ring 0 and ring 3, then one TSS descriptor
//! per vCPU) and the TSS of each vCPU, whose IST1 and RSP0 point at the vCPU's exception
//! stack. The application runs in ring 3; exception handlers run in ring 0.

use pop_abi::layout::{GDT_ADDR, exception_stack_top, gdt::tss_selector, percpu_area};

use crate::memory::GuestMem;

/// 64-bit code: present, ring 0, code execute/read accessed (type 0xB), long mode, 4 KiB
/// granularity.
pub const KERNEL_CODE_DESCRIPTOR: u64 = 0x00af_9b00_0000_ffff;
/// Data: present, ring 0, read/write accessed (type 3), 32-bit default size, 4 KiB granularity.
pub const KERNEL_DATA_DESCRIPTOR: u64 = 0x00cf_9300_0000_ffff;
/// As [`KERNEL_DATA_DESCRIPTOR`], ring 3.
pub const USER_DATA_DESCRIPTOR: u64 = 0x00cf_f300_0000_ffff;
/// As [`KERNEL_CODE_DESCRIPTOR`], ring 3.
pub const USER_CODE_DESCRIPTOR: u64 = 0x00af_fb00_0000_ffff;
/// Size of a 64-bit TSS without I/O permission bitmap.
pub const TSS_SIZE: u64 = 104;
/// TSS access byte: present, 64-bit TSS marked busy (type 0xB), as after `ltr`.
const TSS_ACCESS_BUSY: u64 = 0x8b;

/// Offsets inside a 64-bit TSS.
const TSS_RSP0: usize = 0x04;
const TSS_IST1: usize = 0x24;
const TSS_IOMAP_BASE: usize = 0x66;

/// The 16-byte system descriptor of a TSS at `base`.
pub fn tss_descriptor(base: u64) -> [u64; 2] {
    let limit = TSS_SIZE - 1;
    let low = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | TSS_ACCESS_BUSY << 40
        | (limit >> 16 & 0xf) << 48
        | (base >> 24 & 0xff) << 56;
    [low, base >> 32]
}

/// The GDT for `vcpus` vCPUs.
pub fn gdt(vcpus: u32) -> Vec<u64> {
    // In the order of the selectors in `pop_abi::layout::gdt`.
    let mut table = vec![
        0,
        KERNEL_CODE_DESCRIPTOR,
        KERNEL_DATA_DESCRIPTOR,
        USER_DATA_DESCRIPTOR,
        USER_CODE_DESCRIPTOR,
    ];
    for vcpu in 0..vcpus {
        debug_assert_eq!(table.len() * 8, tss_selector(vcpu) as usize);
        table.extend(tss_descriptor(percpu_area(vcpu)));
    }
    table
}

/// GDTR limit for `vcpus` vCPUs.
pub fn gdt_limit(vcpus: u32) -> u16 {
    tss_selector(vcpus) - 1
}

/// The TSS of vCPU `vcpu`.
pub fn tss(vcpu: u32) -> [u8; TSS_SIZE as usize] {
    let mut tss = [0u8; TSS_SIZE as usize];
    let stack = exception_stack_top(vcpu).to_le_bytes();
    tss[TSS_RSP0..TSS_RSP0 + 8].copy_from_slice(&stack);
    tss[TSS_IST1..TSS_IST1 + 8].copy_from_slice(&stack);
    tss[TSS_IOMAP_BASE..TSS_IOMAP_BASE + 2].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    tss
}

/// Writes the GDT and all TSSs into guest memory.
pub fn write(mem: &GuestMem, vcpus: u32) {
    let bytes: Vec<u8> = gdt(vcpus).iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write(GDT_ADDR, &bytes)
        .expect("GDT is in private memory");
    for vcpu in 0..vcpus {
        mem.write(percpu_area(vcpu), &tss(vcpu))
            .expect("per-vCPU areas are in private memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tss_descriptor_encodes_base_and_limit() {
        let [low, high] = tss_descriptor(0x1234_5678_9abc_def0);
        assert_eq!(low & 0xffff, 103);
        assert_eq!((low >> 16) & 0xff_ffff, 0xbc_def0);
        assert_eq!((low >> 56) & 0xff, 0x9a);
        assert_eq!((low >> 40) & 0xff, 0x8b);
        assert_eq!(high, 0x1234_5678);
    }

    #[test]
    fn gdt_has_one_tss_per_vcpu() {
        let table = gdt(3);
        assert_eq!(table.len(), 5 + 2 * 3);
        assert_eq!(gdt_limit(3) as usize, table.len() * 8 - 1);
        assert_eq!(
            table[(tss_selector(2) / 8) as usize],
            tss_descriptor(percpu_area(2))[0]
        );
    }

    #[test]
    fn tss_points_at_the_exception_stack() {
        let t = tss(5);
        let ist1 = u64::from_le_bytes(t[0x24..0x2c].try_into().unwrap());
        assert_eq!(ist1, exception_stack_top(5));
        assert_eq!(
            u64::from_le_bytes(t[4..12].try_into().unwrap()),
            exception_stack_top(5)
        );
        assert_eq!(u16::from_le_bytes([t[102], t[103]]), 104);
    }
}
