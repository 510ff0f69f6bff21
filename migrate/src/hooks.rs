//! The hooks of a VM that runs in a cluster (see `vmm::hooks`): the guest sees the cluster's
//! nodes (`pop::nodes()`), each up if it is the VM's node or one its node reaches. Thread
//! placement and futexes stay the single host's until the DSM takes them over.

use std::sync::{Arc, OnceLock, Weak};

use net_msg::{Node, PeerState};
use pop_abi::NodeEntry;
use vmm::hooks::Hooks;

/// The hooks of a VM on a cluster node.
#[derive(Debug, Default)]
pub struct ClusterHooks {
    node: OnceLock<Weak<Node>>,
}

impl ClusterHooks {
    /// Hooks for a VM made before its node joined the mesh ([`ClusterHooks::attach`] it).
    pub fn new() -> Arc<ClusterHooks> {
        Arc::new(ClusterHooks::default())
    }

    /// Hooks for a VM on `node`.
    pub fn on(node: &Arc<Node>) -> Arc<ClusterHooks> {
        let hooks = ClusterHooks::new();
        hooks.attach(node);
        hooks
    }

    /// The VM's node has joined the mesh.
    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }
}

impl Hooks for ClusterHooks {
    fn nodes(&self, here: u32) -> Vec<NodeEntry> {
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return vmm::hooks::LocalHooks.nodes(here);
        };
        let peers = node.peers();
        node.cluster()
            .nodes
            .iter()
            .map(|spec| NodeEntry {
                id: spec.id,
                isa: spec.isa.abi(),
                up: u32::from(
                    spec.id == node.id()
                        || peers
                            .get(spec.id as usize)
                            .is_some_and(|p| p.state == PeerState::Up),
                ),
            })
            .collect()
    }
}
