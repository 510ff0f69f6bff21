//! `popvmm migrate` asked of any node: when the VM runs on another node, the asked node
//! relays the request over the mesh (`MIGRATE`); the node running the VM drives the migration
//! and streams its progress back (`PROGRESS`) before answering with the summary. The user
//! needs the control socket of one node only, on whichever host they are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use net_msg::{Incoming, Priority};
use serde_json::Value;

use crate::host::Host;
use crate::msg::{MigrateRequest, MsgType, Progress};
use crate::registry::{VmStatus, matches_key};
use crate::{Mode, lock};

/// How long to look for a VM in the cluster.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a relayed migration may take (post-copy pushes of large guests included).
const RELAY_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a relayed migration reports to the asking node.
enum Event {
    Progress(Value),
    Done(Result<Value, String>),
}

/// Progress channels of migrations this node relayed, by token.
#[derive(Debug, Default)]
pub struct Relays {
    open: Mutex<HashMap<u64, Sender<Event>>>,
    next: AtomicU64,
}

impl Host {
    /// Moves VM `key` to node `to`, wherever in the cluster it runs; `progress` gets one
    /// JSON object per step. Returns the summary.
    pub fn migrate_anywhere(
        self: &Arc<Self>,
        key: &str,
        to: u32,
        mode: Mode,
        downtime_ms: u64,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, String> {
        if self.registry().find(key).is_some() {
            return self.migrate(key, to, (mode, downtime_ms), progress);
        }
        let at = self.locate(key)?;
        if at == self.node().id() {
            // It arrived here meanwhile.
            return self.migrate(key, to, (mode, downtime_ms), progress);
        }
        let relays = self.relays();
        let token = relays.next.fetch_add(1, Ordering::Relaxed);
        let request = MigrateRequest {
            token,
            vm: key.to_string(),
            to,
            mode,
            downtime_ms,
        };
        let payload = pop_wire::to_bytes(&request);
        // Progress (sent by the mesh handler, in arrival order) and the answer (after all of
        // it on the same connection) meet in one channel.
        let (events, done) = channel::<Event>();
        lock(&relays.open).insert(token, events.clone());
        let pending =
            self.node()
                .start_request(at, MsgType::Migrate.number(), Priority::Control, &payload);
        let result = pending.map_err(|e| e.to_string()).map(|pending| {
            std::thread::spawn(move || {
                let answer = pending
                    .wait(RELAY_TIMEOUT)
                    .map_err(|e| format!("node {at}: {e}"))
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
                let _ = events.send(Event::Done(answer));
            });
            loop {
                match done.recv() {
                    Ok(Event::Progress(p)) => progress(p),
                    Ok(Event::Done(answer)) => break answer,
                    Err(_) => break Err("the relayed migration vanished".into()),
                }
            }
        });
        lock(&relays.open).remove(&token);
        result?
    }

    /// The node running VM `key`. A node that just started may not reach every other node
    /// yet, so the search is repeated for a few seconds before giving up.
    fn locate(&self, key: &str) -> Result<u32, String> {
        let deadline = Instant::now() + LOCATE_TIMEOUT;
        loop {
            let found = self.cluster_vms().iter().find_map(|v| {
                (matches_key(v.id, &v.name, key) && v.state != VmStatus::PostcopySource)
                    .then_some(v.node)
            });
            match found {
                Some(at) => return Ok(at),
                None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                None => return Err(format!("no VM {key} in the cluster")),
            }
        }
    }
}

impl Relays {
    /// `MIGRATE` (from the node a user asked): drives the migration on a thread of its own,
    /// streaming `PROGRESS` back, and answers with the summary.
    fn relayed_migrate(&self, host: &Arc<Host>, m: &mut Incoming) -> Result<(), String> {
        let request: MigrateRequest =
            pop_wire::from_bytes(&m.payload).map_err(|e| format!("bad MIGRATE: {e}"))?;
        let responder = m.take_responder().ok_or("MIGRATE must be a request")?;
        let (host, asker) = (host.clone(), m.from);
        std::thread::spawn(move || {
            let node = host.node().clone();
            let mut progress = |p: Value| {
                let step = Progress {
                    token: request.token,
                    json: p.to_string(),
                };
                let _ = node.send(
                    asker,
                    MsgType::Progress.number(),
                    Priority::Control,
                    &pop_wire::to_bytes(&step),
                );
            };
            let how = (request.mode, request.downtime_ms);
            let result = host.migrate(&request.vm, request.to, how, &mut progress);
            let _ = match result {
                Ok(summary) => responder.respond(summary.to_string().as_bytes()),
                Err(e) => responder.fail(&e),
            };
        });
        Ok(())
    }

    /// `PROGRESS` of a migration this node relayed.
    fn relayed_progress(&self, payload: &[u8]) -> Result<(), String> {
        let step: Progress = pop_wire::from_bytes(payload).map_err(|e| e.to_string())?;
        let p: Value = serde_json::from_str(&step.json).map_err(|e| e.to_string())?;
        if let Some(tx) = lock(&self.open).get(&step.token) {
            let _ = tx.send(Event::Progress(p));
        }
        Ok(())
    }
}

impl crate::Service for Relays {
    fn handle(&self, host: &Arc<Host>, t: MsgType, m: &mut Incoming) -> Result<(), String> {
        match t {
            MsgType::Migrate => self.relayed_migrate(host, m),
            MsgType::Progress => self.relayed_progress(&m.payload),
            _ => Err(format!("{t:?} is not a relay message")),
        }
    }
}
