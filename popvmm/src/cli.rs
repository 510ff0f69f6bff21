//! The command line of `popvmm`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use vmm::config::{self, Mount, VmConfig};

use crate::node::Target;

/// Runs Rust applications built with `cargo pop build` in lightweight KVM virtual machines.
#[derive(Debug, Parser)]
#[command(name = "popvmm", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an application image in a new VM
    ///
    /// popvmm exits with the application's exit status; with 125 if the VM cannot be
    /// started (the error is one line on stderr), 134 if the application aborts (panics) and
    /// 139 if it crashes (a report with a backtrace goes to stderr).
    Launch(LaunchArgs),
    /// Run a cluster node: join the mesh described by a cluster file and serve control
    /// requests (peers, stat, ping) on a local Unix socket until told to stop
    Node(crate::node::NodeArgs),
    /// List the cluster's nodes as a running node sees them (`*` marks that node)
    Peers(crate::node::Target),
    /// Messages and bytes a running node sent and received, per message type, and MB/s
    Stat(crate::node::StatArgs),
    /// Round trips from a running node to another node of its cluster
    Ping(crate::node::PingArgs),
    /// List the VMs running in the cluster (name, id, node, home, threads, memory, state)
    Ps(PsArgs),
    /// Move a running VM to another node of the same ISA, without stopping it for long
    Migrate(MigrateArgs),
}

/// Options of `popvmm launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Application memory (heap, stacks, writable data), with an optional K, M or G suffix;
    /// rounded up to a multiple of 2M, at most 64G.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = config::parse_memory)]
    pub memory: u64,

    /// Set an environment variable in the guest (repeatable); the guest sees no other.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = config::parse_env)]
    pub env: Vec<OsString>,

    /// Make a host directory visible to the guest (repeatable), read-only unless `:rw` is
    /// given; without mounts the guest sees no host files.
    #[arg(long = "mount", value_name = "HOST_DIR:GUEST_DIR[:rw]", value_parser = config::parse_mount)]
    pub mounts: Vec<Mount>,

    /// Give the guest no `/tmp` of its own (by default it gets an empty, writable one in the
    /// host's memory, private to the VM and removed with it, unless `--mount` puts a
    /// directory there).
    #[arg(long)]
    pub no_tmp: bool,

    /// Most threads that may exist at once, main thread included (1 to 128).
    #[arg(long, value_name = "N", default_value = "64", value_parser = config::parse_max_threads)]
    pub max_threads: u32,

    /// Run only on these CPUs (numbers and ranges: `0`, `2-3`, `0,4-7`), the VMM and the
    /// guest's threads alike.
    #[arg(long, value_name = "LIST", value_parser = config::parse_cpus)]
    pub cpus: Option<config::CpuList>,

    /// Print the time of each launch phase to stderr when the guest exits.
    #[arg(long)]
    pub timings: bool,

    /// Join this cluster (as node `--id`) so that the VM can be listed and migrated; this
    /// process stays the VM's home: its output and exit status arrive here.
    #[arg(long, value_name = "FILE", requires = "id")]
    pub cluster: Option<PathBuf>,

    /// This node's id in the cluster file (with `--cluster`).
    #[arg(long, value_name = "N", requires = "cluster")]
    pub id: Option<u32>,

    /// Start the application's new threads round-robin over the cluster's nodes of its ISA
    /// that are up (this one first); the main thread starts here (with `--cluster`).
    #[arg(long, requires = "cluster")]
    pub spread: bool,

    /// The application image (an ELF built with `cargo pop build`); also the guest's `argv[0]`.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,

    /// Arguments passed to the application: everything after `IMAGE` (or after `--`), so
    /// that `popvmm launch --` serves as cargo's `runner` (`RUNNER EXE ARGS...`).
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<OsString>,
}

impl LaunchArgs {
    /// The VM configuration these options describe.
    pub fn to_config(&self) -> VmConfig {
        let mut args = vec![self.image.clone().into_os_string()];
        args.extend(self.args.iter().cloned());
        VmConfig {
            memory: self.memory,
            env: self.env.clone(),
            mounts: self.mounts.clone(),
            scratch_tmp: !self.no_tmp,
            max_threads: self.max_threads,
            args,
            timings: self.timings,
            ..VmConfig::default()
        }
    }
}

/// Options of `popvmm migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The VM: its id or its name (as `popvmm ps` shows them).
    #[arg(value_name = "VM")]
    pub vm: String,

    /// The node to move it to.
    #[arg(long, value_name = "NODE", required_unless_present = "cancel")]
    pub to: Option<u32>,

    /// Stop the VM's migration under way (asked with another `popvmm migrate`) before its
    /// switch-over: that migration fails, and the VM runs on where it was. A post-copy past
    /// its switch-over cannot be stopped.
    #[arg(long, conflicts_with_all = ["to", "thread", "mode", "downtime_ms"])]
    pub cancel: bool,

    /// Move only this thread of the VM (its tid, as `popvmm ps --threads` shows it), at
    /// whatever instruction it is; the rest of the VM stays where it runs.
    #[arg(long, value_name = "TID", conflicts_with_all = ["mode", "downtime_ms"])]
    pub thread: Option<u32>,

    /// How to move it.
    #[arg(long, value_name = "MODE", default_value = "precopy", value_parser = mode_parser())]
    pub mode: pop_migrate::Mode,

    /// Longest acceptable stop of the VM, in milliseconds (pre-copy copies in rounds until the
    /// rest fits).
    #[arg(long, value_name = "N", default_value = "5")]
    pub downtime_ms: u64,

    /// Which node to ask (the VM may run on another: this node relays the request).
    #[command(flatten)]
    pub target: Target,
}

/// Options of `popvmm ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// List every thread of every VM, with its node and state (running, blocked,
    /// migrating).
    #[arg(long)]
    pub threads: bool,

    /// Which node to ask (it lists the VMs of every node it reaches).
    #[command(flatten)]
    pub target: Target,
}

/// `--mode`: how a VM moves (clap lists the names in the help and in errors).
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = pop_migrate::Mode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new([
        pop_migrate::Mode::Precopy.name(),
        pop_migrate::Mode::Postcopy.name(),
    ])
    .map(|name| name.parse().expect("a listed mode"))
}
