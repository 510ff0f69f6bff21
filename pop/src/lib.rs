//! The app-facing API of popcorn-rs.
//!
//! Unmodified `std` applications need nothing from this crate: `cargo pop build` links the
//! library OS into them. Applications that want to know where they run and which nodes their
//! cluster has and to move their threads between nodes depend on `pop`. Every function also works in an ordinary native build,
//! where the program runs alone on node 0, so the same source runs under `popvmm` and
//! natively on Linux.
//!
//! With the `std` feature (on by default), [`run`] and [`spawn`] give the application an
//! executor of async tasks whose state is all on the heap: the unit that moves between
//! ISAs ([`executor`]).
#![no_std]

#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
pub mod executor;
mod migrate;
mod node;
mod nodes;

pub use migrate::{MigrateError, migrate};
pub use node::{current_nid, process_id};
pub use nodes::{Isa, Node, Nodes, movable_nodes, nodes};

#[cfg(feature = "std")]
pub use executor::{JoinHandle, migration_point, run, spawn, yield_now};
