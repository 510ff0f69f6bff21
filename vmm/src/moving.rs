//! A guest thread as it moves between the nodes a VM spans: its stopped vCPU
//! ([`ParkedVcpu`], also what a whole VM's pause yields per thread) and [`ThreadState`], what
//! goes with one thread: the vCPU, its per-vCPU area (the guest's own data and exception
//! stack there, node-private memory otherwise) and its clock. Native states only: they mean
//! something to KVM on the ISA they were saved on, which the message carrying them checks
//! first ([`crate::vm::state::StateHeader`]).

use pop_abi::layout::PERCPU_SIZE;
use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

use crate::arch::{HypercallRequest, VcpuState};
use crate::clock::ClockState;

/// A vCPU stopped for a migration: its thread, its state, and the blocking hypercall it was
/// in (to be issued again where it resumes: futex waits, sleeps and joins carry over).
#[derive(Clone, Debug)]
pub struct ParkedVcpu {
    /// vCPU index (the guest's per-vCPU data is at this index: it must not change).
    pub index: u32,
    /// Guest thread on it.
    pub tid: u32,
    /// Registers and the rest.
    pub state: VcpuState,
    /// The hypercall it was blocked in, if any (sleep: the time left).
    pub pending: Option<HypercallRequest>,
}

/// One guest thread moving to another node of the VM.
#[derive(Clone, Debug)]
pub struct ThreadState {
    /// Its vCPU.
    pub vcpu: ParkedVcpu,
    /// Its per-vCPU area ([`PERCPU_SIZE`] bytes at `percpu_area(index)`).
    pub percpu: Vec<u8>,
    /// The vCPU's counter when it stopped, and the host's realtime then: where it resumes,
    /// the counter goes on from there plus the time it was on its way, so the thread's clock
    /// never goes back.
    pub clock: ClockState,
}

impl Encode for HypercallRequest {
    fn encode(&self, e: &mut Encoder) {
        e.u16(self.nr);
        for a in self.args {
            e.u64(a);
        }
    }
}

impl Decode for HypercallRequest {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let nr = d.u16()?;
        let mut args = [0; 5];
        for a in &mut args {
            *a = d.u64()?;
        }
        Ok(HypercallRequest { nr, args })
    }
}

impl Encode for ParkedVcpu {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.index).u32(self.tid);
        self.pending.encode(e);
        self.state.encode(e);
    }
}

impl Decode for ParkedVcpu {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(ParkedVcpu {
            index: d.u32()?,
            tid: d.u32()?,
            pending: Option::decode(d)?,
            state: VcpuState::decode(d)?,
        })
    }
}

impl Encode for ThreadState {
    fn encode(&self, e: &mut Encoder) {
        self.vcpu.encode(e);
        // Mostly empty (an exception stack seldom used): its zero pieces stay behind.
        e.sparse(&self.percpu);
        self.clock.encode(e);
    }
}

impl Decode for ThreadState {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let vcpu = ParkedVcpu::decode(d)?;
        let percpu = d.sparse(PERCPU_SIZE as usize)?;
        Ok(ThreadState {
            vcpu,
            percpu,
            clock: ClockState::decode(d)?,
        })
    }
}
