//! `popvmm node`, `popvmm peers`, `popvmm stat` and `popvmm ping`: a long-running cluster node
//! (built on `net-msg`) and the clients that query it through its local control socket.
//!
//! * [`daemon`] runs the node: it joins the cluster and serves control requests,
//! * [`control`] is the control-socket protocol (one JSON object per line each way) and where
//!   the socket lives,
//! * [`client`] sends a control request and prints the answer as a table or as JSON.

pub mod client;
pub mod control;
pub mod daemon;

use std::path::PathBuf;

use clap::Args;

/// Options of `popvmm node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The cluster file (TOML: nodes with id, address and ISA; the shared secret's file).
    #[arg(long, value_name = "FILE")]
    pub cluster: PathBuf,

    /// This node's id in the cluster file.
    #[arg(long, value_name = "N")]
    pub id: u32,

    /// The shared secret's file (instead of the cluster file's `secret_file`).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// The local control socket (default: see `popvmm peers --help`).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// How long to keep the memory of a VM that migrated away, for the next VM that arrives
    /// with the same memory size (it then skips the kernel's zeroing of fresh memory); 0
    /// releases it at once.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub keep_memory_secs: u64,

    /// Run only on these CPUs (numbers and ranges: `0`, `2-3`, `0,4-7`), the node and the
    /// VMs that arrive alike.
    #[arg(long, value_name = "LIST", value_parser = vmm::config::parse_cpus)]
    pub cpus: Option<vmm::config::CpuList>,
}

/// How a client finds the node to ask.
#[derive(Debug, Args)]
pub struct Target {
    /// The node's control socket.
    #[arg(long, value_name = "PATH", conflicts_with = "id")]
    pub control: Option<PathBuf>,

    /// The local node with this id (its default control socket,
    /// `$XDG_RUNTIME_DIR/popvmm/nodeN.sock` or `/tmp/popvmm-UID/nodeN.sock`); without
    /// `--control` or `--id`, the only node running on this host.
    #[arg(long, value_name = "N")]
    pub id: Option<u32>,

    /// Print JSON instead of a table (`migrate`: one object a line, per progress event and a
    /// last one, `"status": "completed"` or `"failed"`, in the words of QEMU's
    /// `query-migrate`: `total-time`, `downtime`, `expected-downtime`, `ram.transferred`, ...).
    #[arg(long)]
    pub json: bool,
}

/// Options of `popvmm stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// Which node, and the output format.
    #[command(flatten)]
    pub target: Target,

    /// Set the counters to zero after printing them.
    #[arg(long)]
    pub reset: bool,
}

/// Options of `popvmm ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// Which node sends, and the output format.
    #[command(flatten)]
    pub target: Target,

    /// The node to ping.
    #[arg(long, value_name = "N")]
    pub to: u32,

    /// Round trips.
    #[arg(long, value_name = "N", default_value = "5", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,

    /// Payload bytes.
    #[arg(long, value_name = "BYTES", default_value = "64", value_parser = clap::value_parser!(u32).range(0..=262_144))]
    pub size: u32,

    /// Instead of round trips, time a bulk stream of this many MiB (even, at most 1024) to
    /// the node, received there into fresh memory as a scan's pages are.
    #[arg(long, value_name = "MIB", conflicts_with_all = ["count", "size"], value_parser = parse_stream_mib)]
    pub stream: Option<u64>,
}

/// A `--stream` size: an even number of MiB from 2 to 1024.
fn parse_stream_mib(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(m) if (2..=1024).contains(&m) && m.is_multiple_of(2) => Ok(m),
        Ok(m) => Err(format!("{m} MiB: give an even number from 2 to 1024")),
        Err(e) => Err(e.to_string()),
    }
}
