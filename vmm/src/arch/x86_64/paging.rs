//! x86-64 page-table entries for [`crate::paging`]: present, writable and user (the
//! application runs in ring 3, and every level must allow it).

use crate::paging::EntryFormat;

/// Entry flag: present.
const PRESENT: u64 = 1 << 0;
/// Entry flag: writable.
const WRITABLE: u64 = 1 << 1;
/// Entry flag: accessible from ring 3.
const USER: u64 = 1 << 2;
/// Entry flag (in a page directory): maps a 2 MiB page.
const LARGE: u64 = 1 << 7;

/// The x86-64 entry encoding.
#[derive(Clone, Copy, Debug)]
pub struct X86Entries;

impl EntryFormat for X86Entries {
    fn table(addr: u64) -> u64 {
        addr | PRESENT | WRITABLE | USER
    }
    fn large(addr: u64) -> u64 {
        addr | PRESENT | WRITABLE | USER | LARGE
    }
    fn large_mmio(addr: u64) -> u64 {
        Self::large(addr)
    }
    fn page(addr: u64) -> u64 {
        addr | PRESENT | WRITABLE | USER
    }
    fn is_large(entry: u64) -> bool {
        entry & LARGE != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::PageTables;
    use pop_abi::layout::{PAGE_TABLES_ADDR, SHARED_BASE};

    /// Index of the PML4 and of the 4 KiB table of the first 2 MiB in the table area.
    const PML4: usize = 0;
    const LOW_PT: usize = 2;

    #[test]
    fn tables_are_laid_out_from_the_table_area() {
        let pt = PageTables::<X86Entries>::build(4 << 20, SHARED_BASE + (2 << 20));
        let bytes = pt.to_bytes();
        let entry = |table: usize, i: usize| {
            let at = table * 4096 + i * 8;
            u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
        };
        assert_eq!(
            entry(PML4, 0),
            (PAGE_TABLES_ADDR + 0x1000) | PRESENT | WRITABLE | USER
        );
        assert_eq!(entry(LOW_PT, 0), 0);
        assert_eq!(entry(LOW_PT, 1), 0x1000 | PRESENT | WRITABLE | USER);
    }
}
