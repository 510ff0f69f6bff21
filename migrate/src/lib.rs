//! Moving VMs between nodes: whole-VM live migration between nodes of the same ISA, and the
//! "home" of a VM (the node it was launched from, which keeps its output, files and exit
//! status wherever it runs). Built on `vmm` (one VM on one host), `pop-dsm` (page coherence)
//! and `net-msg` (the mesh); the `popvmm` binary routes the mesh's messages here.
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
//! The messages are encoded with [`pop_wire`].
//!
//! This is a module tree of `vmm` rather than the `migrate/` crate of DESIGN.md for now: the
//! driver pauses vCPUs and rebuilds a VM from `vmm`'s own internals (`VmShared`, `Threads`,
//! `Vcpu`), so a crate boundary would first need those split into a crate of their own. The
//! protocol lives only here, so moving it out later changes no other module.

pub mod clock;
pub mod dest;
pub mod dirty;
pub mod files;
pub mod host;
pub mod images;
pub mod page_stream;
pub mod pool;
pub mod relay;
pub mod source;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copy memory while the VM runs, then stop it briefly for the rest.
    Precopy,
    /// Resume at once at the destination; it fetches pages on demand while the source
    /// pushes the rest (the source must live until all pages moved).
    Postcopy,
}

impl Mode {
    /// The mode's name, as `popvmm migrate --mode` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Precopy => "precopy",
            Mode::Postcopy => "postcopy",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "precopy" => Ok(Mode::Precopy),
            "postcopy" => Ok(Mode::Postcopy),
            _ => Err(format!("unknown mode {s:?} (precopy or postcopy)")),
        }
    }
}
