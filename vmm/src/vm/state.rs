//! The aggregate a whole VM moves as (and that a snapshot will hold): [`VmState`], a
//! versioned, ISA-tagged header, then every thread's vCPU, the thread table, the descriptors
//! and the clock, each the state of a [`crate::persist::Persist`] component. Its vCPU states
//! are *native*: they mean something only to KVM on the ISA of the header, and decoding
//! refuses a state of another ISA before reading any of it, so a native state cannot be
//! restored on the other ISA. (Application state that crosses ISAs is a different, portable
//! aggregate.) Memory is not part of it: pages stream separately.

use pop_abi::Isa;
use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

use crate::clock::ClockState;
use crate::fs::FdTable;
use crate::threads::ThreadTable;

use crate::moving::ParkedVcpu;

/// Version of the [`VmState`] wire form (and of the thread and shell states that carry a
/// [`StateHeader`]); a node refuses any other. 2: per-vCPU and XSAVE areas sparse, shells
/// know their home apart from their origin.
pub const STATE_VERSION: u16 = 2;

/// Most threads a [`VmState`] may carry.
pub const MAX_STATE_THREADS: usize = 128;

/// Identifies a saved VM: the form's version, the ISA of its native states, the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateHeader {
    /// [`STATE_VERSION`] when written.
    pub version: u16,
    /// The ISA the native states belong to.
    pub isa: Isa,
    /// Cluster-wide VM id.
    pub vm: u64,
}

impl StateHeader {
    /// The header of a state of VM `vm` saved on this host.
    pub fn native(vm: u64) -> StateHeader {
        StateHeader {
            version: STATE_VERSION,
            isa: Isa::NATIVE,
            vm,
        }
    }

    /// Fails unless a state with this header can be restored on this host.
    pub fn check_native(&self) -> Result<(), WireError> {
        if self.version != STATE_VERSION {
            return Err(WireError("unsupported VM state version"));
        }
        if self.isa != Isa::NATIVE {
            return Err(WireError("a native VM state of another ISA"));
        }
        Ok(())
    }
}

impl Encode for StateHeader {
    fn encode(&self, e: &mut Encoder) {
        e.u16(self.version).u32(self.isa.abi()).u64(self.vm);
    }
}

impl Decode for StateHeader {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let version = d.u16()?;
        let isa = Isa::from_abi(d.u32()?).ok_or(WireError("unknown ISA"))?;
        Ok(StateHeader {
            version,
            isa,
            vm: d.u64()?,
        })
    }
}

/// Everything of a stopped VM but its memory, as it moves between nodes of one ISA.
#[derive(Clone, Debug)]
pub struct VmState {
    /// Version, ISA, VM id.
    pub header: StateHeader,
    /// The vCPUs running guest threads, with what each was blocked in.
    pub threads: Vec<ParkedVcpu>,
    /// The thread table.
    pub table: ThreadTable,
    /// The guest's file descriptors (the host files stay open at the VM's home).
    pub fds: FdTable,
    /// The guest clock when the VM stopped.
    pub clock: ClockState,
}

impl VmState {
    /// Checks that the threads and the table agree and fit `max_threads` vCPUs.
    pub fn check(&self, max_threads: u32) -> Result<(), WireError> {
        let t = &self.table;
        if t.vcpus > max_threads {
            return Err(WireError("thread table out of range"));
        }
        let running = t.threads.iter().filter(|(_, exited)| !exited).count();
        let mut indices: Vec<u32> = self.threads.iter().map(|p| p.index).collect();
        indices.sort_unstable();
        indices.dedup();
        if running != self.threads.len()
            || indices.len() != self.threads.len()
            || self.threads.iter().any(|p| p.index >= t.vcpus)
            || self
                .threads
                .iter()
                .any(|p| !t.threads.contains(&(p.tid, false)))
        {
            return Err(WireError("vCPU states do not match the thread table"));
        }
        Ok(())
    }
}

impl Encode for VmState {
    fn encode(&self, e: &mut Encoder) {
        self.header.encode(e);
        e.seq(&self.threads);
        self.table.encode(e);
        self.fds.encode(e);
        self.clock.encode(e);
    }
}

impl Decode for VmState {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let header = StateHeader::decode(d)?;
        // Before any native state is read.
        header.check_native()?;
        Ok(VmState {
            header,
            threads: d.seq(MAX_STATE_THREADS)?,
            table: ThreadTable::decode(d)?,
            fds: FdTable::decode(d)?,
            clock: ClockState::decode(d)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Fd;

    fn table() -> ThreadTable {
        ThreadTable {
            last_tid: 3,
            threads: vec![(1, false), (2, true), (3, false)],
            vcpus: 2,
        }
    }

    /// A state of this host's ISA with no threads survives the wire; one claiming the other
    /// ISA, another version, or cut anywhere is refused.
    #[test]
    fn states_round_trip_and_foreign_ones_are_refused() {
        let mut fds = FdTable::default();
        fds.insert(Fd::Home(7)).unwrap();
        let state = VmState {
            header: StateHeader::native(0x5_0000_0001),
            threads: Vec::new(),
            table: ThreadTable {
                last_tid: 1,
                threads: vec![(1, true)],
                vcpus: 1,
            },
            fds: fds.clone(),
            clock: ClockState {
                counter: 123,
                paused_realtime_ns: 456,
            },
        };
        let bytes = pop_wire::to_bytes(&state);
        let back: VmState = pop_wire::from_bytes(&bytes).unwrap();
        assert_eq!(back.header, state.header);
        assert_eq!(back.table, state.table);
        assert_eq!(back.fds, fds);
        assert_eq!(back.clock, state.clock);
        assert!(back.check(1).is_ok());
        for cut in 0..bytes.len() {
            assert!(pop_wire::from_bytes::<VmState>(&bytes[..cut]).is_err());
        }
        let other = match Isa::NATIVE {
            Isa::X86_64 => Isa::Aarch64,
            Isa::Aarch64 => Isa::X86_64,
        };
        let mut foreign = bytes.clone();
        foreign[2..6].copy_from_slice(&other.abi().to_le_bytes());
        assert_eq!(
            pop_wire::from_bytes::<VmState>(&foreign).unwrap_err(),
            WireError("a native VM state of another ISA")
        );
        let mut newer = bytes;
        newer[0] = 99;
        assert!(pop_wire::from_bytes::<VmState>(&newer).is_err());
    }

    #[test]
    fn threads_must_match_the_table() {
        let state = VmState {
            header: StateHeader::native(1),
            threads: Vec::new(),
            table: table(),
            fds: FdTable::default(),
            clock: ClockState::default(),
        };
        // Two threads run, no vCPU state carries them.
        assert!(state.check(4).is_err());
        let mut small = state.clone();
        small.table.threads.retain(|t| t.1);
        assert!(small.check(4).is_ok());
        assert!(small.check(1).is_err(), "more vCPUs than allowed");
    }
}
