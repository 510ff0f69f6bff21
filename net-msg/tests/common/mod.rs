//! Test clusters: N nodes in this process over loopback TCP or Unix sockets in a temporary
//! directory; ports come from binding port 0 first, so parallel tests never collide.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use net_msg::transport::Listener;
use net_msg::{Address, ClusterConfig, Incoming, Node, NodeId, NodeOptions, Secret};

pub const SECRET: &[u8] = b"test secret: 0123456789abcdef";
/// Requests of this type are echoed by [`Recorder`] handlers.
pub const ECHO: u16 = 20;
/// Requests of this type are never answered (the responder is leaked).
pub const BLACK_HOLE: u16 = 99;
/// Generous bound for anything that should happen "soon" (never a timing assertion).
pub const SOON: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

pub const BOTH: [Transport; 2] = [Transport::Tcp, Transport::Unix];

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A received one-way message.
#[derive(Debug)]
pub struct Got {
    pub from: NodeId,
    pub msg_type: u16,
    pub priority: net_msg::Priority,
    pub payload: Vec<u8>,
}

/// A handler that echoes ECHO requests, leaks BLACK_HOLE responders, and passes one-way
/// messages to a channel.
/// One-way messages wait while `pause` is locked (so a test can stall a node's reader).
pub fn recorder(pause: Arc<Mutex<()>>) -> (impl net_msg::Handler, Receiver<Got>) {
    let (tx, rx) = mpsc::channel::<Got>();
    let tx = Mutex::new(tx);
    let h = move |mut m: Incoming| {
        drop(pause.lock().unwrap());
        if m.is_request() {
            match m.msg_type {
                ECHO => {
                    let p = m.payload.clone();
                    let _ = m.respond(&p);
                }
                BLACK_HOLE => std::mem::forget(m.take_responder()),
                _ => {}
            }
            return;
        }
        let _ = tx.lock().unwrap().send(Got {
            from: m.from,
            msg_type: m.msg_type,
            priority: m.priority,
            payload: m.payload,
        });
    };
    (h, rx)
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config: ClusterConfig,
    listeners: Vec<Option<Listener>>,
    pub nodes: Vec<Option<Node>>,
    pub inbox: Vec<Option<Receiver<Got>>>,
    pub pause: Vec<Arc<Mutex<()>>>,
}

impl TestCluster {
    /// Describes an `n`-node cluster and binds every node's address (nothing started yet).
    pub fn new(n: usize, t: Transport, extra: &str) -> TestCluster {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let mut text = if extra.contains("heartbeat_ms") {
            format!("{extra}\n")
        } else {
            // Slow enough that a starved test process (2 busy cores) is not taken for a dead peer.
            format!("heartbeat_ms = 250\nheartbeat_misses = 4\n{extra}\n")
        };
        let mut listeners = Vec::new();
        for id in 0..n {
            let addr = match t {
                Transport::Tcp => Address::Tcp("127.0.0.1:0".parse().unwrap()),
                Transport::Unix => Address::Unix(dir.path().join(format!("n{id}.sock"))),
            };
            let l = Listener::bind(&addr).unwrap();
            let a = l.local_address().unwrap();
            text += &format!("[[node]]\nid = {id}\naddress = \"{a}\"\nisa = \"x86_64\"\n");
            listeners.push(Some(l));
        }
        let config = ClusterConfig::parse(&text, dir.path()).unwrap();
        TestCluster {
            dir,
            config,
            listeners,
            nodes: (0..n).map(|_| None).collect(),
            inbox: (0..n).map(|_| None).collect(),
            pause: (0..n).map(|_| Arc::default()).collect(),
        }
    }

    pub fn start_with(&mut self, id: usize, secret: &[u8]) {
        let opts = NodeOptions::with_secret(
            self.config.clone(),
            id as NodeId,
            Secret::new(secret).unwrap(),
        )
        .unwrap();
        let (h, rx) = recorder(self.pause[id].clone());
        let node = match self.listeners[id].take() {
            Some(l) => Node::start_on(opts, l, h).unwrap(),
            None => Node::start(opts, h).unwrap(),
        };
        self.nodes[id] = Some(node);
        self.inbox[id] = Some(rx);
    }

    pub fn start(&mut self, id: usize) {
        self.start_with(id, SECRET)
    }

    /// Starts all nodes and waits until each sees every other.
    pub fn start_all(n: usize, t: Transport) -> TestCluster {
        Self::start_all_with(n, t, "")
    }

    /// [`TestCluster::start_all`] with extra cluster-file settings.
    pub fn start_all_with(n: usize, t: Transport, extra: &str) -> TestCluster {
        let mut c = TestCluster::new(n, t, extra);
        for id in 0..n {
            c.start(id);
        }
        for id in 0..n {
            assert!(
                c.node(id).wait_all_up(SOON),
                "node {id} did not see every peer"
            );
        }
        c
    }

    /// Closes the address of node `id`, never started: dials and wake-ups to it are
    /// refused, as a node that is down refuses them.
    pub fn close(&mut self, id: usize) {
        self.listeners[id] = None;
    }

    pub fn node(&self, id: usize) -> &Node {
        self.nodes[id].as_ref().expect("node running")
    }

    pub fn stop(&mut self, id: usize) {
        if let Some(n) = self.nodes[id].take() {
            n.shutdown();
        }
        self.inbox[id] = None;
    }

    pub fn address(&self, id: usize) -> Address {
        self.config.nodes[id].address.clone()
    }

    pub fn secret_path(&self) -> PathBuf {
        self.dir.path().join("secret")
    }
}

/// Polls `f` until it is true; false if it is still false after [`SOON`].
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SOON;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

pub type Shared<T> = Arc<Mutex<T>>;
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    mpsc::channel()
}
