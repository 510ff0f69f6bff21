//! File hypercalls of a VM away from home: the VM's node sends each [`FileOp`] to the home
//! node (`FILE`), which carries it out on the VM's [`HomeFiles`] and answers. The guest sees
//! the same mounts, descriptors and offsets wherever it runs.
//!
//! The home serves requests on a few worker threads of its own, never on the connection's
//! reader thread: an operation may block (a read of the home's standard input, a slow disk).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use net_msg::{Node, Priority, Responder};

use crate::msg::{FileRequest, MsgType};
use vmm::fs::op::{self, FileOp, Reply};
use vmm::fs::{FileService, HomeFiles};

/// How long a file operation may take at home before the guest gets `EIO`. Long: a read of
/// the home's terminal waits for its user. A lost home fails the call at once.
const CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Worker threads serving `FILE` at a home.
const WORKERS: usize = 4;

/// The file service of a VM whose home is another node.
#[derive(Debug)]
pub struct RemoteFiles {
    /// This node.
    pub node: Arc<Node>,
    /// The VM's home node.
    pub home: u32,
    /// The VM.
    pub id: u64,
}

impl FileService for RemoteFiles {
    fn call(&self, op: FileOp) -> Reply {
        let request = pop_wire::to_bytes(&FileRequest { vm: self.id, op });
        let answer = self.node.request(
            self.home,
            MsgType::File.number(),
            Priority::Control,
            &request,
            CALL_TIMEOUT,
        );
        match answer {
            Ok(bytes) => op::decode_reply(&bytes).unwrap_or_else(|e| {
                tracing::warn!("file reply from home node {}: {e}", self.home);
                Err(pop_abi::errno::EIO)
            }),
            Err(e) => {
                tracing::warn!("file operation at home node {}: {e}", self.home);
                Err(pop_abi::errno::EIO)
            }
        }
    }
}

/// A `FILE` request to serve.
struct Job {
    files: Arc<HomeFiles>,
    op: FileOp,
    responder: Responder,
}

/// The home's side: a small pool of threads carrying out `FILE` requests.
#[derive(Debug)]
pub struct FileServer {
    jobs: Mutex<Option<Sender<Job>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("op", &self.op).finish()
    }
}

impl Default for FileServer {
    fn default() -> Self {
        FileServer {
            jobs: Mutex::new(None),
        }
    }
}

impl FileServer {
    /// Queues `op` on `files`; the answer goes to `responder`.
    pub fn serve(&self, files: Arc<HomeFiles>, op: FileOp, responder: Responder) {
        let mut jobs = vmm::sync::lock(&self.jobs);
        let tx = jobs.get_or_insert_with(start_workers);
        // The workers live as long as the process (they hold the receiver), so this cannot
        // fail; if it did, the requester would see the connection's loss or its timeout.
        let _ = tx.send(Job {
            files,
            op,
            responder,
        });
    }
}

fn start_workers() -> Sender<Job> {
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..WORKERS {
        let rx = rx.clone();
        let _ = std::thread::Builder::new()
            .name(format!("files-{i}"))
            .spawn(move || work(&rx));
    }
    tx
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match vmm::sync::lock(rx).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let reply = job.files.serve(job.op);
        let _ = job.responder.respond(&op::encode_reply(&reply));
    }
}
