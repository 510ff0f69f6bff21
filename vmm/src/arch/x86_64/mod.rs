//! x86-64 (long mode) backend: identity-mapped page tables, a flat GDT with one TSS per vCPU,
//! and hypercalls as stores to the hypercall page ([`pop_abi::layout::HYPERCALL_MMIO_ADDR`]).

mod cpuid;
pub mod fault;
pub mod gdt;
mod paging;
pub mod state;
mod vcpu;

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VmFd};
use pop_abi::layout::KVM_TSS_ADDR;

use crate::memory::GuestMem;

pub use paging::X86Entries as Entries;
pub use state::VcpuState;
pub use vcpu::Vcpu;

/// ELF `e_machine` of the images this backend runs.
pub const ELF_MACHINE: u16 = goblin::elf::header::EM_X86_64;

/// VM-wide architecture state shared by all vCPUs.
#[derive(Debug)]
pub struct VmArch {
    /// CPUID entries KVM supports, the base of each vCPU's CPUID.
    pub supported_cpuid: CpuId,
}

/// Prepares a fresh VM: KVM's TSS pages, and the CPUID template for vCPUs.
pub fn setup_vm(kvm: &Kvm, vm: &VmFd) -> Result<VmArch, kvm_ioctls::Error> {
    vm.set_tss_address(KVM_TSS_ADDR as usize)?;
    let supported_cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    Ok(VmArch { supported_cpuid })
}

/// Writes the page tables, the GDT and every vCPU's TSS into guest memory.
pub fn write_tables(mem: &GuestMem, max_vcpus: u32) {
    crate::paging::PageTables::<Entries>::build(mem.private_size(), mem.shared_end()).write(mem);
    gdt::write(mem, max_vcpus);
}
