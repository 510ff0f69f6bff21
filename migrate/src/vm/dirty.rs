//! Which guest pages changed: KVM's dirty log (`KVM_MEM_LOG_DIRTY_PAGES`, `KVM_GET_DIRTY_LOG`)
//! for the guest's own writes, plus the pages the VMM wrote on the guest's behalf (which KVM
//! does not see), on both memory slots: the private slot also holds state the guest writes at
//! run time (the IDT, per-vCPU data and exception stacks).

use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;

use vmm::memory::PAGE_SIZE;
use vmm::vm::{VmShared, register_memory};

/// Starts logging; the first [`take`] returns the pages written since.
pub fn start(vm: &VmShared) -> Result<(), String> {
    vm.mem.track_host_writes(true);
    register_memory(&vm.vm_fd, &vm.mem, KVM_MEM_LOG_DIRTY_PAGES)
        .map_err(|e| format!("cannot start dirty logging: {e}"))?;
    take(vm).map(|_| ())
}

/// Stops logging (the VM stays here).
pub fn stop(vm: &VmShared) {
    vm.mem.track_host_writes(false);
    let _ = register_memory(&vm.vm_fd, &vm.mem, 0);
    let _ = vm.mem.take_host_dirty();
}

/// Guest addresses of the pages written since the last call (or [`start`]), in order.
pub fn take(vm: &VmShared) -> Result<Vec<u64>, String> {
    let host = vm.mem.take_host_dirty();
    let mut pages = Vec::new();
    for (region, host_bits) in vm.mem.regions().iter().zip(host) {
        let kvm_bits = vm
            .vm_fd
            .get_dirty_log(region.slot, region.size as usize)
            .map_err(|e| format!("cannot read the dirty log: {e}"))?;
        let n_pages = region.size / PAGE_SIZE;
        for (i, word) in kvm_bits.iter().enumerate() {
            let mut bits = word | host_bits.get(i).copied().unwrap_or(0);
            while bits != 0 {
                let bit = u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let page = i as u64 * 64 + bit;
                if page < n_pages {
                    pages.push(region.guest_addr + page * PAGE_SIZE);
                }
            }
        }
    }
    Ok(pages)
}

/// Every page of guest memory that the host has backed with memory (the others were never
/// touched and read as zero); every page if the host cannot tell.
pub fn resident_pages(vm: &VmShared) -> Vec<u64> {
    resident_pages_of(vm, |_| true)
}

/// [`resident_pages`] of the private region only.
pub fn resident_private_pages(vm: &VmShared) -> Vec<u64> {
    resident_pages_of(vm, |r| r.guest_addr < vm.mem.private_size())
}

/// [`resident_pages`] of the shared region only.
pub fn resident_shared_pages(vm: &VmShared) -> Vec<u64> {
    resident_pages_of(vm, |r| r.guest_addr >= vm.mem.private_size())
}

fn resident_pages_of(vm: &VmShared, wanted: impl Fn(&vmm::memory::RegionInfo) -> bool) -> Vec<u64> {
    let mut pages = Vec::new();
    for r in vm.mem.regions().iter().filter(|r| wanted(r)) {
        let n = (r.size / PAGE_SIZE) as usize;
        let mut residency = vec![0u8; n];
        // SAFETY: `[host_addr, host_addr + size)` is the region's live mapping (page-aligned,
        // owned by `vm.mem`); `residency` has one byte per page of it, as mincore(2) needs.
        let ok = unsafe {
            libc::mincore(
                r.host_addr as *mut libc::c_void,
                r.size as usize,
                residency.as_mut_ptr(),
            )
        } == 0;
        pages.extend(
            (0..n)
                .filter(|&p| !ok || residency[p] & 1 != 0)
                .map(|p| r.guest_addr + p as u64 * PAGE_SIZE),
        );
    }
    pages
}
