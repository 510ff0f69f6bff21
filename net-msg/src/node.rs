//! A node of the mesh: listens on its address, dials every peer with a lower id, accepts the
//! others, authenticates every connection, keeps them alive with heartbeats, reconnects lost
//! peers, and offers `send` / `request` to any number of threads at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::NodeId;
use crate::cluster::{Address, ClusterConfig, Secret};
use crate::connection::{Connection, ReadHalf, Reply, ReplySlot, lock};
use crate::error::{Error, Result};
use crate::frame::{self, FrameError, Header, Kind, Priority};
use crate::handshake::{self, Params};
use crate::stats::{Event, Stats, StatsSnapshot};
use crate::stream::BulkStream;
use crate::transport::{Listener, Stream};

/// Most handshakes in progress at once (more connections are dropped unanswered).
const MAX_HANDSHAKES: usize = 16;
/// The stream kind of a *wake-up*: a node that starts asks each node of a higher id (which
/// dials it, see [`crate::handshake`]) to dial now rather than when its back-off ends, so a
/// launch on a restarted node reaches the others at once. An authenticated handshake and
/// nothing after it; not a kind [`Node::open_stream`] opens.
const WAKE_KIND: u16 = u16::MAX;

/// Receives the messages that peers send to this node.
///
/// It is called on the connection's reader thread, so it must not block for long: a handler
/// that has slow work to do takes the [`Responder`] and hands the work to another thread.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    fn handle(&self, msg: Incoming);
}

impl<F: Fn(Incoming) + Send + Sync + 'static> Handler for F {
    fn handle(&self, msg: Incoming) {
        self(msg)
    }
}

/// A message from a peer.
#[derive(Debug)]
pub struct Incoming {
    /// The sender.
    pub from: NodeId,
    /// The application's message type.
    pub msg_type: u16,
    /// Its priority class.
    pub priority: Priority,
    /// The payload.
    pub payload: Vec<u8>,
    responder: Option<Responder>,
}

impl Incoming {
    /// Whether the sender waits for a response.
    pub fn is_request(&self) -> bool {
        self.responder.is_some()
    }

    /// Takes the responder, to answer later or from another thread.
    pub fn take_responder(&mut self) -> Option<Responder> {
        self.responder.take()
    }

    /// Answers the request (does nothing for a one-way message).
    pub fn respond(mut self, payload: &[u8]) -> Result<()> {
        match self.responder.take() {
            Some(r) => r.respond(payload),
            None => Ok(()),
        }
    }
}

/// Answers one request. Dropping it unanswered sends an error response, so a requester
/// never waits for a response that will not come.
#[derive(Debug)]
pub struct Responder {
    conn: Arc<Connection>,
    correlation: u64,
    msg_type: u16,
    priority: Priority,
    done: bool,
}

impl Responder {
    fn send(&mut self, kind: Kind, payload: &[u8]) -> Result<()> {
        self.done = true;
        if payload.len() > frame::MAX_PAYLOAD {
            return Err(Error::TooLarge(payload.len()));
        }
        let header = Header {
            kind,
            priority: self.priority,
            msg_type: self.msg_type,
            len: payload.len() as u32,
            correlation: self.correlation,
        };
        self.conn.send(header, payload, true)
    }

    /// Sends the response.
    pub fn respond(mut self, payload: &[u8]) -> Result<()> {
        self.send(Kind::Response, payload)
    }

    /// Sends an error response; the requester gets [`Error::Remote`] with `message`.
    pub fn fail(mut self, message: &str) -> Result<()> {
        let m = &message.as_bytes()[..message.len().min(4096)];
        self.send(Kind::ErrorResponse, m)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.send(Kind::ErrorResponse, b"request dropped unanswered");
        }
    }
}

/// A request in flight; [`PendingReply::wait`] gets its response.
#[derive(Debug)]
pub struct PendingReply {
    conn: Arc<Connection>,
    slot: Arc<ReplySlot>,
    correlation: u64,
    waited: bool,
}

impl PendingReply {
    /// Waits at most `timeout` for the response.
    pub fn wait(mut self, timeout: Duration) -> Result<Vec<u8>> {
        self.waited = true;
        let peer = self.conn.peer;
        match self.slot.wait(Instant::now() + timeout) {
            Some(Reply::Ok(v)) => Ok(v),
            Some(Reply::Remote(message)) => Err(Error::Remote {
                node: peer,
                message,
            }),
            Some(Reply::Lost) => Err(Error::PeerLost(peer)),
            None => {
                self.conn.unregister(self.correlation);
                Err(Error::Timeout(peer))
            }
        }
    }
}

impl PendingReply {
    /// Waits at most `timeout` for the response: `None` if it has not come yet (the request
    /// stays in flight: poll again, or drop it to give up), else what [`PendingReply::wait`]
    /// would have returned. For a caller that must notice other events while it waits.
    pub fn poll(&mut self, timeout: Duration) -> Option<Result<Vec<u8>>> {
        let peer = self.conn.peer;
        let reply = self.slot.wait(Instant::now() + timeout)?;
        self.waited = true;
        Some(match reply {
            Reply::Ok(v) => Ok(v),
            Reply::Remote(message) => Err(Error::Remote {
                node: peer,
                message,
            }),
            Reply::Lost => Err(Error::PeerLost(peer)),
        })
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if !self.waited {
            self.conn.unregister(self.correlation);
        }
    }
}

/// A peer's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// This node.
    Local,
    /// Connected and authenticated.
    Up,
    /// Not connected (never was, or lost and not back yet).
    Down,
}

impl PeerState {
    /// `local`, `up` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            PeerState::Local => "local",
            PeerState::Up => "up",
            PeerState::Down => "down",
        }
    }
}

/// One line of the peer list.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    /// Node id.
    pub id: NodeId,
    /// Its address, as in the cluster file.
    pub address: String,
    /// Its ISA.
    pub isa: &'static str,
    /// Whether this is the local node.
    pub local: bool,
    /// Connection state.
    pub state: PeerState,
    /// Seconds in that state.
    pub since_secs: f64,
    /// How many times a connection was established.
    pub connects: u64,
}

/// A change of a peer's state, as reported by [`Node::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// An authenticated connection to the peer is up.
    Up(NodeId),
    /// The connection was lost (closed, malformed input, missed heartbeats).
    Down(NodeId),
}

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The cluster.
    pub cluster: ClusterConfig,
    /// This node's id.
    pub id: NodeId,
    /// The shared secret.
    pub secret: Secret,
    /// Longest a handshake may take.
    pub handshake_timeout: Duration,
    /// Longest a TCP connect may take.
    pub connect_timeout: Duration,
}

impl NodeOptions {
    /// Options for node `id` with the cluster file's secret.
    pub fn new(cluster: ClusterConfig, id: NodeId) -> Result<NodeOptions> {
        let secret = cluster
            .secret
            .clone()
            .ok_or_else(|| Error::Config("no shared secret (secret_file)".into()))?;
        Self::with_secret(cluster, id, secret)
    }

    /// Options for node `id` with an explicit secret.
    pub fn with_secret(cluster: ClusterConfig, id: NodeId, secret: Secret) -> Result<NodeOptions> {
        if cluster.node(id).is_none() {
            return Err(Error::Config(format!(
                "node {id} is not in the cluster (it has {} nodes)",
                cluster.nodes.len()
            )));
        }
        Ok(NodeOptions {
            cluster,
            id,
            secret,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        })
    }
}

#[derive(Debug)]
struct SlotState {
    conn: Option<Arc<Connection>>,
    since: Instant,
    connects: u64,
    /// The last attempt to reach the peer (a dial, or a wake-up) failed, and it has not
    /// connected since.
    unreachable: bool,
}

#[derive(Debug)]
struct Slot {
    state: Mutex<SlotState>,
    changed: Condvar,
}

struct Inner {
    opts: NodeOptions,
    handler: Arc<dyn Handler>,
    slots: Vec<Slot>,
    stats: Arc<Stats>,
    shutdown: AtomicBool,
    tick: (Mutex<()>, Condvar),
    next_correlation: AtomicU64,
    handshakes: AtomicUsize,
    subscribers: Mutex<Vec<Sender<PeerEvent>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Takes the bulk streams peers open to this node (none accepted until set).
    streams: OnceLock<StreamHandler>,
}

/// What [`Node::serve_streams`] installs.
type StreamHandler = Arc<dyn Fn(BulkStream) + Send + Sync>;

/// A running node. Dropping it shuts it down.
pub struct Node {
    inner: Arc<Inner>,
    waker: Listener,
    main_threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.opts.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Binds this node's address and joins the cluster.
    pub fn start(opts: NodeOptions, handler: impl Handler) -> Result<Node> {
        let spec = opts
            .cluster
            .node(opts.id)
            .expect("checked by NodeOptions")
            .clone();
        let listener = Listener::bind(&spec.listen).map_err(|e| {
            Error::Config(format!(
                "node {}: cannot listen on {}: {e}",
                opts.id, spec.listen
            ))
        })?;
        Self::start_on(opts, listener, handler)
    }

    /// Joins the cluster accepting on `listener` (already bound to this node's address;
    /// tests bind every node's port 0 first and then write the cluster).
    pub fn start_on(opts: NodeOptions, listener: Listener, handler: impl Handler) -> Result<Node> {
        let n = opts.cluster.nodes.len();
        let now = Instant::now();
        let inner = Arc::new(Inner {
            slots: (0..n)
                .map(|_| Slot {
                    state: Mutex::new(SlotState {
                        conn: None,
                        since: now,
                        connects: 0,
                        unreachable: false,
                    }),
                    changed: Condvar::new(),
                })
                .collect(),
            handler: Arc::new(handler),
            stats: Arc::new(Stats::default()),
            shutdown: AtomicBool::new(false),
            tick: (Mutex::new(()), Condvar::new()),
            next_correlation: AtomicU64::new(1),
            handshakes: AtomicUsize::new(0),
            subscribers: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            streams: OnceLock::new(),
            opts,
        });
        let waker = listener.try_clone()?;
        let mut main_threads = Vec::new();
        let i = inner.clone();
        main_threads.push(spawn("net-accept", move || accept_loop(&i, listener))?);
        let i = inner.clone();
        main_threads.push(spawn("net-monitor", move || monitor_loop(&i))?);
        for peer in 0..inner.opts.id {
            let i = inner.clone();
            main_threads.push(spawn("net-dial", move || dial_loop(&i, peer))?);
        }
        if inner.opts.id as usize + 1 < n {
            let i = inner.clone();
            // Not tracked: it ends by itself within the connect and handshake timeouts.
            spawn("net-wake", move || wake_higher(&i))?;
        }
        tracing::info!(
            node = inner.opts.id,
            "listening on {} ({} nodes)",
            inner.opts.cluster.nodes[inner.opts.id as usize].listen,
            n
        );
        Ok(Node {
            inner,
            waker,
            main_threads,
        })
    }

    /// Opens a bulk stream of `kind` (not 0) to `peer`: a connection of its own, with a
    /// handshake of its own (see [`crate::stream`]). The peer's stream handler gets the other
    /// end. Reads and writes block without a time limit until
    /// [`BulkStream::set_timeout`] sets one.
    pub fn open_stream(&self, peer: NodeId, kind: u16) -> Result<BulkStream> {
        if kind == 0 || kind == WAKE_KIND {
            return Err(Error::Misuse(
                "stream kind 0 is the mesh connection, 65535 a wake-up",
            ));
        }
        if peer == self.inner.opts.id || peer as usize >= self.inner.slots.len() {
            return Err(Error::NoSuchPeer(peer));
        }
        let (session, s) = dial(&self.inner, peer, kind)?;
        s.set_timeouts(None)?;
        Ok(BulkStream::new(
            peer,
            kind,
            s,
            session.send_mac,
            session.recv_mac,
        ))
    }

    /// Sets what takes the bulk streams peers open to this node: `handler` runs on a thread
    /// of its own per stream, for as long as it likes. Until this is called (and after the
    /// first call) streams are refused or go to the first handler.
    pub fn serve_streams(&self, handler: impl Fn(BulkStream) + Send + Sync + 'static) {
        let _ = self.inner.streams.set(Arc::new(handler));
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.opts.id
    }

    /// The cluster.
    pub fn cluster(&self) -> &ClusterConfig {
        &self.inner.opts.cluster
    }

    fn connection(&self, to: NodeId) -> Result<Arc<Connection>> {
        if to == self.inner.opts.id || to as usize >= self.inner.slots.len() {
            return Err(Error::NoSuchPeer(to));
        }
        if self.inner.shutdown.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        lock(&self.inner.slots[to as usize].state)
            .conn
            .clone()
            .ok_or(Error::NotConnected(to))
    }

    /// Sends a one-way message. Returns once the frame is written or queued; fails at once if
    /// the peer is not connected.
    pub fn send(
        &self,
        to: NodeId,
        msg_type: u16,
        priority: Priority,
        payload: &[u8],
    ) -> Result<()> {
        if payload.len() > frame::MAX_PAYLOAD {
            return Err(Error::TooLarge(payload.len()));
        }
        let conn = self.connection(to)?;
        let header = Header {
            kind: Kind::OneWay,
            priority,
            msg_type,
            len: payload.len() as u32,
            correlation: 0,
        };
        conn.send(header, payload, true)
    }

    /// Sends a request; the returned [`PendingReply`] waits for the response. Any number of
    /// threads may have requests in flight at once.
    pub fn start_request(
        &self,
        to: NodeId,
        msg_type: u16,
        priority: Priority,
        payload: &[u8],
    ) -> Result<PendingReply> {
        if payload.len() > frame::MAX_PAYLOAD {
            return Err(Error::TooLarge(payload.len()));
        }
        let conn = self.connection(to)?;
        let correlation = self.inner.next_correlation.fetch_add(1, Ordering::Relaxed);
        let slot = conn.register(correlation)?;
        let pending = PendingReply {
            conn: conn.clone(),
            slot,
            correlation,
            waited: false,
        };
        let header = Header {
            kind: Kind::Request,
            priority,
            msg_type,
            len: payload.len() as u32,
            correlation,
        };
        conn.send(header, payload, true)?;
        Ok(pending)
    }

    /// Sends a request and waits at most `timeout` for its response. Fails with
    /// [`Error::PeerLost`] if the connection is lost meanwhile.
    pub fn request(
        &self,
        to: NodeId,
        msg_type: u16,
        priority: Priority,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        self.start_request(to, msg_type, priority, payload)?
            .wait(timeout)
    }

    /// The peer list, in id order (this node included, as [`PeerState::Local`]).
    pub fn peers(&self) -> Vec<PeerInfo> {
        let now = Instant::now();
        self.inner
            .opts
            .cluster
            .nodes
            .iter()
            .zip(&self.inner.slots)
            .map(|(spec, slot)| {
                let s = lock(&slot.state);
                let local = spec.id == self.inner.opts.id;
                PeerInfo {
                    id: spec.id,
                    address: spec.address.to_string(),
                    isa: spec.isa.name(),
                    local,
                    state: if local {
                        PeerState::Local
                    } else if s.conn.is_some() {
                        PeerState::Up
                    } else {
                        PeerState::Down
                    },
                    since_secs: now.duration_since(s.since).as_secs_f64(),
                    connects: s.connects,
                }
            })
            .collect()
    }

    /// Whether `peer` is connected.
    pub fn is_up(&self, peer: NodeId) -> bool {
        self.connection(peer).is_ok()
    }

    /// Waits until `peer` is connected (a node that just started may not have been dialled
    /// back yet); false on time-out. True at once for this node itself.
    pub fn wait_up(&self, peer: NodeId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while peer != self.id() && !self.is_up(peer) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Waits until every peer is connected; false on time-out.
    pub fn wait_all_up(&self, timeout: Duration) -> bool {
        self.wait_for_peers(timeout, |s| s.conn.is_some())
    }

    /// Waits until every peer is connected or was found unreachable (an attempt to dial or
    /// wake it failed: a node that is down refuses at once), at most `timeout`: what a node
    /// that starts waits for before it says who is up. False if some peer is neither yet.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        self.wait_for_peers(timeout, |s| s.conn.is_some() || s.unreachable)
    }

    /// Waits until `done` holds for every peer's slot, at most `timeout`; false on time-out.
    fn wait_for_peers(&self, timeout: Duration, done: impl Fn(&SlotState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let all = (0..self.inner.slots.len() as NodeId)
                .filter(|&p| p != self.id())
                .all(|p| done(&lock(&self.inner.slots[p as usize].state)));
            if all {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Peer state changes from now on.
    pub fn subscribe(&self) -> Receiver<PeerEvent> {
        let (tx, rx) = mpsc::channel();
        lock(&self.inner.subscribers).push(tx);
        rx
    }

    /// The statistics.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Resets the statistics.
    pub fn reset_stats(&self) {
        self.inner.stats.reset()
    }

    /// Leaves the cluster: closes every connection (requests in flight fail), stops the
    /// threads and removes a Unix socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.inner.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        self.waker.wake();
        self.inner.tick.1.notify_all();
        for slot in &self.inner.slots {
            let conn = lock(&slot.state).conn.take();
            if let Some(c) = conn {
                c.close();
            }
            slot.changed.notify_all();
        }
        for t in self.main_threads.drain(..) {
            let _ = t.join();
        }
        let threads: Vec<_> = lock(&self.inner.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        tracing::info!(node = self.inner.opts.id, "left the cluster");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

impl Inner {
    fn params(&self) -> Params<'_> {
        Params {
            secret: &self.opts.secret,
            local: self.opts.id,
            nodes: self.opts.cluster.nodes.len() as u32,
            frame_mac: self.opts.cluster.frame_mac,
        }
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn emit(&self, e: PeerEvent) {
        lock(&self.subscribers).retain(|tx| tx.send(e).is_ok());
    }

    fn track(&self, t: JoinHandle<()>) {
        let mut threads = lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(t);
    }

    /// Notes that an attempt to reach `peer` failed (unless it is connected meanwhile).
    fn unreachable(&self, peer: NodeId) {
        let mut s = lock(&self.slots[peer as usize].state);
        if s.conn.is_none() {
            s.unreachable = true;
        }
    }

    /// Makes an authenticated stream the connection to its peer (replacing an older one).
    fn install(self: &Arc<Self>, session: handshake::Session, stream: Stream) -> Result<()> {
        let peer = session.peer;
        stream.set_timeouts(None)?;
        let (conn, read) = Connection::new(
            peer,
            stream,
            session.send_mac,
            session.recv_mac,
            self.stats.clone(),
            self.opts.cluster.poll,
        )?;
        conn.touch_recv();
        let slot = &self.slots[peer as usize];
        {
            let mut s = lock(&slot.state);
            if self.stopping() {
                conn.close();
                return Err(Error::Shutdown);
            }
            if let Some(old) = s.conn.replace(conn.clone()) {
                tracing::info!(
                    node = self.opts.id,
                    peer,
                    "node {peer} reconnected; replacing its old connection"
                );
                old.close();
            }
            s.since = Instant::now();
            s.connects += 1;
            s.unreachable = false;
        }
        slot.changed.notify_all();
        let c = conn.clone();
        let weak = Arc::downgrade(self);
        let handler = self.handler.clone();
        self.track(spawn("net-read", move || {
            reader_loop(c, read, handler, weak)
        })?);
        let c = conn.clone();
        self.track(spawn("net-write", move || c.writer_loop())?);
        tracing::info!(node = self.opts.id, peer, "connected to node {peer}");
        self.emit(PeerEvent::Up(peer));
        Ok(())
    }

    /// Called when a connection ends: forgets it if it is still the peer's current one.
    fn lost(&self, conn: &Arc<Connection>) {
        conn.close();
        let slot = &self.slots[conn.peer as usize];
        let was_current = {
            let mut s = lock(&slot.state);
            if s.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
                s.conn = None;
                s.since = Instant::now();
                true
            } else {
                false
            }
        };
        if was_current {
            slot.changed.notify_all();
            if !self.stopping() {
                tracing::warn!(
                    node = self.opts.id,
                    peer = conn.peer,
                    "lost node {}",
                    conn.peer
                );
            }
            self.emit(PeerEvent::Down(conn.peer));
        }
    }
}

fn accept_loop(inner: &Arc<Inner>, listener: Listener) {
    loop {
        let stream = listener.accept();
        if inner.stopping() {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(node = inner.opts.id, "accept failed: {e}");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if inner.handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
            inner.handshakes.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                node = inner.opts.id,
                "too many handshakes in progress; dropping a connection"
            );
            inner.stats.count(Event::HandshakeFailed);
            continue;
        }
        let i = inner.clone();
        let r = spawn("net-handshake", move || {
            respond(&i, stream);
            i.handshakes.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = r {
            inner.handshakes.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(node = inner.opts.id, "cannot start a handshake thread: {e}");
        }
    }
}

fn respond(inner: &Arc<Inner>, mut stream: Stream) {
    let me = inner.opts.id;
    let n = inner.slots.len() as NodeId;
    let r = stream
        .set_timeouts(Some(inner.opts.handshake_timeout))
        .map_err(handshake::HandshakeError::Io)
        .and_then(|_| {
            handshake::respond(&mut stream, &inner.params(), |id, kind| match kind {
                0 => id > me && id < n,
                WAKE_KIND => id < me,
                _ => id != me && id < n && inner.streams.get().is_some(),
            })
        });
    match r {
        Ok(session) if session.stream_kind == WAKE_KIND => {
            inner.stats.count(Event::HandshakeOk);
            inner.stats.count(Event::WakeUp);
            // The dial loop for that node stops waiting and dials (if it is not connected).
            inner.slots[session.peer as usize].changed.notify_all();
        }
        Ok(session) if session.stream_kind != 0 => {
            inner.stats.count(Event::HandshakeOk);
            let Some(handler) = inner.streams.get().cloned() else {
                return;
            };
            let stream = BulkStream::new(
                session.peer,
                session.stream_kind,
                stream,
                session.send_mac,
                session.recv_mac,
            );
            if let Err(e) = stream.set_timeout(None) {
                tracing::warn!(node = me, "cannot set up a bulk stream: {e}");
                return;
            }
            // Not tracked: the handler owns the stream and its thread (shutdown does not wait).
            if let Err(e) = spawn("net-stream", move || handler(stream)) {
                tracing::warn!(node = me, "cannot start a stream thread: {e}");
            }
        }
        Ok(session) => {
            inner.stats.count(Event::HandshakeOk);
            if let Err(e) = inner.install(session, stream) {
                tracing::warn!(node = me, "cannot set up a connection: {e}");
            }
        }
        Err(e) => {
            inner.stats.count(Event::HandshakeFailed);
            tracing::warn!(node = me, "refused an incoming connection: {e}");
        }
    }
}

/// Connects to node `peer` and runs the initiator's handshake for a connection of `kind` (0:
/// the mesh connection), within the connect and handshake time limits (still set on the
/// stream it returns).
fn dial(
    inner: &Inner,
    peer: NodeId,
    kind: u16,
) -> std::result::Result<(handshake::Session, Stream), handshake::HandshakeError> {
    let addr = inner
        .opts
        .cluster
        .dial_address(inner.opts.id, peer)
        .expect("peers are nodes of the cluster");
    let mut s = Stream::connect(&addr, inner.opts.connect_timeout)?;
    s.set_timeouts(Some(inner.opts.handshake_timeout))?;
    let session = handshake::initiate_stream(&mut s, &inner.params(), peer, kind)?;
    Ok((session, s))
}

/// Wakes each node of a higher id once (see [`WAKE_KIND`]); one that is not up dials this
/// node when it starts.
fn wake_higher(inner: &Arc<Inner>) {
    let n = inner.slots.len() as NodeId;
    for peer in inner.opts.id + 1..n {
        if inner.stopping() {
            return;
        }
        if let Err(e) = dial(inner, peer, WAKE_KIND) {
            tracing::debug!(node = inner.opts.id, peer, "node {peer} not woken: {e}");
            inner.unreachable(peer);
        }
    }
}

fn dial_loop(inner: &Arc<Inner>, peer: NodeId) {
    let me = inner.opts.id;
    let addr: Address = inner
        .opts
        .cluster
        .dial_address(me, peer)
        .expect("peers are nodes of the cluster");
    let retry =
        (inner.opts.cluster.heartbeat / 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let slot = &inner.slots[peer as usize];
    let mut failures = 0u32;
    loop {
        {
            let mut s = lock(&slot.state);
            while s.conn.is_some() && !inner.stopping() {
                s = slot.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
        if inner.stopping() {
            return;
        }
        let attempt = dial(inner, peer, 0);
        match attempt {
            Ok((session, stream)) => {
                failures = 0;
                inner.stats.count(Event::HandshakeOk);
                if let Err(e) = inner.install(session, stream) {
                    tracing::warn!(node = me, peer, "cannot set up a connection: {e}");
                }
                continue;
            }
            Err(handshake::HandshakeError::Io(e)) => {
                inner.unreachable(peer);
                if failures == 0 {
                    tracing::debug!(
                        node = me,
                        peer,
                        "cannot reach node {peer} at {addr}: {e}; retrying"
                    );
                }
            }
            Err(e) => {
                inner.unreachable(peer);
                inner.stats.count(Event::HandshakeFailed);
                tracing::warn!(
                    node = me,
                    peer,
                    "handshake with node {peer} at {addr} failed: {e}"
                );
            }
        }
        failures = failures.saturating_add(1);
        // Back off while the peer stays away or keeps refusing us, up to two heartbeats (at
        // most 2 s): a peer that starts is reached within that, so a node launching a VM
        // sees the others up soon after it starts.
        let cap = (inner.opts.cluster.heartbeat * 2).min(Duration::from_secs(2));
        let wait = (retry * (1 << failures.min(6))).min(cap).max(retry);
        let s = lock(&slot.state);
        if !inner.stopping() {
            let _ = slot.changed.wait_timeout(s, wait);
        }
    }
}

fn reader_loop(
    conn: Arc<Connection>,
    mut read: ReadHalf,
    handler: Arc<dyn Handler>,
    node: Weak<Inner>,
) {
    let peer = conn.peer;
    let result = loop {
        if read.reader.buffer().is_empty() {
            conn.await_input(read.reader.get_ref());
        }
        let f = match frame::read_frame(&mut read.reader, read.mac.as_mut()) {
            Ok(f) => f,
            Err(e) => break e,
        };
        conn.touch_recv();
        let h = f.header;
        conn.count_received(h.kind, h.msg_type, f.payload.len());
        match h.kind {
            Kind::Heartbeat => {}
            Kind::OneWay | Kind::Request => {
                let responder = (h.kind == Kind::Request).then(|| Responder {
                    conn: conn.clone(),
                    correlation: h.correlation,
                    msg_type: h.msg_type,
                    priority: h.priority,
                    done: false,
                });
                handler.handle(Incoming {
                    from: peer,
                    msg_type: h.msg_type,
                    priority: h.priority,
                    payload: f.payload,
                    responder,
                });
            }
            Kind::Response | Kind::ErrorResponse => {
                let reply = if h.kind == Kind::Response {
                    Reply::Ok(f.payload)
                } else {
                    Reply::Remote(String::from_utf8_lossy(&f.payload).into_owned())
                };
                if !conn.deliver(h.correlation, reply) {
                    tracing::debug!(
                        peer,
                        "response {} arrived after its requester gave up",
                        h.correlation
                    );
                }
            }
        }
    };
    let inner = node.upgrade();
    if !conn.is_closed() {
        match &result {
            FrameError::Closed => tracing::info!(peer, "node {peer} closed the connection"),
            FrameError::Io(e) => tracing::warn!(peer, "connection to node {peer}: {e}"),
            e => {
                tracing::warn!(
                    peer,
                    "malformed input from node {peer}: {e}; closing the connection"
                );
                if let Some(i) = &inner {
                    i.stats.count(Event::BadFrame);
                }
            }
        }
    }
    conn.close();
    if let Some(i) = inner {
        i.lost(&conn);
    }
}

fn monitor_loop(inner: &Arc<Inner>) {
    let hb = inner.opts.cluster.heartbeat;
    let limit = hb * inner.opts.cluster.heartbeat_misses;
    loop {
        {
            let g = lock(&inner.tick.0);
            if inner.stopping() {
                return;
            }
            let _ = inner.tick.1.wait_timeout(g, hb / 2);
        }
        if inner.stopping() {
            return;
        }
        for slot in &inner.slots {
            let conn = lock(&slot.state).conn.clone();
            let Some(conn) = conn else { continue };
            if conn.since_recv() > limit {
                tracing::warn!(
                    node = inner.opts.id,
                    peer = conn.peer,
                    "no frame from node {} for {:?} ({} heartbeat periods); declaring it lost",
                    conn.peer,
                    conn.since_recv(),
                    inner.opts.cluster.heartbeat_misses
                );
                inner.stats.count(Event::HeartbeatLoss);
                conn.close();
                inner.lost(&conn);
            } else if conn.since_send() >= hb / 2 {
                let header = Header {
                    kind: Kind::Heartbeat,
                    priority: Priority::Control,
                    msg_type: 0,
                    len: 0,
                    correlation: 0,
                };
                let _ = conn.send(header, &[], false);
            }
        }
    }
}
