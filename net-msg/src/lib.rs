//! `net-msg`: authenticated messaging between popcorn-rs nodes.
//!
//! A cluster of up to [`cluster::MAX_NODES`] nodes is described by a cluster file
//! ([`cluster::ClusterConfig`]): per node an id, an address (TCP or a Unix-domain socket) and
//! an ISA, plus a shared secret. Every node runs a [`Node`], which keeps one authenticated
//! connection to every other node (a full mesh: the higher id dials), and lets any number of
//! threads [`Node::send`] one-way messages and [`Node::request`] responses at once.
//!
//! - [`handshake`]: mutual HMAC-SHA256 challenge-response over fresh nonces; derives per-
//!   direction session keys.
//! - [`frame`]: the bounded frame codec (version, kind, priority, type, length, correlation),
//!   with an AEGIS-128X2 MAC tag per frame and implicit sequence numbers (the nonces).
//! - `connection` (internal): per-priority send queues, one reader thread and one writer
//!   thread per connection; idle connections are written directly by the caller.
//! - [`stream`]: bulk streams, connections of their own for large transfers (records read
//!   and written by the caller's thread, straight from and into the caller's memory).
//! - [`stats`]: messages and bytes per message type.
//! - [`transport`]: TCP and Unix-domain sockets.
//!
//! Malformed input closes the offending connection with a logged error (`tracing`); no input
//! can make a node panic or allocate more than [`frame::MAX_PAYLOAD`] for one frame.

pub mod cluster;
mod connection;
pub mod error;
pub mod frame;
pub mod handshake;
mod node;
pub mod stats;
pub mod stream;
pub mod transport;

pub use cluster::{Address, ClusterConfig, NodeSpec, Secret};
pub use error::{Error, Result};
pub use frame::Priority;
pub use node::{
    Handler, Incoming, Node, NodeOptions, PeerEvent, PeerInfo, PeerState, PendingReply, Responder,
};
pub use pop_abi::Isa;
pub use stats::{Counters, StatsSnapshot};
pub use stream::{BulkStream, RecordHead, SharedBytes, StreamCloser};

/// A node's id: its index in the cluster file.
pub type NodeId = u32;
