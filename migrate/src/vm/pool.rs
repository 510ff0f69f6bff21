//! Guest memory kept for a while after its VM left this node, for the next VM that arrives
//! with the same sizes (a VM moving back and forth, or the next of a series).
//!
//! Fresh memory costs the kernel a zeroing of every page at its first touch, and on a host
//! that takes freed memory back (free page reporting, ballooning: cloud VMs, this machine) a
//! fault into the host as well, which made first arrivals 3-5x slower than later ones here.
//! Reused memory costs neither: the arriving VM's pages overwrite it, and only the pages the
//! first copy round did not write are zeroed (see [`super::dest::Fill`]), so nothing of the
//! previous VM survives.
//!
//! Only pre-copy arrivals reuse memory: post-copy needs its shared region empty, so that
//! userfaultfd sees the guest's first touch of every page.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm::memory::GuestMem;
use vmm::vm::VmShared;

/// How long memory is kept by default.
pub const KEEP: Duration = Duration::from_secs(30);
/// How long [`MemoryPool::take`] waits for a VM that just left to let go of its memory.
const WIND_DOWN: Duration = Duration::from_millis(100);
/// Most bytes kept at once.
const MAX_BYTES: u64 = 8 << 30;

/// The memory of VMs that left, kept for [`MemoryPool::take`].
#[derive(Debug)]
pub struct MemoryPool {
    keep: Mutex<Duration>,
    /// VMs that moved away whose memory some thread may still hold.
    leaving: Mutex<Vec<(Arc<VmShared>, Instant)>>,
    /// Memory nothing else holds.
    kept: Mutex<Vec<(GuestMem, Instant)>>,
}

impl Default for MemoryPool {
    fn default() -> Self {
        MemoryPool {
            keep: Mutex::new(KEEP),
            leaving: Mutex::default(),
            kept: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    vmm::sync::lock(m)
}

impl MemoryPool {
    /// Sets how long memory is kept (zero: never).
    pub fn set_keep(&self, keep: Duration) {
        *lock(&self.keep) = keep;
        self.purge();
    }

    /// A VM that moved away: its memory joins the pool once nothing else uses it.
    pub fn left(&self, vm: Arc<VmShared>) {
        if !lock(&self.keep).is_zero() {
            lock(&self.leaving).push((vm, Instant::now()));
        }
    }

    /// Memory of exactly these sizes, if some is kept. A VM of these sizes that just left
    /// may still be winding down (its threads ending): it is waited for a little.
    pub fn take(&self, private_size: u64, shared_size: u64) -> Option<GuestMem> {
        let fits =
            |m: &GuestMem| m.private_size() == private_size && m.shared_size() == shared_size;
        let start = Instant::now();
        loop {
            self.harvest();
            let mut kept = lock(&self.kept);
            if let Some(i) = kept.iter().position(|(m, _)| fits(m)) {
                let (mem, _) = kept.swap_remove(i);
                // Only the pool held it (checked when kept; nothing can have cloned it since).
                return mem.is_only_handle().then_some(mem);
            }
            drop(kept);
            let winding_down = lock(&self.leaving).iter().any(|(vm, _)| fits(&vm.mem));
            if !winding_down || start.elapsed() > WIND_DOWN {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Moves the memory of VMs that nothing else holds any more into the pool.
    fn harvest(&self) {
        let mut leaving = lock(&self.leaving);
        let mut kept = lock(&self.kept);
        leaving.retain(|(vm, _)| {
            if Arc::strong_count(vm) > 1 {
                return true;
            }
            let mem = vm.mem.clone();
            kept.push((mem, Instant::now()));
            false
        });
        // (Dropping the VMs, and so their KVM VMs, left the pool the only holder.)
        drop(leaving);
        let mut bytes = 0;
        kept.sort_by_key(|(_, since)| std::cmp::Reverse(*since));
        kept.retain(|(m, _)| {
            bytes += m.private_size() + m.shared_size();
            bytes <= MAX_BYTES
        });
    }

    /// Releases what was kept longer than the keeping time.
    pub fn purge(&self) {
        self.harvest();
        let keep = *lock(&self.keep);
        lock(&self.leaving).retain(|(_, since)| since.elapsed() < keep);
        lock(&self.kept).retain(|(_, since)| since.elapsed() < keep);
    }

    /// Bytes kept now.
    pub fn kept_bytes(&self) -> u64 {
        lock(&self.kept)
            .iter()
            .map(|(m, _)| m.private_size() + m.shared_size())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(pool: &MemoryPool, mem: GuestMem) {
        lock(&pool.kept).push((mem, Instant::now()));
    }

    #[test]
    fn memory_is_handed_out_only_in_the_same_sizes_and_only_if_unused() {
        let pool = MemoryPool::default();
        keep(&pool, GuestMem::new(2 << 20, 4 << 20).unwrap());
        assert_eq!(pool.kept_bytes(), 6 << 20);
        assert!(pool.take(2 << 20, 8 << 20).is_none());
        let mem = pool.take(2 << 20, 4 << 20).expect("same sizes");
        assert!(pool.take(2 << 20, 4 << 20).is_none(), "handed out once");
        // Memory something else still holds is never handed out.
        let held = mem.clone();
        keep(&pool, mem);
        assert!(pool.take(2 << 20, 4 << 20).is_none());
        drop(held);
        // Released when the keeping time is over (zero: at once).
        keep(&pool, GuestMem::new(2 << 20, 4 << 20).unwrap());
        pool.set_keep(Duration::ZERO);
        assert_eq!(pool.kept_bytes(), 0);
    }
}
