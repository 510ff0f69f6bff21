//! Whole-VM live migration between nodes of the same ISA, and the "home" of a VM.
//!
//! * [`host`]: what a node process hosts (VMs running here, VMs whose home is here, VMs
//!   arriving), the mesh messages it answers, and `ps`;
//! * [`source`]: the pre-copy driver on the node the VM leaves;
//! * [`dest`]: assembling an arriving VM and starting it;
//! * [`page_stream`]: the image and memory of a moving VM, on a bulk stream of its own;
//! * [`pool`]: memory of VMs that left, reused by the next arrival;
//! * [`images`]: the images this process has, so that they are not sent again;
//! * [`dirty`]: which pages changed (KVM's dirty log plus the VMM's own writes);
//! * [`clock`]: carrying the guest clock over;
//! * [`relay`]: `popvmm migrate` asked of a node other than the one running the VM;
//! * [`files`]: file hypercalls of a VM away from home, served by its home node.
//!
//! The messages are encoded with [`crate::wire`].
//!
//! This is a module tree of `vmm` rather than the `migrate/` crate of DESIGN.md for now: the
//! driver pauses vCPUs and rebuilds a VM from `vmm`'s own internals (`VmShared`, `Threads`,
//! `Vcpu`), so a crate boundary would first need those split into a crate of their own. The
//! protocol lives only here, so moving it out later changes no other module.

pub mod clock;
pub mod dest;
pub mod dirty;
pub mod files;
pub mod home;
pub mod host;
pub mod images;
pub mod page_stream;
pub mod pool;
pub mod relay;
pub mod source;
pub mod uffd;

use clap::{Args, ValueEnum};

/// Message types of migration and home traffic on the mesh (the node's ping is 1).
pub mod msg {
    /// Request: a VM is about to arrive (JSON metadata). Answer: empty, or an error.
    pub const BEGIN: u16 = 10;
    // 11-13 (image, pages, sync) moved to the page stream (`super::page_stream`).
    /// One-way: one vCPU's state.
    pub const VCPU: u16 = 14;
    /// Request: the thread table and clock; the destination builds the VM and answers.
    pub const COMMIT: u16 = 15;
    /// Request: start the prepared VM (the switch-over).
    pub const GO: u16 = 16;
    /// One-way: forget an arriving VM.
    pub const ABORT: u16 = 17;
    /// One-way, to the home node: guest output.
    pub const OUTPUT: u16 = 20;
    /// One-way, to the home node: the application ended.
    pub const EXIT: u16 = 21;
    /// Request: the VMs running on a node (JSON).
    pub const LIST: u16 = 22;
    /// One-way, to the home node: the VM now runs on the sending node.
    pub const LOCATION: u16 = 23;
    /// Request (post-copy, page class): one page of the shared region, from the source.
    pub const FETCH: u16 = 24;
    /// Request (post-copy): every page was pushed (and the page stream synced); the
    /// destination stops catching faults.
    pub const DONE: u16 = 25;
    /// Request, to the home node: a file operation of a VM away from home.
    pub const FILE: u16 = 26;
    /// Request: move a VM running on the receiving node (a relayed `popvmm migrate`).
    pub const MIGRATE: u16 = 27;
    /// One-way: progress of a relayed migration, to the node that relayed it.
    pub const PROGRESS: u16 = 28;
}

/// How a VM moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copy memory while the VM runs, then stop it briefly for the rest.
    Precopy,
    /// Resume at once at the destination; it fetches pages on demand while the source
    /// pushes the rest (the source must live until all pages moved).
    Postcopy,
}

/// Options of `popvmm migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The VM: its id or its name (as `popvmm ps` shows them).
    #[arg(value_name = "VM")]
    pub vm: String,

    /// The node to move it to.
    #[arg(long, value_name = "NODE")]
    pub to: u32,

    /// How to move it.
    #[arg(long, value_enum, default_value = "precopy")]
    pub mode: Mode,

    /// Longest acceptable stop of the VM, in milliseconds (pre-copy copies in rounds until the
    /// rest fits).
    #[arg(long, value_name = "N", default_value = "5")]
    pub downtime_ms: u64,

    /// Which node to ask (the VM may run on another: this node relays the request).
    #[command(flatten)]
    pub target: crate::node::Target,
}

/// Options of `popvmm ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Which node to ask (it lists the VMs of every node it reaches).
    #[command(flatten)]
    pub target: crate::node::Target,
}
