//! The home of a VM: the node process that launched it (`popvmm launch --cluster`). Wherever
//! the VM runs, its output is written here, its host files are opened here ([`files`]), and
//! its exit status arrives here; the node running it says where it is (`LOCATION`).

pub mod files;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use net_msg::{Incoming, Node, Priority};
use vmm::fs::{FileService, HomeFiles};
use vmm::output::{Output, Sink};

use crate::error::{Error, Result};
use crate::lock;
use crate::msg::{self, FileRequest, Location, MsgType, Stream};
use files::{FileServer, RemoteFiles};

/// How an application ended, as its home learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Exit status for `popvmm launch`.
    pub status: i32,
    /// A VMM error message, if the VMM failed.
    pub error: Option<String>,
}

/// The VMs whose home is this node process.
#[derive(Debug, Default)]
pub struct Homes {
    ended: Mutex<HashMap<u64, Sender<Ended>>>,
    /// The files (mounts, open host files) of the VMs whose home is here.
    files: Mutex<HashMap<u64, Arc<HomeFiles>>>,
    /// Where each runs, as last reported.
    locations: Mutex<HashMap<u64, u32>>,
    server: FileServer,
}

impl Homes {
    /// Registers a VM whose home is here, with its files; the receiver gets how it ended,
    /// wherever it ran.
    pub fn add(&self, id: u64, files: Arc<HomeFiles>) -> Receiver<Ended> {
        let (tx, rx) = channel();
        lock(&self.ended).insert(id, tx);
        lock(&self.files).insert(id, files);
        rx
    }

    /// Forgets a VM whose home was here, once it ended (its host files close).
    pub fn remove(&self, id: u64) {
        lock(&self.ended).remove(&id);
        lock(&self.files).remove(&id);
        lock(&self.locations).remove(&id);
    }

    /// Whether VM `id`'s home is here.
    pub fn is_home(&self, id: u64) -> bool {
        lock(&self.ended).contains_key(&id)
    }

    /// Where the VM `id`, whose home is here, runs now (as last reported).
    pub fn location(&self, id: u64) -> Option<u32> {
        lock(&self.locations).get(&id).copied()
    }

    /// Notes that VM `id` runs on `node`.
    pub fn set_location(&self, id: u64, node: u32) {
        lock(&self.locations).insert(id, node);
    }

    /// Passes how VM `id`, whose home is here, ended to its launch.
    pub fn ended(&self, id: u64, ended: Ended) -> Result<()> {
        match lock(&self.ended).get(&id) {
            Some(tx) => {
                let _ = tx.send(ended);
                Ok(())
            }
            None => Err(not_home("exit", id)),
        }
    }

    /// Who serves the host files of VM `id` (home `home`) if it runs on `node`: its home
    /// files if this is its home, else its home node.
    pub fn file_service(
        &self,
        node: &Arc<Node>,
        id: u64,
        home: u32,
    ) -> (Arc<dyn FileService>, Option<Arc<HomeFiles>>) {
        if home == node.id()
            && let Some(files) = lock(&self.files).get(&id)
        {
            return (files.clone(), Some(files.clone()));
        }
        let remote = RemoteFiles {
            node: node.clone(),
            home,
            id,
        };
        (Arc::new(remote), None)
    }

    /// Where the output `stream` of VM `id`, whose home is `home`, goes from `node`: this
    /// process's own if it is the home.
    pub fn output(node: &Arc<Node>, id: u64, home: u32, stream: Stream) -> Output {
        if home == node.id() {
            return local_output(stream);
        }
        Output::Sink(Arc::new(HomeOutput {
            node: node.clone(),
            home,
            id,
            stream,
        }))
    }
}

impl crate::Service for Homes {
    fn handle(&self, _node: &Arc<Node>, t: MsgType, m: &mut Incoming) -> Result<()> {
        let payload = std::mem::take(&mut m.payload);
        let bad = |e| Error::malformed(t.name(), e);
        match t {
            MsgType::Output => {
                let out: msg::Output = pop_wire::from_bytes(&payload).map_err(bad)?;
                if !self.is_home(out.vm) {
                    return Err(not_home("output", out.vm));
                }
                local_output(out.stream).write_all_bytes(&out.bytes);
                Ok(())
            }
            MsgType::Exit => {
                let exit: msg::Exit = pop_wire::from_bytes(&payload).map_err(bad)?;
                let ended = Ended {
                    status: exit.status,
                    error: exit.error,
                };
                self.ended(exit.vm, ended)
            }
            MsgType::Location => {
                let at: Location = pop_wire::from_bytes(&payload).map_err(bad)?;
                if !self.is_home(at.vm) {
                    return Err(not_home("location", at.vm));
                }
                self.set_location(at.vm, at.node);
                Ok(())
            }
            MsgType::File => {
                let request: FileRequest = pop_wire::from_bytes(&payload).map_err(bad)?;
                let files = lock(&self.files)
                    .get(&request.vm)
                    .cloned()
                    .ok_or_else(|| not_home("file operation", request.vm))?;
                let responder = m
                    .take_responder()
                    .ok_or_else(|| Error::BadMessage("FILE must be a request".into()))?;
                self.server.serve(files, request.op, responder);
                Ok(())
            }
            _ => Err(Error::BadMessage(format!(
                "{} is not a home message",
                t.name()
            ))),
        }
    }
}

/// This process's own output `stream` (a VM at home, or output arriving there).
fn local_output(stream: Stream) -> Output {
    match stream {
        Stream::Stdout => Output::Stdout,
        Stream::Stderr => Output::Stderr,
    }
}

/// A message about VM `id` whose home is not this node.
fn not_home(what: &str, id: u64) -> Error {
    Error::NoSuchVm(format!("{what} of VM {id:x}, whose home is not here"))
}

/// Guest output sent to the VM's home node.
#[derive(Debug)]
struct HomeOutput {
    node: Arc<Node>,
    home: u32,
    id: u64,
    stream: Stream,
}

impl Sink for HomeOutput {
    fn write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(msg::MAX_OUTPUT);
        let out = msg::Output {
            vm: self.id,
            stream: self.stream,
            bytes: bytes[..n].to_vec(),
        };
        self.node
            .send(
                self.home,
                MsgType::Output.number(),
                Priority::Control,
                &pop_wire::to_bytes(&out),
            )
            .map_err(std::io::Error::other)?;
        Ok(n)
    }
}
