//! The cluster file: which nodes exist, where they listen, their ISA, and the shared secret.
//!
//! ```toml
//! # The shared secret: a file next to this one (at least 16 bytes; keep it private).
//! secret_file = "cluster.secret"
//! # Optional: heartbeat period in milliseconds (default 500); a peer silent for
//! # `heartbeat_misses` periods (default 3) is declared lost.
//! heartbeat_ms = 500
//! # Optional: authenticate every frame after the handshake (default true).
//! frame_mac = true
//! # Optional: how long a connection's reader polls for the next frame after one, in
//! # microseconds (default 500; 0: it sleeps in its read at once). Polling spends CPU while
//! # a peer is busy talking to this node; it saves the wake-up of a sleeping thread and CPU.
//! poll_us = 500
//!
//! [[node]]            # node 0 first, then 1, 2, ... (like Popcorn's node list)
//! id = 0
//! address = "127.0.0.1:7100"      # TCP host:port
//! isa = "x86_64"
//!
//! [[node]]
//! id = 1
//! address = "unix:/run/popcorn/node1.sock"   # a Unix-domain socket (nodes on one host)
//! isa = "aarch64"
//!
//! [[node]]            # behind NAT: an edge board under QEMU's user network
//! id = 2
//! address = "127.0.0.1:7102"      # where the others dial it (a port forwarded to it)
//! listen = "0.0.0.0:7000"         # where it listens, inside the board
//! loopback_at = "10.0.2.2"        # where it reaches the host's 127.0.0.1
//! isa = "aarch64"
//! ```
//!
//! A node dials a peer at the peer's `address`, except that a node with `loopback_at`
//! dials addresses on 127.0.0.1 at that IP instead (the same port): so one file serves the
//! host and its boards, whose loopback is their own.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pop_abi::Isa;
use serde::Deserialize;

use crate::NodeId;
use crate::error::{Error, Result};

/// Most nodes in a cluster.
pub const MAX_NODES: usize = 64;
/// Shortest accepted shared secret, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest accepted cluster file or secret file, in bytes.
const MAX_FILE_LEN: u64 = 1 << 20;
/// How long a reader polls after a frame unless the file says (microseconds): longer than a
/// thread's move takes a direction on loopback, so a move there and back wakes no reader.
const DEFAULT_POLL_US: u64 = 500;
/// Longest poll a cluster file may ask for (microseconds).
const MAX_POLL_US: u64 = 10_000;

/// A socket address of a node: a TCP `host:port` or a Unix socket path (where peers dial
/// it, or where it listens).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix-domain stream socket at this path.
    Unix(PathBuf),
}

impl Address {
    /// Parses `host:port` or `unix:PATH`.
    pub fn parse(s: &str) -> Result<Address> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::Config("empty Unix socket path".into()));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let s = s.strip_prefix("tcp:").unwrap_or(s);
        let addr = s
            .to_socket_addrs()
            .map_err(|e| Error::Config(format!("address {s:?}: {e}")))?
            .next()
            .ok_or_else(|| Error::Config(format!("address {s:?} resolves to nothing")))?;
        Ok(Address::Tcp(addr))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its id (its index in the node list).
    pub id: NodeId,
    /// Where the others dial it.
    pub address: Address,
    /// Where it listens (its `address` unless the file says).
    pub listen: Address,
    /// Where it reaches the host's 127.0.0.1, if not there (a board behind NAT).
    pub loopback_at: Option<IpAddr>,
    /// Its ISA.
    pub isa: Isa,
}

/// The shared secret (its bytes are never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from bytes; at least [`MIN_SECRET_LEN`] of them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(Error::Config(format!(
                "the shared secret has {} bytes, at least {MIN_SECRET_LEN} are needed",
                bytes.len()
            )));
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file (trailing newlines are not part of the secret).
    pub fn from_file(path: &Path) -> Result<Secret> {
        let bytes = read_bounded(path)?;
        let end = bytes
            .iter()
            .rposition(|&b| b != b'\n' && b != b'\r')
            .map_or(0, |i| i + 1);
        Secret::new(&bytes[..end]).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The secret's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// A parsed, validated cluster file.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The nodes, in id order (node `i` at index `i`).
    pub nodes: Vec<NodeSpec>,
    /// The secret named by `secret_file` (if the file names one).
    pub secret: Option<Secret>,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Periods of silence after which a peer is declared lost.
    pub heartbeat_misses: u32,
    /// Whether every frame carries a tag.
    pub frame_mac: bool,
    /// How long after a connection's last frame (sent or received) its reader polls for the
    /// next one, yielding the CPU between polls, before it sleeps in its read.
    pub poll: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    secret_file: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    heartbeat_misses: Option<u32>,
    frame_mac: Option<bool>,
    poll_us: Option<u64>,
    #[serde(default)]
    node: Vec<RawNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: NodeId,
    address: String,
    listen: Option<String>,
    loopback_at: Option<String>,
    isa: String,
}

impl ClusterConfig {
    /// Reads a cluster file; a relative `secret_file` is taken relative to its directory.
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text = String::from_utf8(read_bounded(path)?)
            .map_err(|_| Error::Config(format!("{}: not UTF-8", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Parses a cluster file's text; `dir` anchors a relative `secret_file`.
    pub fn parse(text: &str, dir: &Path) -> Result<ClusterConfig> {
        let raw: RawCluster = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        if raw.node.is_empty() {
            return Err(Error::Config("no [[node]] entries".into()));
        }
        if raw.node.len() > MAX_NODES {
            return Err(Error::Config(format!("more than {MAX_NODES} nodes")));
        }
        let mut nodes = Vec::with_capacity(raw.node.len());
        for (i, n) in raw.node.into_iter().enumerate() {
            if n.id as usize != i {
                return Err(Error::Config(format!(
                    "node ids must be 0, 1, 2, ... in order: entry {i} has id {}",
                    n.id
                )));
            }
            let address = Address::parse(&n.address)?;
            let isa = Isa::from_name(&n.isa).ok_or_else(|| {
                Error::Config(format!(
                    "node {i}: unknown isa {:?} (x86_64 or aarch64)",
                    n.isa
                ))
            })?;
            if nodes.iter().any(|m: &NodeSpec| m.address == address) {
                return Err(Error::Config(format!("address {address} used twice")));
            }
            let listen = match &n.listen {
                Some(l) => Address::parse(l)?,
                None => address.clone(),
            };
            let loopback_at = match &n.loopback_at {
                Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
                    Error::Config(format!("node {i}: loopback_at {ip:?} is not an IP address"))
                })?),
                None => None,
            };
            nodes.push(NodeSpec {
                id: n.id,
                address,
                listen,
                loopback_at,
                isa,
            });
        }
        let heartbeat_ms = raw.heartbeat_ms.unwrap_or(500);
        if !(10..=60_000).contains(&heartbeat_ms) {
            return Err(Error::Config(
                "heartbeat_ms must be within 10..=60000".into(),
            ));
        }
        let heartbeat_misses = raw.heartbeat_misses.unwrap_or(3);
        if !(2..=100).contains(&heartbeat_misses) {
            return Err(Error::Config(
                "heartbeat_misses must be within 2..=100".into(),
            ));
        }
        let poll_us = raw.poll_us.unwrap_or(DEFAULT_POLL_US);
        if poll_us > MAX_POLL_US {
            return Err(Error::Config(format!(
                "poll_us must be within 0..={MAX_POLL_US}"
            )));
        }
        let secret = match raw.secret_file {
            Some(f) => Some(Secret::from_file(&dir.join(f))?),
            None => None,
        };
        Ok(ClusterConfig {
            nodes,
            secret,
            heartbeat: Duration::from_millis(heartbeat_ms),
            heartbeat_misses,
            frame_mac: raw.frame_mac.unwrap_or(true),
            poll: Duration::from_micros(poll_us),
        })
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> Option<&NodeSpec> {
        self.nodes.get(id as usize)
    }

    /// Where node `from` dials node `to` (see the module documentation): `to`'s address, on
    /// `from`'s `loopback_at` if it is on 127.0.0.1 and `from` has one.
    pub fn dial_address(&self, from: NodeId, to: NodeId) -> Option<Address> {
        let address = self.node(to)?.address.clone();
        let via = self.node(from)?.loopback_at;
        Some(match (address, via) {
            (Address::Tcp(a), Some(ip)) if a.ip().is_loopback() => {
                Address::Tcp(SocketAddr::new(ip, a.port()))
            }
            (a, _) => a,
        })
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let f =
        std::fs::File::open(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(Error::Config(format!("{}: file too large", path.display())));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_cluster_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "0123456789abcdef0123\n").unwrap();
        let c = ClusterConfig::parse(
            r#"secret_file = "s"
            heartbeat_ms = 100
            [[node]]
            id = 0
            address = "127.0.0.1:7100"
            isa = "x86_64"
            [[node]]
            id = 1
            address = "unix:/tmp/x.sock"
            isa = "aarch64"
            "#,
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[1].address, Address::Unix("/tmp/x.sock".into()));
        assert_eq!(c.nodes[1].isa, Isa::Aarch64);
        assert_eq!(c.secret.unwrap().bytes(), b"0123456789abcdef0123");
        assert_eq!(c.heartbeat, Duration::from_millis(100));
        assert!(c.frame_mac);
        assert_eq!(c.poll, Duration::from_micros(DEFAULT_POLL_US));
    }

    #[test]
    fn a_node_behind_nat_listens_apart_and_reaches_the_host_loopback_elsewhere() {
        let c = ClusterConfig::parse(
            r#"
            [[node]]
            id = 0
            address = "127.0.0.1:7100"
            isa = "x86_64"
            [[node]]
            id = 1
            address = "127.0.0.1:7101"
            listen = "0.0.0.0:7000"
            loopback_at = "10.0.2.2"
            isa = "aarch64"
            [[node]]
            id = 2
            address = "unix:/tmp/n2.sock"
            isa = "aarch64"
            "#,
            Path::new("."),
        )
        .unwrap();
        let tcp = |s: &str| Address::Tcp(s.parse().unwrap());
        assert_eq!(c.nodes[0].listen, c.nodes[0].address);
        assert_eq!(c.nodes[1].listen, tcp("0.0.0.0:7000"));
        // The host dials the board at its forwarded port; the board dials the host (and any
        // other port forwarded on the host) through its gateway.
        assert_eq!(c.dial_address(0, 1), Some(tcp("127.0.0.1:7101")));
        assert_eq!(c.dial_address(1, 0), Some(tcp("10.0.2.2:7100")));
        assert_eq!(
            c.dial_address(1, 2),
            Some(Address::Unix("/tmp/n2.sock".into()))
        );
        assert_eq!(c.dial_address(0, 3), None);
        let bad = "[[node]]\nid = 0\naddress = \"127.0.0.1:1\"\nloopback_at = \"gateway\"\n\
                   isa = \"x86_64\"\n";
        let e = ClusterConfig::parse(bad, Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("not an IP address"), "{e}");
    }

    #[test]
    fn rejects_bad_cluster_files() {
        let d = Path::new(".");
        let node = |id: u32, addr: &str| {
            format!("[[node]]\nid = {id}\naddress = \"{addr}\"\nisa = \"x86_64\"\n")
        };
        for (text, what) in [
            (String::new(), "no [[node]]"),
            (node(1, "127.0.0.1:1"), "in order"),
            (
                node(0, "127.0.0.1:1") + &node(1, "127.0.0.1:1"),
                "used twice",
            ),
            (node(0, "unix:"), "empty Unix"),
            (
                "heartbeat_ms = 1\n".to_string() + &node(0, "127.0.0.1:1"),
                "heartbeat_ms",
            ),
            (
                "poll_us = 10001\n".to_string() + &node(0, "127.0.0.1:1"),
                "poll_us must be within 0..=10000",
            ),
            (
                "bogus = 1\n".to_string() + &node(0, "127.0.0.1:1"),
                "unknown field",
            ),
            (
                node(0, "127.0.0.1:1").replace("x86_64", "mips"),
                "unknown isa \"mips\"",
            ),
        ] {
            let e = ClusterConfig::parse(&text, d).unwrap_err().to_string();
            assert!(e.contains(what), "{e:?} lacks {what:?}");
        }
        assert!(Secret::new(&b"short"[..]).is_err());
    }
}
