//! AArch64 backend: identity-mapped translation tables (4 KiB granule, 48-bit addresses) with
//! the hypercall page as device memory, vCPUs at EL1 on `SP_EL0` with the MMU, caches and
//! FP/SIMD enabled before the first instruction, and hypercalls as stores to the hypercall page
//! whose value is the address of a [`pop_abi::hypercall::HypercallBlock`].

mod counter;
pub mod fault;
mod paging;
mod regs;
pub mod state;
mod vcpu;

use std::sync::Arc;

use kvm_bindings::kvm_vcpu_init;
use kvm_ioctls::{Kvm, VmFd};

use crate::memory::GuestMem;

pub use paging::Aarch64Entries as Entries;
pub use state::VcpuState;
pub use vcpu::Vcpu;

/// ELF `e_machine` of the images this backend runs.
pub const ELF_MACHINE: u16 = goblin::elf::header::EM_AARCH64;

/// VM-wide architecture state shared by all vCPUs.
#[derive(Debug)]
pub struct VmArch {
    /// The vCPU model KVM prefers on this host, used to initialise every vCPU.
    pub vcpu_init: kvm_vcpu_init,
    /// The VM's virtual counter (one for all its vCPUs).
    pub counter: Arc<counter::VmCounter>,
}

/// Prepares a fresh VM: asks KVM for its preferred vCPU model.
pub fn setup_vm(_kvm: &Kvm, vm: &VmFd) -> Result<VmArch, kvm_ioctls::Error> {
    let mut vcpu_init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut vcpu_init)?;
    Ok(VmArch {
        vcpu_init,
        counter: Arc::default(),
    })
}

/// Writes the translation tables into guest memory (there are no descriptor tables).
pub fn write_tables(mem: &GuestMem, _max_vcpus: u32) {
    crate::paging::PageTables::<Entries>::build(mem.private_size(), mem.shared_end()).write(mem);
}
