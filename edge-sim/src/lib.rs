//! `edge-sim`: a simulated aarch64 edge board for popcorn-rs.
//!
//! [`EdgeSim::start`] boots Debian's arm64 kernel with a busybox initramfs under
//! `qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu max` (TCG on an x86-64
//! host). The board's kernel runs at EL2, so `/dev/kvm` works inside it and `popvmm` built for
//! `aarch64-unknown-linux-musl` runs real aarch64 KVM guests there.
//!
//! - Commands: [`EdgeSim::run`] runs a command in the board and returns its exact stdout,
//!   stderr and exit status (an agent in the board's `/init` listens on a TCP port that QEMU
//!   forwards from 127.0.0.1).
//! - Files: the payload (e.g. `popvmm` and images) appears read-only under `/payload`
//!   (virtio-9p), which is also on `PATH`.
//! - Ports: [`EdgeSim::host_port`] / [`EdgeSim::forward`] for host -> board; the board reaches
//!   the host's 127.0.0.1 at `10.0.2.2` ([`HOST_FROM_GUEST`]). The board has no default route,
//!   so it reaches nothing else.
//! - Cache: the `.deb` files, the kernel, modules and initramfs are kept in [`cache_dir`];
//!   a warm start spends milliseconds on setup, then the boot itself (about 7 s here).
//!
//! ```no_run
//! use edge_sim::{EdgeSim, Options};
//! let board = EdgeSim::start(&Options {
//!     payload: vec![("target/aarch64-unknown-linux-musl/release/popvmm".into(), "popvmm".into())],
//!     forwards: vec![8080],
//!     ..Options::default()
//! })?;
//! let out = board.run(&["popvmm", "launch", "/payload/hello"])?;
//! assert_eq!(out.status, 0);
//! println!("{}", out.stdout_str());
//! # Ok::<(), edge_sim::Error>(())
//! ```

mod agent;
mod base;
mod board;
mod cache;
pub mod cpio;
mod error;
mod fortify_shim;
mod host;
pub mod modules;
mod monitor;
pub mod musl;
mod payload;
mod ports;
mod qemu;
mod state;

pub use agent::Output;
pub use base::{AGENT_PORT, Base};
pub use board::{EdgeSim, GUEST_ADDR, GuestCommand, HOST_FROM_GUEST, Options, Timings};
pub use error::{Error, Result};
pub use state::BoardState;

/// The cache directory used when [`Options::cache_dir`] is not set: `$EDGE_SIM_CACHE`, else
/// `$XDG_CACHE_HOME/popcorn-rs/edge-sim`, else `~/.cache/popcorn-rs/edge-sim`.
pub fn cache_dir() -> std::path::PathBuf {
    cache::default_dir()
}

/// Downloads and builds the board's base files into `cache` (or [`cache_dir`]) without
/// booting; `refresh` starts over with the newest Debian kernel. Also makes sure QEMU is
/// installed when `install` is set.
pub fn prepare(cache: Option<&std::path::Path>, install: bool, refresh: bool) -> Result<Base> {
    host::ensure_program(qemu::QEMU, qemu::QEMU_PACKAGE, install)?;
    let dir = cache.map_or_else(cache::default_dir, std::path::Path::to_path_buf);
    base::prepare(&dir, install, refresh)
}
