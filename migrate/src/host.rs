//! The services of one node process, put together: the VMs running here and those whose home
//! is here ([`Local`]), whole-VM migrations ([`Migrations`]) and relayed `popvmm migrate`
//! requests ([`Relays`]). `popvmm`'s router hands each message to the service of its type's
//! range ([`Host::service`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use net_msg::Node;
use serde_json::Value;
use vmm::vm::Vm;

use crate::Service;
use crate::dsm::Regions;
use crate::error::Result;
use crate::home::Homes;
use crate::local::Local;
use crate::msg::{self, VmInfo};
use crate::registry::{HostedVm, Registry};
use crate::relay::Relays;
use crate::report::{Step, Summary};
use crate::thread::Spans;
use crate::vm::{Migrations, page_stream};

/// The services of one node process.
#[derive(Debug)]
pub struct Host {
    node: OnceLock<Arc<Node>>,
    local: Arc<Local>,
    vms: Arc<Migrations>,
    relays: Arc<Relays>,
    regions: Arc<Regions>,
    spans: Arc<Spans>,
}

impl Host {
    /// A host not yet on the mesh; [`Host::attach`] it to its node.
    pub fn new() -> Arc<Host> {
        let local = Arc::new(Local::default());
        let regions: Arc<Regions> = Arc::default();
        let spans = Spans::new(local.clone(), regions.clone());
        let vms = Arc::new(Migrations::new(
            local.clone(),
            regions.clone(),
            Arc::downgrade(&spans),
        ));
        let relays = Arc::new(Relays::new(local.clone(), vms.clone()));
        Arc::new(Host {
            node: OnceLock::new(),
            local,
            vms,
            relays,
            regions,
            spans,
        })
    }

    /// Attaches the started node, serves the page streams of arriving VMs, and starts
    /// dropping arriving VMs that were abandoned.
    pub fn attach(&self, node: Arc<Node>) {
        let (vms, regions) = (Arc::downgrade(&self.vms), Arc::downgrade(&self.regions));
        node.serve_streams(move |stream| match stream.kind() {
            page_stream::KIND => {
                if let Some(vms) = vms.upgrade() {
                    page_stream::serve(&*vms, stream);
                }
            }
            crate::probe::KIND => crate::probe::serve(stream),
            crate::dsm::STREAM_KIND => {
                if let Some(regions) = regions.upgrade() {
                    regions.accept_stream(stream);
                }
            }
            _ => {}
        });
        self.vms.open_spares(&node);
        self.spans.attach(&node);
        let (vms, weak) = (Arc::downgrade(&self.vms), Arc::downgrade(&node));
        let _ = self.node.set(node);
        let _ = std::thread::Builder::new()
            .name("arrivals".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    match (vms.upgrade(), weak.upgrade()) {
                        (Some(vms), Some(node)) => vms.purge_stale(&node),
                        _ => return,
                    }
                }
            });
    }

    /// The node (after [`Host::attach`]).
    pub fn node(&self) -> &Arc<Node> {
        self.node.get().expect("host attached to its node")
    }

    /// The VMs running here.
    pub fn registry(&self) -> &Registry {
        &self.local.registry
    }

    /// The VMs whose home is here.
    pub fn homes(&self) -> &Homes {
        &self.local.homes
    }

    /// The coherent shared regions of VMs spanning nodes.
    pub fn regions(&self) -> &Arc<Regions> {
        &self.regions
    }

    /// Threads of VMs spanning nodes.
    pub fn spans(&self) -> &Arc<Spans> {
        &self.spans
    }

    /// Whole-VM migrations.
    pub fn migrations(&self) -> &Migrations {
        &self.vms
    }

    /// The service that handles messages of `service`'s range (`None` for the node's own,
    /// which the node daemon answers).
    pub fn service(&self, service: msg::Service) -> Option<&dyn Service> {
        match service {
            msg::Service::Node => None,
            msg::Service::Vm => Some(&*self.vms),
            msg::Service::Home => Some(&self.local.homes),
            msg::Service::Registry => Some(&self.local.registry),
            msg::Service::Relay => Some(&self.relays),
            msg::Service::Dsm => Some(&*self.regions),
            msg::Service::Thread => Some(&self.spans),
        }
    }

    /// Runs `vm` (VM `id` called `name`, whose home is node `home`) here until it ends or
    /// moves away.
    pub fn run_vm(&self, id: u64, name: String, home: u32, vm: Vm) -> Arc<HostedVm> {
        self.local.run_vm(self.node(), (id, name, home), vm)
    }

    /// The VMs of every node this one reaches.
    pub fn cluster_vms(&self) -> Vec<VmInfo> {
        self.local.cluster_vms(self.node())
    }

    /// The VMs of every node this one reaches, as the control socket's `ps` shows them.
    pub fn cluster_list(&self) -> Vec<Value> {
        self.cluster_vms().iter().map(VmInfo::to_json).collect()
    }

    /// Moves thread `tid` of VM `key` to node `to`, wherever in the cluster the VM and the
    /// thread run (the node running the VM's origin knows where its threads are).
    pub fn move_thread_anywhere(&self, key: &str, tid: u32, to: u32) -> Result<()> {
        let vms = self.cluster_vms();
        let vm = vms
            .iter()
            .find(|v| crate::registry::matches_key(v.id, &v.name, key))
            .ok_or_else(|| crate::Error::NoSuchVm(format!("no VM {key:?} in the cluster")))?;
        let mv = msg::MoveThread { vm: vm.id, tid, to };
        let node = self.node();
        if vm.node == node.id() {
            return self.spans.move_anywhere(node, mv);
        }
        node.request(
            vm.node,
            msg::MsgType::MoveThread.number(),
            net_msg::Priority::Control,
            &pop_wire::to_bytes(&mv),
            Duration::from_secs(30),
        )
        .map(drop)
        .map_err(|e| match e {
            net_msg::Error::Remote { message, .. } => crate::Error::Aborted(message),
            e => crate::Error::Lost(e.to_string()),
        })
    }

    /// Every thread of every VM of the cluster, with its node and state, as the control
    /// socket's `ps --threads` shows them.
    pub fn cluster_threads(&self) -> Vec<Value> {
        let node = self.node();
        let mut out = Vec::new();
        for vm in self.cluster_vms() {
            let list = if vm.node == node.id() {
                self.spans.threads(vm.id)
            } else {
                node.request(
                    vm.node,
                    msg::MsgType::Threads.number(),
                    net_msg::Priority::Control,
                    &pop_wire::to_bytes(&msg::VmRef { vm: vm.id }),
                    Duration::from_secs(5),
                )
                .ok()
                .and_then(|b| pop_wire::from_bytes::<msg::ThreadList>(&b).ok())
            };
            for t in list.map(|l| l.0).unwrap_or_default() {
                out.push(serde_json::json!({
                    "vm": vm.id,
                    "name": vm.name,
                    "tid": t.tid,
                    "node": t.node,
                    "state": t.status.name(),
                }));
            }
        }
        out
    }

    /// Moves VM `key` to node `to`, wherever in the cluster it runs; `progress` gets each
    /// step. Returns the summary.
    pub fn migrate_anywhere(
        &self,
        key: &str,
        to: u32,
        how: (crate::Mode, u64),
        progress: &mut dyn FnMut(Step),
    ) -> Result<Summary> {
        self.relays
            .migrate_anywhere(self.node(), key, to, how, progress)
    }

    /// Stops the whole-VM migration of VM `key` before its switch-over, wherever in the
    /// cluster it runs: that migration fails, and the VM runs on where it was.
    pub fn cancel_anywhere(&self, key: &str) -> Result<()> {
        self.relays.cancel_anywhere(self.node(), key)
    }
}
