//! Errors of the messaging layer.

use std::io;

use crate::NodeId;

/// What can go wrong when sending, receiving or setting up a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a socket or a file.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The cluster file or the node options are invalid.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// The destination is not a node of the cluster (or is this node).
    #[error("node {0} is not a peer in this cluster")]
    NoSuchPeer(NodeId),
    /// No authenticated connection to the peer exists right now.
    #[error("node {0} is not connected")]
    NotConnected(NodeId),
    /// The connection to the peer was lost before the response arrived.
    #[error("connection to node {0} lost")]
    PeerLost(NodeId),
    /// No response arrived in time.
    #[error("no response from node {0} in time")]
    Timeout(NodeId),
    /// The peer's handler answered the request with an error.
    #[error("node {node} failed the request: {message}")]
    Remote {
        /// The peer.
        node: NodeId,
        /// Its error message.
        message: String,
    },
    /// The payload exceeds [`crate::frame::MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the maximum frame payload")]
    TooLarge(usize),
    /// The handshake failed (wrong secret, other protocol version, unknown node, ...).
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// A received frame was malformed.
    #[error("frame: {0}")]
    Frame(#[from] crate::frame::FrameError),
    /// A bulk stream was used out of order (a program error of the caller).
    #[error("bulk stream misuse: {0}")]
    Misuse(&'static str),
    /// The node is shutting down.
    #[error("node is shut down")]
    Shutdown,
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// A socket error (including a time-out).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection mid-handshake.
    #[error("connection closed during the handshake")]
    Closed,
    /// Not a net-msg peer.
    #[error("not a popcorn-rs node (bad magic)")]
    BadMagic,
    /// A peer speaking another protocol version.
    #[error("peer speaks protocol version {theirs}, this node speaks version {ours}")]
    Version {
        /// Ours.
        ours: u8,
        /// The peer's.
        theirs: u8,
    },
    /// The peer claimed an id that is not an acceptable peer here.
    #[error("peer claims to be node {0}, which is not an acceptable peer")]
    UnknownNode(NodeId),
    /// The peer's settings differ from ours (cluster size, frame authentication).
    #[error("peer's settings differ: {0}")]
    Mismatch(String),
    /// The peer did not prove the shared secret.
    #[error("peer failed authentication (wrong shared secret?)")]
    BadMac,
    /// The peer refused us.
    #[error("refused by the peer: {0}")]
    Refused(&'static str),
    /// A malformed field.
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
}
