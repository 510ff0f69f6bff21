//! The handshake: mutual challenge-response proof of the cluster's shared secret.
//!
//! The node with the higher id dials (the *initiator*); the other answers (the *responder*).
//! A bulk stream ([`crate::stream`]) is dialled by whichever node opens it, with its kind in
//! the Hello (so in the transcript both MACs and the keys cover).
//!
//! ```text
//! initiator -> responder  Hello  (56 bytes): magic "POPCNMSG", version u8, flags u8
//!                         (bit 0: frame tags), stream kind u16 (0: the mesh connection),
//!                         from u32, to u32, cluster size u32, nonce_i [32]
//! responder -> initiator  Reply  (80 bytes): magic, version u8, status u8, flags u8, 0u8,
//!                         from u32, nonce_r [32], mac_r [32]
//! initiator -> responder  Auth   (32 bytes): mac_i
//! responder -> initiator  Verdict (1 byte):  status
//!
//! T     = Hello || Reply without mac_r
//! mac_r = HMAC-SHA256(secret, "popcorn-rs net-msg responder" || T)
//! mac_i = HMAC-SHA256(secret, "popcorn-rs net-msg initiator" || T || mac_r)
//! keys  = HMAC-SHA256(secret, "popcorn-rs net-msg key i->r" || T), likewise "r->i"
//! ```
//!
//! Both nonces are fresh (from the OS), so a recorded handshake cannot be replayed, and the
//! different labels stop a peer's MAC from being reflected back to it. MACs are checked in
//! constant time (`hmac`'s `verify_slice`). Every message has a fixed size, so nothing in the
//! handshake is length-prefixed. The magic and version come first in both directions in every
//! protocol version, so a peer of another version is told so and refused with a clear error.

use std::io::{self, Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::NodeId;
use crate::cluster::Secret;
use crate::frame::{FrameMac, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// The first bytes of every connection.
pub const MAGIC: [u8; 8] = *b"POPCNMSG";
const HELLO_LEN: usize = 56;
const REPLY_LEN: usize = 80;
const MAC_LEN: usize = 32;
const NONCE_LEN: usize = 32;
const FLAG_FRAME_MAC: u8 = 1;

/// Status codes of the Reply and Verdict messages.
mod status {
    pub const OK: u8 = 0;
    pub const VERSION: u8 = 1;
    pub const UNKNOWN_NODE: u8 = 2;
    pub const MISMATCH: u8 = 3;
    pub const AUTH_FAILED: u8 = 4;
}

pub use crate::error::HandshakeError;

/// What both sides must agree on.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// The cluster's shared secret.
    pub secret: &'a Secret,
    /// This node's id.
    pub local: NodeId,
    /// The number of nodes in the cluster.
    pub nodes: u32,
    /// Whether frames carry tags.
    pub frame_mac: bool,
}

/// An authenticated connection's keys.
#[derive(Debug)]
pub struct Session {
    /// The peer's (proven) id.
    pub peer: NodeId,
    /// 0 for the mesh connection, else the kind of bulk stream the initiator opened.
    pub stream_kind: u16,
    /// Tags our frames (None if frame authentication is off).
    pub send_mac: Option<FrameMac>,
    /// Checks the peer's frames.
    pub recv_mac: Option<FrameMac>,
}

fn refusal(code: u8) -> &'static str {
    match code {
        status::VERSION => "other protocol version",
        status::UNKNOWN_NODE => "unknown node id",
        status::MISMATCH => "cluster settings differ",
        status::AUTH_FAILED => "authentication failed (wrong shared secret?)",
        _ => "unknown reason",
    }
}

fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| io::Error::other(format!("no randomness: {e}")))?;
    Ok(n)
}

fn mac(secret: &Secret, label: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret.bytes()).expect("HMAC takes any key length");
    m.update(label);
    for p in parts {
        m.update(p);
    }
    m
}

fn key(secret: &Secret, label: &[u8], transcript: &[&[u8]]) -> [u8; 32] {
    mac(secret, label, transcript)
        .finalize()
        .into_bytes()
        .into()
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), HandshakeError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HandshakeError::Closed,
        _ => HandshakeError::Io(e),
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn session_keys(
    p: &Params,
    peer: NodeId,
    stream_kind: u16,
    t: &[&[u8]],
    initiator: bool,
) -> Session {
    let (i2r, r2i) = if p.frame_mac {
        (
            Some(FrameMac::new(key(
                p.secret,
                b"popcorn-rs net-msg key i->r",
                t,
            ))),
            Some(FrameMac::new(key(
                p.secret,
                b"popcorn-rs net-msg key r->i",
                t,
            ))),
        )
    } else {
        (None, None)
    };
    let (send_mac, recv_mac) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    Session {
        peer,
        stream_kind,
        send_mac,
        recv_mac,
    }
}

/// Runs the initiator's side of the mesh connection to node `peer`.
pub fn initiate<S: Read + Write>(
    s: &mut S,
    p: &Params,
    peer: NodeId,
) -> Result<Session, HandshakeError> {
    initiate_stream(s, p, peer, 0)
}

/// Runs the initiator's side of a connection to node `peer`: the mesh connection if
/// `stream_kind` is 0, else a bulk stream of that kind.
pub fn initiate_stream<S: Read + Write>(
    s: &mut S,
    p: &Params,
    peer: NodeId,
    stream_kind: u16,
) -> Result<Session, HandshakeError> {
    let mut hello = [0u8; HELLO_LEN];
    hello[..8].copy_from_slice(&MAGIC);
    hello[8] = PROTOCOL_VERSION;
    hello[9] = if p.frame_mac { FLAG_FRAME_MAC } else { 0 };
    hello[10..12].copy_from_slice(&stream_kind.to_le_bytes());
    hello[12..16].copy_from_slice(&p.local.to_le_bytes());
    hello[16..20].copy_from_slice(&peer.to_le_bytes());
    hello[20..24].copy_from_slice(&p.nodes.to_le_bytes());
    hello[24..56].copy_from_slice(&nonce()?);
    s.write_all(&hello)?;
    s.flush()?;

    let mut reply = [0u8; REPLY_LEN];
    read_exact(s, &mut reply[..10])?;
    if reply[..8] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    if reply[8] != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: reply[8],
        });
    }
    if reply[9] != status::OK {
        return Err(HandshakeError::Refused(refusal(reply[9])));
    }
    read_exact(s, &mut reply[10..])?;
    let from = u32_at(&reply, 12);
    if from != peer {
        return Err(HandshakeError::UnknownNode(from));
    }
    let (t_reply, mac_r) = reply.split_at(REPLY_LEN - MAC_LEN);
    mac(
        p.secret,
        b"popcorn-rs net-msg responder",
        &[&hello, t_reply],
    )
    .verify_slice(mac_r)
    .map_err(|_| HandshakeError::BadMac)?;
    let mac_i = mac(
        p.secret,
        b"popcorn-rs net-msg initiator",
        &[&hello, t_reply, mac_r],
    )
    .finalize()
    .into_bytes();
    s.write_all(&mac_i)?;
    s.flush()?;
    let mut verdict = [0u8; 1];
    read_exact(s, &mut verdict)?;
    if verdict[0] != status::OK {
        return Err(HandshakeError::Refused(refusal(verdict[0])));
    }
    Ok(session_keys(p, peer, stream_kind, &[&hello, t_reply], true))
}

/// Runs the responder's side; `acceptable` says which claimed peer ids may connect, for the
/// mesh connection (stream kind 0) or a bulk stream of the given kind.
pub fn respond<S: Read + Write>(
    s: &mut S,
    p: &Params,
    acceptable: impl Fn(NodeId, u16) -> bool,
) -> Result<Session, HandshakeError> {
    let mut hello = [0u8; HELLO_LEN];
    read_exact(s, &mut hello[..9])?;
    if hello[..8] != MAGIC {
        return Err(HandshakeError::BadMagic);
    }
    let mut reply = [0u8; REPLY_LEN];
    reply[..8].copy_from_slice(&MAGIC);
    reply[8] = PROTOCOL_VERSION;
    reply[10] = if p.frame_mac { FLAG_FRAME_MAC } else { 0 };
    reply[12..16].copy_from_slice(&p.local.to_le_bytes());
    let refuse = |s: &mut S, reply: &mut [u8; REPLY_LEN], code: u8| {
        reply[9] = code;
        // Best effort: the connection is dropped anyway.
        let _ = s.write_all(&reply[..]).and_then(|_| s.flush());
    };
    if hello[8] != PROTOCOL_VERSION {
        refuse(s, &mut reply, status::VERSION);
        return Err(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: hello[8],
        });
    }
    read_exact(s, &mut hello[9..])?;
    if hello[9] & !FLAG_FRAME_MAC != 0 {
        refuse(s, &mut reply, status::MISMATCH);
        return Err(HandshakeError::Malformed("reserved bits set"));
    }
    let (from, to, nodes) = (u32_at(&hello, 12), u32_at(&hello, 16), u32_at(&hello, 20));
    if to != p.local {
        refuse(s, &mut reply, status::UNKNOWN_NODE);
        return Err(HandshakeError::Mismatch(format!(
            "peer dialled node {to}, this is node {}",
            p.local
        )));
    }
    let stream_kind = u16::from_le_bytes([hello[10], hello[11]]);
    if !acceptable(from, stream_kind) {
        refuse(s, &mut reply, status::UNKNOWN_NODE);
        return Err(HandshakeError::UnknownNode(from));
    }
    let their_mac = hello[9] & FLAG_FRAME_MAC != 0;
    if nodes != p.nodes || their_mac != p.frame_mac {
        refuse(s, &mut reply, status::MISMATCH);
        return Err(HandshakeError::Mismatch(format!(
            "peer has {nodes} nodes and frame tags {}, this node {} and {}",
            if their_mac { "on" } else { "off" },
            p.nodes,
            if p.frame_mac { "on" } else { "off" }
        )));
    }
    reply[16..48].copy_from_slice(&nonce()?);
    let t_reply = &reply[..REPLY_LEN - MAC_LEN];
    let mac_r = mac(
        p.secret,
        b"popcorn-rs net-msg responder",
        &[&hello, t_reply],
    )
    .finalize()
    .into_bytes();
    let mut full = reply;
    full[REPLY_LEN - MAC_LEN..].copy_from_slice(&mac_r);
    s.write_all(&full)?;
    s.flush()?;
    let mut mac_i = [0u8; MAC_LEN];
    read_exact(s, &mut mac_i)?;
    let t_reply = &full[..REPLY_LEN - MAC_LEN];
    if mac(
        p.secret,
        b"popcorn-rs net-msg initiator",
        &[&hello, t_reply, &mac_r],
    )
    .verify_slice(&mac_i)
    .is_err()
    {
        let _ = s.write_all(&[status::AUTH_FAILED]).and_then(|_| s.flush());
        return Err(HandshakeError::BadMac);
    }
    s.write_all(&[status::OK])?;
    s.flush()?;
    Ok(session_keys(
        p,
        from,
        stream_kind,
        &[&hello, t_reply],
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn run(
        secret_i: &[u8],
        secret_r: &[u8],
        mac_i: bool,
        mac_r: bool,
    ) -> (
        Result<Session, HandshakeError>,
        Result<Session, HandshakeError>,
    ) {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let si = Secret::new(secret_i).unwrap();
        let sr = Secret::new(secret_r).unwrap();
        let t = std::thread::spawn(move || {
            let p = Params {
                secret: &sr,
                local: 0,
                nodes: 3,
                frame_mac: mac_r,
            };
            respond(&mut b, &p, |id, kind| id == 2 && kind == 0)
        });
        let p = Params {
            secret: &si,
            local: 2,
            nodes: 3,
            frame_mac: mac_i,
        };
        let i = initiate(&mut a, &p, 0);
        drop(a);
        (i, t.join().unwrap())
    }

    #[test]
    fn same_secret_agrees_on_keys() {
        let (i, r) = run(b"0123456789abcdef", b"0123456789abcdef", true, true);
        let (mut i, mut r) = (i.unwrap(), r.unwrap());
        assert_eq!((i.peer, r.peer), (0, 2));
        let h = [0u8; crate::frame::HEADER_LEN];
        let tag = i.send_mac.as_mut().unwrap().tag(&h, b"x");
        assert!(r.recv_mac.as_mut().unwrap().verify(&h, b"x", &tag));
        let tag = r.send_mac.as_mut().unwrap().tag(&h, b"y");
        assert!(i.recv_mac.as_mut().unwrap().verify(&h, b"y", &tag));
    }

    #[test]
    fn wrong_secret_is_refused_both_ways() {
        let (i, r) = run(b"0123456789abcdef", b"0123456789abcdeX", true, true);
        assert!(matches!(i, Err(HandshakeError::BadMac)), "{i:?}");
        assert!(matches!(r, Err(HandshakeError::Closed)), "{r:?}");
    }

    #[test]
    fn frame_mac_settings_must_match() {
        let (i, r) = run(b"0123456789abcdef", b"0123456789abcdef", true, false);
        assert!(matches!(i, Err(HandshakeError::Refused(_))), "{i:?}");
        assert!(matches!(r, Err(HandshakeError::Mismatch(_))), "{r:?}");
    }

    #[test]
    fn other_version_gets_a_clear_error() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let s = Secret::new(&b"0123456789abcdef"[..]).unwrap();
            let p = Params {
                secret: &s,
                local: 0,
                nodes: 3,
                frame_mac: true,
            };
            respond(&mut b, &p, |_, _| true)
        });
        let mut hello = [0u8; HELLO_LEN];
        hello[..8].copy_from_slice(&MAGIC);
        hello[8] = PROTOCOL_VERSION + 1;
        a.write_all(&hello).unwrap();
        let e = t.join().unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "peer speaks protocol version {}, this node speaks version {PROTOCOL_VERSION}",
                PROTOCOL_VERSION + 1
            )
        );
        let mut reply = [0u8; 10];
        a.read_exact(&mut reply).unwrap();
        assert_eq!((reply[8], reply[9]), (PROTOCOL_VERSION, status::VERSION));
    }
}
