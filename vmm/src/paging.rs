//! Identity-mapped 4-level translation tables, the same shape on both ISAs (x86-64 4-level
//! paging; AArch64 with a 4 KiB granule and 48-bit addresses): 2 MiB pages/blocks over
//! node-private and shared memory and the hypercall page, except the first 2 MiB, mapped with
//! 4 KiB pages so that page 0 can stay unmapped (a NULL dereference faults). Nothing else is
//! mapped. Each architecture supplies the encoding of its entries ([`EntryFormat`]).

use pop_abi::layout::{
    HYPERCALL_MMIO_ADDR, LARGE_PAGE_SIZE, PAGE_SIZE, PAGE_TABLES_ADDR, PAGE_TABLES_SIZE,
    SHARED_BASE,
};

use crate::memory::GuestMem;

/// Bits of an entry holding the physical address (both ISAs).
const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

/// How an architecture encodes translation-table entries.
pub trait EntryFormat {
    /// An entry pointing at the next-level table at `addr`.
    fn table(addr: u64) -> u64;
    /// A level-2 entry mapping the 2 MiB of normal memory at `addr`.
    fn large(addr: u64) -> u64;
    /// A level-2 entry mapping the 2 MiB holding the hypercall page (device memory).
    fn large_mmio(addr: u64) -> u64;
    /// A level-3 entry mapping the 4 KiB of normal memory at `addr`.
    fn page(addr: u64) -> u64;
    /// Whether `entry` is valid.
    fn valid(entry: u64) -> bool {
        entry & 1 != 0
    }
    /// Whether a valid level-2 `entry` maps 2 MiB itself (rather than pointing at a table).
    fn is_large(entry: u64) -> bool;
}
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
pub struct PageTables<F> {
    tables: Vec<[u64; ENTRIES]>,
    format: std::marker::PhantomData<F>,
}

impl<F: EntryFormat> PageTables<F> {
    /// Maps `[0, private_end)` and `[SHARED_BASE, shared_end)` (both multiples of 2 MiB,
    /// shared_end at most 512 GiB).
    pub fn build(private_end: u64, shared_end: u64) -> PageTables<F> {
        assert!(
            private_end.is_multiple_of(LARGE_PAGE_SIZE)
                && shared_end.is_multiple_of(LARGE_PAGE_SIZE)
        );
        assert!(private_end <= SHARED_BASE && shared_end <= ENTRIES as u64 * GIB);
        let mut pt = PageTables {
            tables: vec![[0; ENTRIES]; FIRST_PD],
            format: std::marker::PhantomData,
        };
        pt.tables[PML4][0] = F::table(table_addr(PDPT));
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
                    F::table(table_addr(LOW_PT))
                } else if page == hypercalls {
                    F::large_mmio(page)
                } else {
                    F::large(page)
                };
            }
        }
        if private_end > 0 {
            // Page 0 stays not present.
            for (i, entry) in pt.tables[LOW_PT].iter_mut().enumerate().skip(1) {
                *entry = F::page(i as u64 * PAGE_SIZE);
            }
        }
        assert!((pt.tables.len() as u64) * PAGE_SIZE <= PAGE_TABLES_SIZE);
        pt
    }

    /// Index of the page directory covering `addr`, created on first use.
    fn directory_for(&mut self, addr: u64) -> usize {
        let gib = (addr / GIB) as usize;
        let entry = self.tables[PDPT][gib];
        if F::valid(entry) {
            return ((entry & ADDR_MASK) - PAGE_TABLES_ADDR) as usize / PAGE_SIZE as usize;
        }
        let index = self.tables.len();
        self.tables.push([0; ENTRIES]);
        self.tables[PDPT][gib] = F::table(table_addr(index));
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
        let present = |entry: u64| F::valid(entry).then_some(entry);
        let pml4e = self.tables[PML4][index(39)];
        let pdpte = self.tables.get(table(present(pml4e)?))?[index(30)];
        let pde = self.tables.get(table(present(pdpte)?))?[index(21)];
        if F::is_large(present(pde)?) {
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

fn table_addr(index: usize) -> u64 {
    PAGE_TABLES_ADDR + index as u64 * PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    type PageTables = super::PageTables<crate::arch::Entries>;

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
}
