//! The DSM on the mesh: the shared regions of VMs whose threads span nodes, each kept
//! coherent by a [`pop_dsm::coherent::Coherent`] on every node that holds a copy, its `PAGE`
//! messages on net-msg's page class (FIFO between two nodes, as the protocol needs) and
//! handed here to the region of their VM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use net_msg::{Incoming, Node, Priority};
use pop_dsm::coherent::{Coherent, Link, RegionConfig};
use pop_dsm::message::PageMsg;
use pop_dsm::protocol::NodeId;

use crate::error::{Error, Result};
use crate::msg::MsgType;
use crate::{Service, lock};

/// Carries a region's messages over the mesh.
#[derive(Debug)]
pub struct MeshLink {
    node: Weak<Node>,
}

impl MeshLink {
    /// A link sending through `node` (held weakly: the node owns the services that own the
    /// regions).
    pub fn new(node: &Arc<Node>) -> MeshLink {
        MeshLink {
            node: Arc::downgrade(node),
        }
    }
}

impl Link for MeshLink {
    fn send(&self, to: NodeId, message: Vec<u8>) -> std::result::Result<(), String> {
        let node = self.node.upgrade().ok_or("this node is shutting down")?;
        node.send(to, MsgType::Page.number(), Priority::Page, &message)
            .map_err(|e| e.to_string())
    }
}

/// The coherent regions on this node, by VM.
#[derive(Debug, Default)]
pub struct Regions {
    regions: Mutex<HashMap<u64, Arc<Coherent>>>,
}

impl Regions {
    /// Starts keeping VM `cfg.vm`'s region coherent here, its messages going through `node`.
    pub fn start(&self, node: &Arc<Node>, cfg: RegionConfig) -> Result<Arc<Coherent>> {
        let link = Arc::new(MeshLink::new(node));
        let region = Coherent::start(cfg, link)
            .map_err(|e| Error::Host(format!("VM {}: shared region: {e}", cfg.vm)))?;
        let region = Arc::new(region);
        lock(&self.regions).insert(cfg.vm, region.clone());
        Ok(region)
    }

    /// VM `vm`'s region here, if it has one.
    pub fn get(&self, vm: u64) -> Option<Arc<Coherent>> {
        lock(&self.regions).get(&vm).cloned()
    }

    /// Stops keeping VM `vm`'s region here (when its last thread here ended, or the VM did).
    pub fn remove(&self, vm: u64) -> Option<Arc<Coherent>> {
        lock(&self.regions).remove(&vm)
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
