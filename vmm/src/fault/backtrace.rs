//! Backtraces along frame pointers (images are built with `-Cforce-frame-pointers=yes`).

use crate::memory::GuestMem;

/// Most frames a backtrace shows.
pub const MAX_FRAMES: usize = 64;

/// The program counters of the call stack: `pc` first, then the return address of each frame
/// found from `fp` (`[fp + 8]`, with the caller's frame pointer at `[fp]`). Stops at a null,
/// unaligned, non-increasing or out-of-memory frame pointer, or after [`MAX_FRAMES`].
pub fn walk_frame_pointers(mem: &GuestMem, pc: u64, mut fp: u64) -> Vec<u64> {
    let mut pcs = vec![pc];
    while pcs.len() < MAX_FRAMES {
        if fp == 0 || !fp.is_multiple_of(8) || !mem.contains(fp, 16) {
            break;
        }
        let (Ok(next), Ok(ret)) = (mem.read_u64(fp), mem.read_u64(fp + 8)) else {
            break;
        };
        if ret == 0 {
            break;
        }
        pcs.push(ret);
        if next <= fp {
            break;
        }
        fp = next;
    }
    pcs
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_abi::layout::SHARED_BASE;

    #[test]
    fn walks_a_chain_and_stops_at_null() {
        let mem = GuestMem::new(4 << 20, 2 << 20).unwrap();
        let f1 = SHARED_BASE + 0x100;
        let f2 = SHARED_BASE + 0x200;
        mem.write_u64(f1, f2).unwrap();
        mem.write_u64(f1 + 8, 0x40_2000).unwrap();
        mem.write_u64(f2, 0).unwrap();
        mem.write_u64(f2 + 8, 0x40_3000).unwrap();
        assert_eq!(
            walk_frame_pointers(&mem, 0x40_1000, f1),
            vec![0x40_1000, 0x40_2000, 0x40_3000]
        );
        assert_eq!(
            walk_frame_pointers(&mem, 0x40_1000, f1 + 1),
            vec![0x40_1000]
        );
        assert_eq!(walk_frame_pointers(&mem, 0x40_1000, 0), vec![0x40_1000]);
        // A loop ends instead of repeating forever.
        mem.write_u64(f2, f1).unwrap();
        assert_eq!(walk_frame_pointers(&mem, 0x40_1000, f1).len(), 3);
    }
}
