//! Runs one VM on one host: a Rust `std` application linked with the pop library OS
//! (`libos`), on KVM. No command line and no cluster here: `popvmm` (the binary crate) and
//! `pop-migrate` (moving VMs between nodes) are built on this library.
//!
//! The guest/host contract lives in the [`pop_abi`] crate; this crate implements the host side
//! of it:
//!
//! * [`image`] validates and describes the application's ELF image,
//! * [`memory`] owns guest memory and checks every guest pointer,
//! * [`boot`] writes the [`pop_abi::BootInfo`] and the argument/environment block,
//! * [`vm`] creates the KVM virtual machine and runs it until the guest exits,
//! * [`threads`] maps guest threads onto a pool of vCPUs (one host thread each),
//! * [`hypercall`] serves the guest's requests, with [`fs`] for files and directories,
//! * [`fault`] turns a guest crash into a symbolized report,
//! * [`persist`] is the one save/restore pattern of what migrates ([`persist::Persist`],
//!   the aggregate [`persist::VmState`]), with [`clock`] for the guest clock,
//! * [`arch`] holds everything specific to an instruction set (x86-64 for now).
//!
//! [`testing`] (with the `testing` feature) holds helpers for the test suites.

pub mod arch;
pub mod boot;
pub mod clock;
pub mod config;
pub mod fault;
pub mod fs;
pub mod hypercall;
pub mod image;
pub mod launch;
pub mod memory;
pub mod output;
pub mod paging;
pub mod persist;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod threads;
pub mod timings;
pub mod vm;

pub use config::VmConfig;
pub use launch::{LaunchError, launch};
pub use vm::Outcome;
