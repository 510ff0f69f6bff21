//! The DSM on the mesh: the shared regions of VMs whose threads span nodes, each kept
//! coherent by a [`pop_dsm::coherent::Coherent`] on every node that holds a copy, its `PAGE`
//! messages on net-msg's page class (FIFO between two nodes, as the protocol needs) and
//! handed here to the region of their VM.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use net_msg::{BulkStream, Incoming, Node, Priority};
use pop_dsm::coherent::{Coherent, Link, RegionConfig};
use pop_dsm::message::PageMsg;
use pop_dsm::protocol::NodeId;

use crate::error::{Error, Result};
use crate::msg::MsgType;
use crate::{Service, lock};

/// The bulk-stream kind of a region's page stream (see [`pop_dsm::message`]); its first
/// record's head is the VM's id (u64, little-endian), with no body.
pub const STREAM_KIND: u16 = 2;
/// How long a page stream may take to be accepted, or a record to be read or written: a
/// record follows its frame at once, so only a peer that is gone or stuck takes this long.
const STREAM_TIMEOUT: Duration = Duration::from_secs(20);

/// Carries a region's messages over the mesh, and the pages of its streamed runs over a
/// page stream of its own to each peer.
#[derive(Debug)]
pub struct MeshLink {
    node: Weak<Node>,
    vm: u64,
    /// Page streams to peers, each opened (on a thread of its own) when the region first
    /// has whole huge pages for that peer.
    out: Arc<Mutex<HashMap<NodeId, Outgoing>>>,
    /// Page streams from peers, as they are accepted (taken out while one is read).
    incoming: Mutex<HashMap<NodeId, BulkStream>>,
    accepted: Condvar,
}

/// A page stream to a peer.
#[derive(Debug)]
enum Outgoing {
    /// Being opened.
    Opening,
    /// Open (locked while a record is written).
    Open(Arc<Mutex<BulkStream>>),
    /// It could not be opened (the region's pages go to that peer inline).
    Refused,
}

impl MeshLink {
    /// A link for VM `vm`'s region sending through `node` (held weakly: the node owns the
    /// services that own the regions).
    pub fn new(node: &Arc<Node>, vm: u64) -> MeshLink {
        MeshLink {
            node: Arc::downgrade(node),
            vm,
            out: Arc::default(),
            incoming: Mutex::default(),
            accepted: Condvar::new(),
        }
    }

    /// Opens the page stream of VM `vm`'s region to `to`.
    fn open(node: &Weak<Node>, vm: u64, to: NodeId) -> std::result::Result<BulkStream, String> {
        let node = node.upgrade().ok_or("this node is shutting down")?;
        let mut s = node
            .open_stream(to, STREAM_KIND)
            .map_err(|e| e.to_string())?;
        s.set_timeout(Some(STREAM_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.send(&vm.to_le_bytes(), &[]).map_err(|e| e.to_string())?;
        Ok(s)
    }
}

impl Link for MeshLink {
    fn send(&self, to: NodeId, message: Vec<u8>) -> std::result::Result<(), String> {
        let node = self.node.upgrade().ok_or("this node is shutting down")?;
        node.send(to, MsgType::Page.number(), Priority::Page, &message)
            .map_err(|e| e.to_string())
    }

    fn has_stream_to(&self, to: NodeId) -> bool {
        let mut out = lock(&self.out);
        match out.get(&to) {
            Some(Outgoing::Open(_)) => return true,
            Some(Outgoing::Opening | Outgoing::Refused) => return false,
            None => {}
        }
        out.insert(to, Outgoing::Opening);
        let (node, vm, table) = (self.node.clone(), self.vm, Arc::downgrade(&self.out));
        let opening = std::thread::Builder::new()
            .name("dsm-stream".into())
            .spawn(move || {
                let opened = Self::open(&node, vm, to);
                let Some(table) = table.upgrade() else {
                    return;
                };
                let state = match opened {
                    Ok(s) => Outgoing::Open(Arc::new(Mutex::new(s))),
                    Err(e) => {
                        tracing::info!(vm, "no page stream to node {to} (pages go inline): {e}");
                        Outgoing::Refused
                    }
                };
                lock(&table).insert(to, state);
            });
        if opening.is_err() {
            out.insert(to, Outgoing::Refused);
        }
        false
    }

    fn send_pages(&self, to: NodeId, head: &[u8], pages: &[u8]) -> std::result::Result<(), String> {
        let stream = match lock(&self.out).get(&to) {
            Some(Outgoing::Open(s)) => s.clone(),
            _ => return Err(format!("no page stream to node {to}")),
        };
        let sent = lock(&stream).send(head, pages).map_err(|e| e.to_string());
        if sent.is_err() {
            lock(&self.out).insert(to, Outgoing::Refused);
        }
        sent
    }

    fn recv_pages(&self, from: NodeId, into: &mut [u8]) -> std::result::Result<Vec<u8>, String> {
        let deadline = Instant::now() + STREAM_TIMEOUT;
        let mut incoming = lock(&self.incoming);
        let mut s = loop {
            if let Some(s) = incoming.remove(&from) {
                break s;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no page stream from node {from}"));
            }
            incoming = self
                .accepted
                .wait_timeout(incoming, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(incoming);
        let read = match s.recv_head() {
            Ok(Some(h)) if h.body_len == into.len() => s
                .recv_body(&mut [into])
                .map(|()| h.head)
                .map_err(|e| e.to_string()),
            Ok(Some(h)) => Err(format!("a page-stream record of {} bytes", h.body_len)),
            Ok(None) => Err("the page stream ended".into()),
            Err(e) => Err(e.to_string()),
        };
        if read.is_ok() {
            lock(&self.incoming).insert(from, s);
        }
        read
    }
}

/// A region here and its link.
#[derive(Debug)]
struct Entry {
    region: Arc<Coherent>,
    link: Arc<MeshLink>,
}

/// The coherent regions on this node, by VM.
#[derive(Debug, Default)]
pub struct Regions {
    regions: Mutex<HashMap<u64, Entry>>,
}

impl Regions {
    /// Starts keeping VM `cfg.vm`'s region coherent here, its messages going through `node`.
    pub fn start(&self, node: &Arc<Node>, cfg: RegionConfig) -> Result<Arc<Coherent>> {
        let link = Arc::new(MeshLink::new(node, cfg.vm));
        let region = Coherent::start(cfg, link.clone())
            .map_err(|e| Error::Host(format!("VM {}: shared region: {e}", cfg.vm)))?;
        let region = Arc::new(region);
        let entry = Entry {
            region: region.clone(),
            link,
        };
        lock(&self.regions).insert(cfg.vm, entry);
        Ok(region)
    }

    /// VM `vm`'s region here, if it has one.
    pub fn get(&self, vm: u64) -> Option<Arc<Coherent>> {
        lock(&self.regions).get(&vm).map(|e| e.region.clone())
    }

    /// Stops keeping VM `vm`'s region here (when its last thread here ended, or the VM did).
    pub fn remove(&self, vm: u64) -> Option<Arc<Coherent>> {
        lock(&self.regions).remove(&vm).map(|e| e.region)
    }

    /// Takes a page stream a peer opened: its first record names the VM whose region it
    /// carries pages to (a stream for a VM with no region here is dropped).
    pub fn accept_stream(&self, mut stream: BulkStream) {
        if stream.set_timeout(Some(STREAM_TIMEOUT)).is_err() {
            return;
        }
        let vm = match stream.recv_head() {
            Ok(Some(h)) if h.body_len == 0 && h.head.len() == 8 => {
                let vm = u64::from_le_bytes(h.head[..].try_into().expect("8 bytes"));
                match stream.recv_body(&mut []) {
                    Ok(()) => vm,
                    Err(_) => return,
                }
            }
            _ => return,
        };
        let Some(link) = lock(&self.regions).get(&vm).map(|e| e.link.clone()) else {
            return;
        };
        lock(&link.incoming).insert(stream.peer(), stream);
        link.accepted.notify_all();
    }

    /// Hands a `PAGE` message from node `from` to its VM's region.
    pub fn deliver(&self, from: NodeId, payload: &[u8]) -> Result<()> {
        let runs = PageMsg::decode_frame(payload).map_err(|e| Error::malformed("PAGE", e))?;
        let msg = runs[0].0;
        let region = self
            .get(msg.vm)
            .ok_or_else(|| Error::NoSuchVm(format!("VM {} has no shared region here", msg.vm)))?;
        if region.failure().is_some() {
            // The VM ended (or cannot go on): what its peers still send is dropped.
            return Ok(());
        }
        region
            .deliver(from, payload)
            .map_err(|e| Error::BadMessage(format!("VM {}: page {}: {e}", msg.vm, msg.page)))
    }
}

impl Service for Regions {
    fn handle(&self, _node: &Arc<Node>, t: MsgType, m: &mut Incoming) -> Result<()> {
        if t != MsgType::Page || m.is_request() {
            return Err(Error::BadMessage(format!(
                "{} is not a one-way DSM message",
                t.name()
            )));
        }
        self.deliver(m.from, &m.payload)
    }
}
