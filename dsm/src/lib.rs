//! Page coherence of a VM's shared region between nodes.
//!
//! Only the shared region (application-writable memory: writable ELF segments, heap, stacks,
//! TLS) is ever kept coherent; everything else of a VM is node-private and rebuilt on each
//! node. The crate knows nothing of KVM or of the VMM: it works on ranges of this process's
//! memory (the VMM's mapping of guest memory), and on pages named by their guest address.
//!
//! * [`uffd`]: the userfaultfd ioctls (missing-page faults, `UFFDIO_COPY`, `UFFDIO_MOVE`);
//! * [`directory`]: what this node holds of each page, as an explicit state machine apart
//!   from any I/O ([`directory::step`]), shared by the fault and the push paths;
//! * [`postcopy`]: the first user of the directory, a DSM in which one remote node owns every
//!   page not yet here: faults are served by fetching from it while it pushes the rest;
//! * [`protocol`]: the coherence protocol for threads of one VM on several nodes (home-based
//!   MSI), as pure state machines explored exhaustively by its tests;
//! * [`message`]: its messages on the wire;
//! * [`futex`]: the futexes of a VM spanning nodes, in one table at its origin;
//! * [`coherent`]: the protocol at work on one node's copy of a region: faults from
//!   userfaultfd, effects on memory, pins for the VMM's own accesses.
//!
//! How a page travels between nodes is the caller's business (a closure that fetches a page,
//! a [`coherent::Link`] that carries messages), so the crate is tested without a network.

pub mod coherent;
pub mod directory;
pub mod futex;
pub mod message;
pub mod postcopy;
pub mod protocol;
pub mod uffd;

/// Size of a page the DSM moves (4 KiB on both ISAs).
pub const PAGE_SIZE: u64 = 4096;

/// Why a DSM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// An address outside the region the DSM covers (from a peer: malformed input).
    #[error("{what} at {addr:#x}: outside the shared region")]
    OutsideRegion {
        /// What was addressed.
        what: &'static str,
        /// The guest address.
        addr: u64,
    },
}
