//! Everything specific to an instruction set. Each architecture module offers the same
//! surface: image identification constants, VM-wide setup ([`setup_vm`], [`write_tables`]) and
//! a [`Vcpu`] that starts guest threads, runs them and decodes their exits into the
//! architecture-neutral types defined here.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::{ELF_MACHINE, Entries, Vcpu, VcpuState, VmArch, setup_vm, write_tables};
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::{ELF_MACHINE, Entries, Vcpu, VcpuState, VmArch, setup_vm, write_tables};

/// What restoring a vCPU needs on this host (see [`crate::persist::Persist`]).
#[derive(Debug)]
pub struct VcpuArgs {
    /// A vCPU (from [`Vcpu::new`], or one that ran threads already) at the saved vCPU's
    /// index.
    pub vcpu: Vcpu,
    /// The value its counter continues from.
    pub counter: u64,
    /// How far past `counter` the vCPU's own counter may be for it to be kept as it is,
    /// when it is not behind the saved state's (0: always set).
    pub counter_slack: u64,
}

/// A hypercall a vCPU made: its number and its five argument registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallRequest {
    /// Hypercall number (see [`pop_abi::Hypercall`]).
    pub nr: u16,
    /// Arguments in calling-convention order.
    pub args: [u64; 5],
}

/// How a guest thread starts on a vCPU (see [`pop_abi::Hypercall::Spawn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadStart {
    /// Thread id.
    pub tid: u32,
    /// Instruction pointer.
    pub entry: u64,
    /// First argument register (the main thread gets the `BootInfo` address there).
    pub func: u64,
    /// Second argument register.
    pub arg: u64,
    /// Stack pointer.
    pub stack_top: u64,
    /// Thread pointer.
    pub thread_pointer: u64,
    /// Where it is to run: `None` here; `Some(node)`: it starts on a vCPU here, then moves to
    /// `node` before its first instruction (a VM whose threads are placed over the nodes).
    pub node: Option<u32>,
}

/// The state of a guest that crashed, as the architecture decodes it; [`crate::fault`] turns
/// it into a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crash {
    /// What happened, e.g. "page fault (#PF)".
    pub what: String,
    /// Details after the location, e.g. "address 0x0 (read, not present)".
    pub detail: Option<String>,
    /// Instruction pointer of the crash.
    pub pc: u64,
    /// Frame pointer at the crash, where the backtrace walk starts.
    pub frame_pointer: u64,
    /// Formatted register dump (lines indented by two spaces).
    pub registers: String,
}

/// What a vCPU stopped for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The guest made a hypercall; answer it with [`Vcpu::set_hypercall_result`] (unless it
    /// does not return) before running again.
    Hypercall(HypercallRequest),
    /// A signal interrupted `KVM_RUN` (the VMM is stopping, or nothing at all).
    Interrupted,
    /// The guest did something it cannot recover from.
    Crash(Box<Crash>),
}
