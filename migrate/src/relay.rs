//! `popvmm migrate` asked of any node: when the VM runs on another node, the asked node
//! relays the request over the mesh (`MIGRATE`); the node running the VM drives the migration
//! and streams its progress back (`PROGRESS`) before answering with the summary or the
//! failure, by kind. The user needs the control socket of one node only, on whichever host
//! they are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use net_msg::{Incoming, Node, Priority};

use crate::error::{Error, Result};
use crate::local::Local;
use crate::msg::{CancelRequest, MigrateAnswer, MigrateRequest, MsgType, Progress};
use crate::registry::{VmStatus, matches_key};
use crate::report::{Step, Summary};
use crate::vm::Migrations;
use crate::{Mode, lock};

/// How long to look for a VM in the cluster.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a relayed migration may take (post-copy pushes of large guests included).
const RELAY_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a relayed migration reports to the asking node.
enum Event {
    Progress(Step),
    Done(Result<Summary>),
}

/// Migrations asked of this node, wherever the VM runs.
#[derive(Debug)]
pub struct Relays {
    local: Arc<Local>,
    vms: Arc<Migrations>,
    /// Progress channels of migrations this node relayed, by token.
    open: Mutex<HashMap<u64, Sender<Event>>>,
    next: AtomicU64,
}

impl Relays {
    /// The relays of the node process whose VMs are `local` and migrations `vms`.
    pub fn new(local: Arc<Local>, vms: Arc<Migrations>) -> Relays {
        Relays {
            local,
            vms,
            open: Mutex::default(),
            next: AtomicU64::new(0),
        }
    }

    /// Moves VM `key`, running on `node` (this one), to node `to`; `progress` gets each
    /// step. Returns the summary.
    pub fn migrate_here(
        &self,
        node: &Arc<Node>,
        key: &str,
        to: u32,
        how: (Mode, u64),
        progress: &mut dyn FnMut(Step),
    ) -> Result<Summary> {
        let hvm = self.here(node, key)?;
        self.vms.migrate(node, hvm, to, how, progress)
    }

    /// VM `key` if it runs on `node` (this one).
    fn here(&self, node: &Node, key: &str) -> Result<Arc<crate::registry::HostedVm>> {
        self.local
            .registry
            .find(key)
            .ok_or_else(|| Error::NoSuchVm(format!("no VM {key} runs on node {}", node.id())))
    }

    /// Where VM `key` runs: here (`Ok`), or on another node (`Err` with its id).
    fn find_anywhere(
        &self,
        node: &Arc<Node>,
        key: &str,
    ) -> Result<std::result::Result<Arc<crate::registry::HostedVm>, u32>> {
        if let Some(hvm) = self.local.registry.find(key) {
            return Ok(Ok(hvm));
        }
        match self.locate(node, key)? {
            // It arrived here meanwhile.
            at if at == node.id() => self.here(node, key).map(Ok),
            at => Ok(Err(at)),
        }
    }

    /// Moves VM `key` to node `to`, wherever in the cluster it runs; `progress` gets each
    /// step. Returns the summary.
    pub fn migrate_anywhere(
        &self,
        node: &Arc<Node>,
        key: &str,
        to: u32,
        how: (Mode, u64),
        progress: &mut dyn FnMut(Step),
    ) -> Result<Summary> {
        let at = match self.find_anywhere(node, key)? {
            Ok(hvm) => return self.vms.migrate(node, hvm, to, how, progress),
            Err(at) => at,
        };
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let request = MigrateRequest {
            token,
            vm: key.to_string(),
            to,
            mode: how.0,
            downtime_ms: how.1,
        };
        let payload = pop_wire::to_bytes(&request);
        // Progress (sent by the mesh handler, in arrival order) and the answer (after all of
        // it on the same connection) meet in one channel.
        let (events, done) = channel::<Event>();
        lock(&self.open).insert(token, events.clone());
        let pending =
            node.start_request(at, MsgType::Migrate.number(), Priority::Control, &payload);
        let result = match pending {
            Err(e) => Err(Error::Lost(format!("node {at}: {e}"))),
            Ok(pending) => {
                std::thread::spawn(move || {
                    let answer = match pending.wait(RELAY_TIMEOUT) {
                        Err(e) => Err(Error::Lost(format!("node {at}: {e}"))),
                        Ok(bytes) => answer_of(at, &bytes),
                    };
                    let _ = events.send(Event::Done(answer));
                });
                loop {
                    match done.recv() {
                        Ok(Event::Progress(p)) => progress(p),
                        Ok(Event::Done(answer)) => break answer,
                        Err(_) => break Err(Error::Lost("the relayed migration vanished".into())),
                    }
                }
            }
        };
        lock(&self.open).remove(&token);
        result
    }

    /// Stops the whole-VM migration of VM `key` before its switch-over, wherever in the
    /// cluster it runs (`popvmm migrate --cancel`): its migration then fails, and the VM
    /// runs on where it was.
    pub fn cancel_anywhere(&self, node: &Arc<Node>, key: &str) -> Result<()> {
        let at = match self.find_anywhere(node, key)? {
            Ok(hvm) => return hvm.cancel_move().map_err(Error::Aborted),
            Err(at) => at,
        };
        let request = pop_wire::to_bytes(&CancelRequest {
            vm: key.to_string(),
        });
        node.request(
            at,
            MsgType::Cancel.number(),
            Priority::Control,
            &request,
            LOCATE_TIMEOUT,
        )
        .map(drop)
        .map_err(|e| Error::Aborted(format!("node {at}: {e}")))
    }

    /// `CANCEL` (from the node a user asked): stops the migration of a VM running here.
    fn relayed_cancel(&self, node: &Arc<Node>, m: &mut Incoming) -> Result<()> {
        let request: CancelRequest =
            pop_wire::from_bytes(&m.payload).map_err(|e| Error::malformed("CANCEL", e))?;
        let hvm = self.local.registry.find(&request.vm).ok_or_else(|| {
            Error::NoSuchVm(format!("no VM {} runs on node {}", request.vm, node.id()))
        })?;
        hvm.cancel_move().map_err(Error::Aborted)?;
        let _ = m.take_responder().map(|r| r.respond(&[]));
        Ok(())
    }

    /// The node running VM `key`. A node that just started may not reach every other node
    /// yet, so the search is repeated for a few seconds before giving up.
    fn locate(&self, node: &Node, key: &str) -> Result<u32> {
        let deadline = Instant::now() + LOCATE_TIMEOUT;
        loop {
            let found = self.local.cluster_vms(node).iter().find_map(|v| {
                (matches_key(v.id, &v.name, key) && v.state != VmStatus::PostcopySource)
                    .then_some(v.node)
            });
            match found {
                Some(at) => return Ok(at),
                None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                None => return Err(Error::NoSuchVm(format!("no VM {key} in the cluster"))),
            }
        }
    }

    /// `MIGRATE` (from the node a user asked): drives the migration on a thread of its own,
    /// streaming `PROGRESS` back, and answers with the summary or the failure.
    fn relayed_migrate(self: &Arc<Self>, node: &Arc<Node>, m: &mut Incoming) -> Result<()> {
        let request: MigrateRequest =
            pop_wire::from_bytes(&m.payload).map_err(|e| Error::malformed("MIGRATE", e))?;
        let responder = m
            .take_responder()
            .ok_or_else(|| Error::BadMessage("MIGRATE must be a request".into()))?;
        let (relays, node, asker) = (self.clone(), node.clone(), m.from);
        std::thread::spawn(move || {
            let mut progress = |step: Step| {
                let step = Progress {
                    token: request.token,
                    step,
                };
                let _ = node.send(
                    asker,
                    MsgType::Progress.number(),
                    Priority::Control,
                    &pop_wire::to_bytes(&step),
                );
            };
            let how = (request.mode, request.downtime_ms);
            let answer =
                match relays.migrate_here(&node, &request.vm, request.to, how, &mut progress) {
                    Ok(summary) => MigrateAnswer::Done(summary),
                    Err(e) => MigrateAnswer::Failed(e.kind(), e.to_string()),
                };
            let _ = responder.respond(&pop_wire::to_bytes(&answer));
        });
        Ok(())
    }

    /// `PROGRESS` of a migration this node relayed.
    fn relayed_progress(&self, payload: &[u8]) -> Result<()> {
        let step: Progress =
            pop_wire::from_bytes(payload).map_err(|e| Error::malformed("PROGRESS", e))?;
        if let Some(tx) = lock(&self.open).get(&step.token) {
            let _ = tx.send(Event::Progress(step.step));
        }
        Ok(())
    }
}

/// What node `at` answered to `MIGRATE`.
fn answer_of(at: u32, bytes: &[u8]) -> Result<Summary> {
    match pop_wire::from_bytes::<MigrateAnswer>(bytes) {
        Ok(MigrateAnswer::Done(summary)) => Ok(summary),
        Ok(MigrateAnswer::Failed(kind, text)) => {
            Err(Error::of_kind(kind, text.clone()).unwrap_or(Error::Aborted(text)))
        }
        Err(e) => Err(Error::malformed(
            format_args!("answer to MIGRATE from node {at}"),
            e,
        )),
    }
}

/// Shared: a relayed migration runs on a thread of its own.
impl crate::Service for Arc<Relays> {
    fn handle(&self, node: &Arc<Node>, t: MsgType, m: &mut Incoming) -> Result<()> {
        match t {
            MsgType::Migrate => self.relayed_migrate(node, m),
            MsgType::Progress => self.relayed_progress(&m.payload),
            MsgType::Cancel => self.relayed_cancel(node, m),
            _ => Err(Error::BadMessage(format!(
                "{} is not a relay message",
                t.name()
            ))),
        }
    }
}
