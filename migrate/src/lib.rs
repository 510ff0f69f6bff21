//! Moving VMs between nodes: whole-VM live migration between nodes of the same ISA, and the
//! "home" of a VM (the node it was launched from, which keeps its output, files and exit
//! status wherever it runs). Built on `vmm` (one VM on one host), `pop-dsm` (page coherence)
//! and `net-msg` (the mesh); the `popvmm` binary routes the mesh's messages here.
//!
//! * [`msg`]: every message type between nodes, one number range per service, with typed
//!   payloads;
//! * [`registry`]: the VMs running here (`LIST`, `ps`);
//! * [`home`]: the home of a VM: its output, exit status, location and files;
//! * [`hooks`]: what a VM in a cluster sees of it (`pop::nodes()`);
//! * [`local`]: both of those, with running a VM here (what the services below build on);
//! * [`vm`]: whole-VM pre-copy and post-copy (source, destination, page stream, memory pool);
//! * [`dsm`]: the shared regions of VMs whose threads span nodes, on the mesh;
//! * [`probe`]: timed bulk streams between node processes (`popvmm ping --stream`);
//! * [`relay`]: `popvmm migrate` asked of a node other than the one running the VM;
//! * [`report`]: a migration's steps and summary;
//! * [`thread`]: threads of one VM on several nodes (shells, arrivals, futexes, joins);
//! * [`host`]: the services of one node process put together;
//! * [`error`]: failures by kind.
//!
//! The scheduler (`sched/`) and cross-ISA state (`xisa/`) will be modules beside these,
//! with message ranges of their own (see [`msg`]).

pub mod dsm;
pub mod error;
pub mod home;
pub mod hooks;
pub mod host;
pub mod local;
pub mod msg;
pub mod probe;
pub mod registry;
pub mod relay;
pub mod report;
pub mod thread;
pub mod vm;

use std::sync::Arc;

use net_msg::{Incoming, Node};

pub use error::{Error, Result};

/// A service of the mesh: handles the messages of its range of [`msg::MsgType`]s.
pub trait Service: Send + Sync {
    /// Handles message `m` of type `t`, arrived at `node` (this one). An error is logged
    /// and, for a request, sent back as its answer.
    fn handle(&self, node: &Arc<Node>, t: msg::MsgType, m: &mut Incoming) -> Result<()>;
}

pub(crate) use vmm::sync::lock;

/// For the tests of failures (built with the `testing` feature only): with
/// `POPVMM_TEST_DIE_ON=pages` (or `commit`, `go`) in its environment, a destination node
/// process dies abruptly when that message arrives, as a crashed host would; with `push`, a
/// post-copy source dies right after the switch-over.
#[cfg(feature = "testing")]
pub(crate) fn test_hook(point: &str) {
    static DIE_ON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let die_on = DIE_ON.get_or_init(|| std::env::var("POPVMM_TEST_DIE_ON").ok());
    if die_on.as_deref() == Some(point) {
        // SAFETY: `_exit` ends the process at once, which is the point: no cleanup, like a
        // crash.
        unsafe { libc::_exit(137) };
    }
}

/// Without the `testing` feature there are no failure hooks.
#[cfg(not(feature = "testing"))]
#[inline(always)]
pub(crate) fn test_hook(_point: &str) {}

/// Whether this node's DSM regions use userfaultfd write-protect where the kernel has it.
/// For the tests (the `testing` feature only), `POPVMM_TEST_NO_WRITE_PROTECT=1` makes a node
/// behave as on a kernel without it (arm64 before Linux 6.10).
pub(crate) fn write_protect_wanted() -> bool {
    #[cfg(feature = "testing")]
    if std::env::var_os("POPVMM_TEST_NO_WRITE_PROTECT").is_some_and(|v| v == "1") {
        return false;
    }
    true
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

impl pop_wire::Encode for Mode {
    fn encode(&self, e: &mut pop_wire::Encoder) {
        e.u8(match self {
            Mode::Precopy => 1,
            Mode::Postcopy => 2,
        });
    }
}

impl pop_wire::Decode for Mode {
    fn decode(d: &mut pop_wire::Decoder<'_>) -> std::result::Result<Self, pop_wire::WireError> {
        match d.u8()? {
            1 => Ok(Mode::Precopy),
            2 => Ok(Mode::Postcopy),
            _ => Err(pop_wire::WireError("bad migration mode")),
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s {
            "precopy" => Ok(Mode::Precopy),
            "postcopy" => Ok(Mode::Postcopy),
            _ => Err(format!("unknown mode {s:?} (precopy or postcopy)")),
        }
    }
}
