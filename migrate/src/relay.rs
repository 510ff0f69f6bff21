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
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::host::{Host, matches_key};
use super::{Mode, msg};
use pop_wire::{Decoder, Encoder};

/// How long to look for a VM in the cluster.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a relayed migration may take (post-copy pushes of large guests included).
const RELAY_TIMEOUT: Duration = Duration::from_secs(3600);

/// `MIGRATE`: what to move, and the token its progress is sent back with.
#[derive(Debug, Serialize, Deserialize)]
struct MigrateRequest {
    token: u64,
    vm: String,
    to: u32,
    mode: Mode,
    downtime_ms: u64,
}

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

impl Relays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sender<Event>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
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
        if self.find(key).is_some() {
            return self.migrate(key, to, mode, downtime_ms, progress);
        }
        let at = self.locate(key)?;
        if at == self.node().id() {
            // It arrived here meanwhile.
            return self.migrate(key, to, mode, downtime_ms, progress);
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
        let payload = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        // Progress (sent by the mesh handler, in arrival order) and the answer (after all of
        // it on the same connection) meet in one channel.
        let (events, done) = channel::<Event>();
        relays.lock().insert(token, events.clone());
        let pending = self
            .node()
            .start_request(at, msg::MIGRATE, Priority::Control, &payload);
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
        relays.lock().remove(&token);
        result?
    }

    /// The node running VM `key`. A node that just started may not reach every other node
    /// yet, so the search is repeated for a few seconds before giving up.
    fn locate(&self, key: &str) -> Result<u32, String> {
        let deadline = Instant::now() + LOCATE_TIMEOUT;
        loop {
            let found = self.cluster_list().iter().find_map(|v| {
                let id = v["id"].as_u64().unwrap_or(0);
                let name = v["name"].as_str().unwrap_or("");
                (matches_key(id, name, key) && v["state"] != "postcopy-source")
                    .then(|| v["node"].as_u64())
                    .flatten()
            });
            match found {
                Some(at) => return Ok(at as u32),
                None if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                None => return Err(format!("no VM {key} in the cluster")),
            }
        }
    }

    /// `MIGRATE` (from the node a user asked): drives the migration on a thread of its own,
    /// streaming `PROGRESS` back, and answers with the summary.
    pub(super) fn relayed_migrate(self: &Arc<Self>, m: &mut Incoming) -> Result<(), String> {
        let request: MigrateRequest =
            serde_json::from_slice(&m.payload).map_err(|e| format!("bad MIGRATE: {e}"))?;
        let responder = m.take_responder().ok_or("MIGRATE must be a request")?;
        let (host, asker) = (self.clone(), m.from);
        std::thread::spawn(move || {
            let node = host.node().clone();
            let mut progress = |p: Value| {
                let mut e = Encoder::default();
                e.u64(request.token)
                    .bytes(&serde_json::to_vec(&p).unwrap_or_default());
                let _ = node.send(asker, msg::PROGRESS, Priority::Control, &e.finish());
            };
            let result = host.migrate(
                &request.vm,
                request.to,
                request.mode,
                request.downtime_ms,
                &mut progress,
            );
            let _ = match result {
                Ok(summary) => responder.respond(&serde_json::to_vec(&summary).unwrap_or_default()),
                Err(e) => responder.fail(&e),
            };
        });
        Ok(())
    }

    /// `PROGRESS` of a migration this node relayed.
    pub(super) fn relayed_progress(&self, payload: &[u8]) -> Result<(), String> {
        let mut d = Decoder::new(payload);
        let token = d.u64().map_err(|e| e.to_string())?;
        let p: Value = serde_json::from_slice(d.rest()).map_err(|e| e.to_string())?;
        if let Some(tx) = self.relays().lock().get(&token) {
            let _ = tx.send(Event::Progress(p));
        }
        Ok(())
    }
}
