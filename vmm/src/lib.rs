//! Runs one VM on one host: a Rust `std` application linked with the pop library OS
//! (`libos`), on KVM. No command line and no cluster here: `popvmm` (the binary crate) and
//! `pop-migrate` (moving VMs between nodes) are built on this library.
//!
//! The guest/host contract lives in the [`pop_abi`] crate; this crate implements the host side
//! of it:
//!
//! * [`config`] is what a VM is launched with, and [`launch`](mod@launch) launches it;
//! * [`image`] validates and describes the application's ELF image,
//! * [`memory`] owns guest memory and checks every guest pointer,
//! * [`boot`] writes the [`pop_abi::BootInfo`] and the argument/environment block,
//! * [`vm`] creates the KVM virtual machine, runs its vCPUs, serves hypercalls and pauses it,
//! * [`threads`] maps guest threads onto a pool of vCPUs (one host thread each), and
//!   [`moving`] is a thread as it moves to another node,
//! * [`hooks`] is where the distributed crates decide where threads run and how futexes work,
//! * [`fs`] serves files and directories,
//! * [`fault`] turns a guest crash into a symbolized report,
//! * [`persist`] is the one save/restore pattern of what migrates ([`persist::Persist`],
//!   the aggregate [`vm::state::VmState`]), with [`clock`] for the guest clock,
//! * [`outcome`] says how a VM ended and holds every exit status; [`error`] why it could not
//!   start,
//! * [`arch`] holds everything specific to an instruction set, in mirrored trees;
//! * [`sys`] and [`sync`] are the few host calls and the lock helper.
//!
//! `testing` (with the `testing` feature) holds helpers for the test suites.

pub mod arch;
pub mod boot;
pub mod clock;
pub mod config;
pub mod error;
pub mod fault;
pub mod fs;
pub mod hooks;
pub mod image;
pub mod launch;
pub mod memory;
pub mod moving;
pub mod outcome;
pub mod output;
pub mod paging;
pub mod persist;
pub mod sync;
pub mod sys;
#[cfg(feature = "testing")]
pub mod testing;
pub mod threads;
pub mod timings;
pub mod vm;

pub use config::VmConfig;
pub use error::LaunchError;
pub use launch::launch;
pub use outcome::Outcome;
