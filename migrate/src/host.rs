//! What one node process hosts, as services of the mesh: the VMs running here
//! ([`Registry`]), the VMs whose home is here ([`Homes`]), whole-VM migrations to and from
//! here ([`Migrations`]) and relayed `popvmm migrate` requests ([`Relays`]). `popvmm`'s router
//! hands each message to the service of its type's range ([`Host::service`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use net_msg::{Node, Priority};
use serde_json::Value;
use vmm::launch::EXIT_VMM_ERROR;
use vmm::vm::{Outcome, Vm};

use crate::Service;
use crate::home::{Ended, Homes};
use crate::msg::{self, Location, MsgType, VmInfo, VmList};
use crate::registry::{HostedVm, Registry};
use crate::relay::Relays;
use crate::vm::{Migrations, page_stream};

/// The services of one node process.
#[derive(Debug, Default)]
pub struct Host {
    node: OnceLock<Arc<Node>>,
    registry: Registry,
    homes: Homes,
    vms: Migrations,
    relays: Relays,
}

impl Host {
    /// A host not yet on the mesh; [`Host::attach`] it to its node.
    pub fn new() -> Arc<Host> {
        Arc::new(Host::default())
    }

    /// Attaches the started node, serves the page streams of arriving VMs, and starts
    /// dropping arriving VMs that were abandoned.
    pub fn attach(self: &Arc<Self>, node: Arc<Node>) {
        let host = Arc::downgrade(self);
        node.serve_streams(move |stream| {
            if let (Some(host), page_stream::KIND) = (host.upgrade(), stream.kind()) {
                page_stream::serve(&host.vms, stream);
            }
        });
        self.vms.open_spares(&node);
        let _ = self.node.set(node);
        let host = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("arrivals".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    match host.upgrade() {
                        Some(host) => host.vms.purge_stale(host.node()),
                        None => return,
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
        &self.registry
    }

    /// The VMs whose home is here.
    pub fn homes(&self) -> &Homes {
        &self.homes
    }

    /// Whole-VM migrations.
    pub fn migrations(&self) -> &Migrations {
        &self.vms
    }

    /// Relayed migrations.
    pub fn relays(&self) -> &Relays {
        &self.relays
    }

    /// The service that handles messages of `service`'s range (`None` for the node's own,
    /// which the node daemon answers).
    pub fn service(&self, service: msg::Service) -> Option<&dyn Service> {
        match service {
            msg::Service::Node => None,
            msg::Service::Vm => Some(&self.vms),
            msg::Service::Home => Some(&self.homes),
            msg::Service::Registry => Some(&self.registry),
            msg::Service::Relay => Some(&self.relays),
        }
    }

    /// Runs `vm` here (on a thread of its own) until it ends or moves away, and tells its
    /// home where it runs.
    pub fn run_vm(self: &Arc<Self>, id: u64, name: String, home: u32, vm: Vm) -> Arc<HostedVm> {
        let me = self.node().id();
        if home == me {
            self.homes.set_location(id, me);
        } else {
            let at = pop_wire::to_bytes(&Location { vm: id, node: me });
            let sent = self
                .node()
                .send(home, MsgType::Location.number(), Priority::Control, &at);
            if let Err(err) = sent {
                tracing::warn!("cannot tell node {home} where VM {id:x} runs: {err}");
            }
        }
        let hosted = Arc::new(HostedVm::new(id, name, home, vm.shared()));
        self.registry.add(hosted.clone());
        let (host, running) = (self.clone(), hosted.clone());
        let _ = std::thread::Builder::new()
            .name(format!("vm-{id:x}"))
            .spawn(move || {
                let outcome = vm.run();
                host.registry.remove(&running);
                let ended = match outcome {
                    Ok(Outcome::Moved) => return,
                    Ok(Outcome::Error(e)) => Ended {
                        status: EXIT_VMM_ERROR,
                        error: Some(e),
                    },
                    Ok(o) => Ended {
                        status: o.status(),
                        error: None,
                    },
                    Err(e) => Ended {
                        status: EXIT_VMM_ERROR,
                        error: Some(e.to_string()),
                    },
                };
                host.report_end(id, home, ended);
            });
        hosted
    }

    /// Tells the home of VM `id` how it ended.
    fn report_end(&self, id: u64, home: u32, ended: Ended) {
        if home == self.node().id() {
            let _ = self.homes.ended(id, ended);
            return;
        }
        let exit = msg::Exit {
            vm: id,
            status: ended.status,
            error: ended.error,
        };
        let sent = self.node().send(
            home,
            MsgType::Exit.number(),
            Priority::Control,
            &pop_wire::to_bytes(&exit),
        );
        if let Err(err) = sent {
            tracing::warn!("cannot tell node {home} that VM {id:x} ended: {err}");
        }
    }

    /// The VMs of every node this one reaches, as the control socket's `ps` shows them.
    pub fn cluster_list(&self) -> Vec<Value> {
        self.cluster_vms().iter().map(VmInfo::to_json).collect()
    }

    /// The VMs of every node this one reaches.
    pub fn cluster_vms(&self) -> Vec<VmInfo> {
        let node = self.node();
        let mut list = self.registry.list(node.id()).0;
        let pending: Vec<_> = (0..node.cluster().nodes.len() as u32)
            .filter(|&n| n != node.id())
            .filter_map(|n| {
                node.start_request(n, MsgType::List.number(), Priority::Control, &[])
                    .ok()
            })
            .collect();
        for p in pending {
            if let Ok(bytes) = p.wait(Duration::from_secs(2))
                && let Ok(VmList(vms)) = pop_wire::from_bytes(&bytes)
            {
                list.extend(vms);
            }
        }
        list
    }

    /// Moves VM `key` (running here) to node `to`; `progress` gets one JSON object per round.
    pub fn migrate(
        self: &Arc<Self>,
        key: &str,
        to: u32,
        how: (crate::Mode, u64),
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, String> {
        let hvm = self
            .registry
            .find(key)
            .ok_or_else(|| format!("no VM {key} runs on node {}", self.node().id()))?;
        self.vms.migrate(self, hvm, to, how, progress)
    }
}
