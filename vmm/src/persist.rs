//! One save/restore pattern for everything of a VM that migrates.
//!
//! A component implements [`Persist`]: [`Persist::save`] gives a plain state (no host
//! resources: no file descriptors, no pointers) that has a bounded wire form
//! ([`pop_wire::Encode`] and [`pop_wire::Decode`]); [`Persist::restore`] rebuilds the
//! component on this host from such a state and what the host provides (`Args`). Implemented
//! for the vCPU ([`crate::arch::Vcpu`], state [`crate::arch::VcpuState`]), the thread table
//! ([`crate::threads::Threads`], [`crate::threads::ThreadTable`]), the descriptor table
//! ([`crate::fs::FileSystem`], [`crate::fs::FdTable`]) and the guest clock
//! ([`crate::clock::GuestClock`], [`crate::clock::ClockState`]).
//!
//! [`crate::vm::state::VmState`] is the aggregate a whole VM moves as, made of these states.

use pop_wire::{Decode, Encode};

/// A component whose state can be saved on one host and restored on another.
pub trait Persist: Sized {
    /// The saved state: plain data with a bounded wire form.
    type State: Encode + Decode;
    /// What this host provides to rebuild the component (KVM handles, services, ...).
    type Args<'a>;
    /// Why saving or restoring failed.
    type Error;

    /// The component's state now (the component must be quiescent: a stopped vCPU, a paused
    /// VM).
    fn save(&self) -> Result<Self::State, Self::Error>;

    /// The component rebuilt on this host from `state`.
    fn restore(args: Self::Args<'_>, state: &Self::State) -> Result<Self, Self::Error>;
}
