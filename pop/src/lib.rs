//! The app-facing API of popcorn-rs.
//!
//! Unmodified `std` applications need nothing from this crate: `cargo pop build` links the
//! library OS into them. Applications that want to know where they run and which nodes their
//! cluster has and to move their threads between nodes depend on `pop`. Every function also works in an ordinary native build,
//! where the program runs alone on node 0, so the same source runs under `popvmm` and
//! natively on Linux.
#![no_std]

mod migrate;
mod node;
mod nodes;

pub use migrate::{MigrateError, migrate};
pub use node::{current_nid, process_id};
pub use nodes::{Isa, Node, Nodes, movable_nodes, nodes};
