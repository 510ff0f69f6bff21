//! Identity-mapped 4-level page tables: 2 MiB pages over node-private and shared memory,
//! except the first 2 MiB, mapped with 4 KiB pages so that page 0 can stay unmapped (a NULL
//! dereference faults). Nothing else is mapped.

use pop_abi::layout::{
    HYPERCALL_MMIO_ADDR, LARGE_PAGE_SIZE, PAGE_SIZE, PAGE_TABLES_ADDR, PAGE_TABLES_SIZE,
    SHARED_BASE,
};

use crate::memory::GuestMem;

/// Entry flag: present.
const PRESENT: u64 = 1 << 0;
/// Entry flag: writable.
const WRITABLE: u64 = 1 << 1;
/// Accessible from ring 3, where the application runs (every level must allow it).
const USER: u64 = 1 << 2;
/// Entry flag (in a page directory): maps a 2 MiB page.
const LARGE: u64 = 1 << 7;
/// Bits of an entry holding the physical address.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bytes covered by one PDPT entry.
const GIB: u64 = 1 << 30;
/// Entries per table.
const ENTRIES: usize = 512;

/// Index of each fixed table in the page-table area.
const PML4: usize = 0;
const PDPT: usize = 1;
const LOW_PT: usize = 2;
const FIRST_PD: usize = 3;

/// The page tables as they go into guest memory at [`PAGE_TABLES_ADDR`].
#[derive(Clone, Debug)]
pub struct PageTables {
    tables: Vec<[u64; ENTRIES]>,
}

impl PageTables {
    /// Maps `[0, private_end)` and `[SHARED_BASE, shared_end)` (both multiples of 2 MiB,
    /// shared_end at most 512 GiB).
    pub fn build(private_end: u64, shared_end: u64) -> PageTables {
        assert!(
            private_end.is_multiple_of(LARGE_PAGE_SIZE)
                && shared_end.is_multiple_of(LARGE_PAGE_SIZE)
        );
        assert!(private_end <= SHARED_BASE && shared_end <= ENTRIES as u64 * GIB);
        let mut pt = PageTables {
            tables: vec![[0; ENTRIES]; FIRST_PD],
        };
        pt.tables[PML4][0] = table_addr(PDPT) | PRESENT | WRITABLE | USER;
        // The hypercall page is mapped (its 2 MiB page) but has no memory behind it.
        let hypercalls = HYPERCALL_MMIO_ADDR & !(LARGE_PAGE_SIZE - 1);
        let ranges = [
            (0, private_end),
            (hypercalls, hypercalls + LARGE_PAGE_SIZE),
            (SHARED_BASE, shared_end),
        ];
        for (start, end) in ranges {
            for page in (start..end).step_by(LARGE_PAGE_SIZE as usize) {
                let pd = pt.directory_for(page);
                let slot = ((page >> 21) & 511) as usize;
                pt.tables[pd][slot] = if page == 0 {
                    table_addr(LOW_PT) | PRESENT | WRITABLE | USER
                } else {
                    page | PRESENT | WRITABLE | USER | LARGE
                };
            }
        }
        if private_end > 0 {
            // Page 0 stays not present.
            for (i, entry) in pt.tables[LOW_PT].iter_mut().enumerate().skip(1) {
                *entry = (i as u64 * PAGE_SIZE) | PRESENT | WRITABLE | USER;
            }
        }
        assert!((pt.tables.len() as u64) * PAGE_SIZE <= PAGE_TABLES_SIZE);
        pt
    }

    /// Index of the page directory covering `addr`, created on first use.
    fn directory_for(&mut self, addr: u64) -> usize {
        let gib = (addr / GIB) as usize;
        let entry = self.tables[PDPT][gib];
        if entry & PRESENT != 0 {
            return ((entry & ADDR_MASK) - PAGE_TABLES_ADDR) as usize / PAGE_SIZE as usize;
        }
        let index = self.tables.len();
        self.tables.push([0; ENTRIES]);
        self.tables[PDPT][gib] = table_addr(index) | PRESENT | WRITABLE | USER;
        index
    }

    /// The bytes of all tables, the first at [`PAGE_TABLES_ADDR`].
    pub fn to_bytes(&self) -> Vec<u8> {
        self.tables
            .iter()
            .flatten()
            .flat_map(|e| e.to_le_bytes())
            .collect()
    }

    /// Writes the tables into guest memory.
    pub fn write(&self, mem: &GuestMem) {
        mem.write(PAGE_TABLES_ADDR, &self.to_bytes())
            .expect("page tables are in private memory");
    }

    /// Walks the tables like the MMU: the physical address `addr` maps to, if mapped.
    pub fn translate(&self, addr: u64) -> Option<u64> {
        let table =
            |entry: u64| ((entry & ADDR_MASK).wrapping_sub(PAGE_TABLES_ADDR) / PAGE_SIZE) as usize;
        let index = |level_shift: u32| ((addr >> level_shift) & 511) as usize;
        if addr >> 48 != 0 {
            return None;
        }
        let pml4e = self.tables[PML4][index(39)];
        let pdpte = self.tables.get(table(present(pml4e)?))?[index(30)];
        let pde = self.tables.get(table(present(pdpte)?))?[index(21)];
        if present(pde)? & LARGE != 0 {
            return Some(
                (pde & ADDR_MASK & !(LARGE_PAGE_SIZE - 1)) | (addr & (LARGE_PAGE_SIZE - 1)),
            );
        }
        let pte = self.tables.get(table(pde))?[index(12)];
        Some((present(pte)? & ADDR_MASK) | (addr & (PAGE_SIZE - 1)))
    }

    /// Number of 4 KiB tables.
    pub fn table_count(&self) -> usize {
        self.tables.len()
    }
}

fn present(entry: u64) -> Option<u64> {
    (entry & PRESENT != 0).then_some(entry)
}

fn table_addr(index: usize) -> u64 {
    PAGE_TABLES_ADDR + index as u64 * PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_maps_only_memory_and_leaves_null_unmapped() {
        let private = 6 << 20;
        let shared_end = SHARED_BASE + (256 << 20);
        let pt = PageTables::build(private, shared_end);
        assert_eq!(pt.translate(0), None);
        assert_eq!(pt.translate(0xfff), None);
        assert_eq!(pt.translate(0x1000), Some(0x1000));
        assert_eq!(pt.translate(0x1234), Some(0x1234));
        assert_eq!(pt.translate(0x1f_ffff), Some(0x1f_ffff));
        assert_eq!(pt.translate(0x40_1234), Some(0x40_1234));
        assert_eq!(pt.translate(private - 1), Some(private - 1));
        assert_eq!(pt.translate(private), None, "gap after private memory");
        assert_eq!(
            pt.translate(HYPERCALL_MMIO_ADDR + 8),
            Some(HYPERCALL_MMIO_ADDR + 8),
            "hypercall page (mapped; no memory behind it)"
        );
        assert_eq!(pt.translate(HYPERCALL_MMIO_ADDR - 1), None);
        assert_eq!(pt.translate(SHARED_BASE - 1), None);
        assert_eq!(pt.translate(SHARED_BASE), Some(SHARED_BASE));
        assert_eq!(pt.translate(shared_end - 8), Some(shared_end - 8));
        assert_eq!(pt.translate(shared_end), None);
        assert_eq!(pt.translate(1 << 47), None);
        assert_eq!(pt.table_count(), 5);
    }

    #[test]
    fn large_shared_memory_fits_the_table_area() {
        let shared_end = SHARED_BASE + (64 << 30);
        let pt = PageTables::build(HYPERCALL_MMIO_ADDR, shared_end);
        assert_eq!(pt.translate(shared_end - 1), Some(shared_end - 1));
        assert_eq!(pt.translate(shared_end), None);
        assert_eq!(
            pt.translate(SHARED_BASE + (33 << 30) + 5),
            Some(SHARED_BASE + (33 << 30) + 5)
        );
        assert!(pt.to_bytes().len() as u64 <= PAGE_TABLES_SIZE);
    }

    #[test]
    fn tables_are_laid_out_from_the_table_area() {
        let pt = PageTables::build(4 << 20, SHARED_BASE + (2 << 20));
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
