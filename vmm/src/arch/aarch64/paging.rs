//! AArch64 translation-table descriptors for [`crate::paging`] (stage 1, 4 KiB granule):
//! normal write-back memory, inner shareable, EL1 read/write, access flag set; the hypercall
//! page is Device-nGnRE and never executable.

use crate::paging::EntryFormat;

/// Valid descriptor.
const VALID: u64 = 1 << 0;
/// Level 0–2: table descriptor (with `VALID`); level 3: page descriptor.
const TABLE_OR_PAGE: u64 = 1 << 1;
/// `AttrIndx` of normal memory (MAIR attribute 0, see [`super::regs::MAIR_VALUE`]).
const ATTR_NORMAL: u64 = 0 << 2;
/// `AttrIndx` of device memory (MAIR attribute 1).
const ATTR_DEVICE: u64 = 1 << 2;
/// Inner shareable.
const SH_INNER: u64 = 3 << 8;
/// Access flag (set, so no access-flag faults).
const AF: u64 = 1 << 10;
/// Privileged and unprivileged execute-never.
const XN: u64 = (1 << 53) | (1 << 54);

/// The AArch64 descriptor encoding.
#[derive(Clone, Copy, Debug)]
pub struct Aarch64Entries;

impl EntryFormat for Aarch64Entries {
    fn table(addr: u64) -> u64 {
        addr | VALID | TABLE_OR_PAGE
    }
    fn large(addr: u64) -> u64 {
        addr | VALID | ATTR_NORMAL | SH_INNER | AF
    }
    fn large_mmio(addr: u64) -> u64 {
        addr | VALID | ATTR_DEVICE | AF | XN
    }
    fn page(addr: u64) -> u64 {
        addr | VALID | TABLE_OR_PAGE | ATTR_NORMAL | SH_INNER | AF
    }
    fn is_large(entry: u64) -> bool {
        entry & TABLE_OR_PAGE == 0
    }
}
