//! Per-vCPU CPUID: what KVM supports, with the APIC ids of the vCPU filled in.

use kvm_bindings::CpuId;

/// CPUID for vCPU `index`: `supported` with the initial APIC id (leaf 1) and the x2APIC id
/// (leaves 0xB and 0x1F) set to `index`.
pub fn for_vcpu(supported: &CpuId, index: u32) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | (index << 24),
            0xb | 0x1f => entry.edx = index,
            _ => {}
        }
    }
    cpuid
}
