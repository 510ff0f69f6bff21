//! The saved state of an AArch64 vCPU: not yet implemented (same-ISA migration is x86-64
//! only for now). The type exists so that the migration code is architecture-neutral; saving
//! fails with `ENOSYS`, so `popvmm migrate` reports a clean error on aarch64 hosts.

use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

/// The state of an AArch64 vCPU (empty until the backend implements saving it).
#[derive(Clone, Debug)]
pub struct VcpuState {
    /// The guest's counter when the state was read.
    pub tsc: u64,
}

impl VcpuState {
    /// The thread's stack pointer and thread pointer (none yet: aarch64 states do not
    /// move).
    pub fn hot_addresses(&self) -> [u64; 2] {
        [0, 0]
    }
}

impl Encode for VcpuState {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.tsc);
    }
}

impl Decode for VcpuState {
    fn decode(_d: &mut Decoder<'_>) -> Result<VcpuState, WireError> {
        Err(WireError("aarch64 vCPU states cannot be restored yet"))
    }
}
