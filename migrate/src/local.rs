//! What every service of a node process works on: the VMs running here ([`Registry`]) and the
//! VMs whose home is here ([`Homes`]), with running a VM here and asking the cluster for its
//! VMs. The migration and relay services are built on it; it knows neither.

use std::sync::Arc;
use std::time::Duration;

use net_msg::{Node, Priority};
use vmm::launch::EXIT_VMM_ERROR;
use vmm::vm::{Outcome, Vm};

use crate::home::{Ended, Homes};
use crate::msg::{self, Location, MsgType, VmInfo, VmList};
use crate::registry::{HostedVm, Registry};

/// The VMs of one node process.
#[derive(Debug, Default)]
pub struct Local {
    /// The VMs running here.
    pub registry: Registry,
    /// The VMs whose home is here.
    pub homes: Homes,
}

impl Local {
    /// Runs `vm` here (on a thread of its own) until it ends or moves away, and tells its
    /// home where it runs; `node` is this node.
    pub fn run_vm(
        self: &Arc<Self>,
        node: &Arc<Node>,
        (id, name, home): (u64, String, u32),
        vm: Vm,
    ) -> Arc<HostedVm> {
        let me = node.id();
        if home == me {
            self.homes.set_location(id, me);
        } else {
            let at = pop_wire::to_bytes(&Location { vm: id, node: me });
            let sent = node.send(home, MsgType::Location.number(), Priority::Control, &at);
            if let Err(err) = sent {
                tracing::warn!("cannot tell node {home} where VM {id:x} runs: {err}");
            }
        }
        let hosted = Arc::new(HostedVm::new(id, name, home, vm.shared()));
        self.registry.add(hosted.clone());
        let (local, node, running) = (self.clone(), node.clone(), hosted.clone());
        let _ = std::thread::Builder::new()
            .name(format!("vm-{id:x}"))
            .spawn(move || {
                let outcome = vm.run();
                local.registry.remove(&running);
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
                local.report_end(&node, id, home, ended);
            });
        hosted
    }

    /// Tells the home of VM `id` how it ended.
    fn report_end(&self, node: &Node, id: u64, home: u32, ended: Ended) {
        if home == node.id() {
            let _ = self.homes.ended(id, ended);
            return;
        }
        let exit = msg::Exit {
            vm: id,
            status: ended.status,
            error: ended.error,
        };
        let sent = node.send(
            home,
            MsgType::Exit.number(),
            Priority::Control,
            &pop_wire::to_bytes(&exit),
        );
        if let Err(err) = sent {
            tracing::warn!("cannot tell node {home} that VM {id:x} ended: {err}");
        }
    }

    /// The VMs of every node `node` (this one) reaches.
    pub fn cluster_vms(&self, node: &Node) -> Vec<VmInfo> {
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
}
