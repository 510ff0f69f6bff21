//! One authenticated connection to a peer: per-priority send queues, a writer thread that
//! drains them highest class first, a reader thread that decodes frames and dispatches them,
//! and the table of requests waiting for a response.
//!
//! Sending never needs the writer thread when the connection is idle: a caller that finds the
//! socket free and nothing queued writes its frame itself (no thread hand-off, which is what
//! keeps small round trips close to a raw socket's). Otherwise the frame is queued in its class
//! and the writer thread sends it, so a caller never waits for another caller's queued frames.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::NodeId;
use crate::error::{Error, Result};
use crate::frame::{self, FrameMac, Header, Kind, Priority};
use crate::stats::{Event, Stats};
use crate::transport::Stream;

/// Bytes of frames the writer thread gathers into one `write`.
const WRITE_BATCH: usize = 64 * 1024;
/// Capacity of the reader's buffer.
const READ_BUFFER: usize = 64 * 1024;
/// Bytes of payload a priority class may have queued on one connection; a sender that finds
/// its class full waits for the writer (back-pressure instead of unbounded memory).
const QUEUE_LIMIT: usize = 4 * 1024 * 1024;
/// How long a waiting requester polls before it sleeps.
const REPLY_SPIN: Duration = Duration::from_micros(50);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A response as delivered to the requester.
#[derive(Debug)]
pub(crate) enum Reply {
    Ok(Vec<u8>),
    Remote(String),
    Lost,
}

/// Where a response is delivered: the requester spins briefly, then parks.
#[derive(Debug, Default)]
pub(crate) struct ReplySlot {
    ready: AtomicBool,
    value: Mutex<Option<Reply>>,
    waiter: Mutex<Option<Thread>>,
}

impl ReplySlot {
    pub(crate) fn complete(&self, r: Reply) {
        {
            let mut v = lock(&self.value);
            if v.is_some() || self.ready.load(Ordering::SeqCst) {
                return;
            }
            *v = Some(r);
        }
        self.ready.store(true, Ordering::SeqCst);
        if let Some(t) = lock(&self.waiter).as_ref() {
            t.unpark();
        }
    }

    /// Waits until `deadline`; None on time-out. Spins for [`REPLY_SPIN`] first (a response
    /// that comes quickly then costs no sleep and wake-up; `sched_yield` between polls was
    /// measured slower here), then parks.
    pub(crate) fn wait(&self, deadline: Instant) -> Option<Reply> {
        let spin_end = Instant::now() + REPLY_SPIN;
        while !self.ready.load(Ordering::Acquire) {
            if Instant::now() >= spin_end {
                *lock(&self.waiter) = Some(std::thread::current());
                while !self.ready.load(Ordering::SeqCst) {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    std::thread::park_timeout(deadline - now);
                }
                break;
            }
            std::hint::spin_loop();
        }
        lock(&self.value).take()
    }
}

struct OutFrame {
    header: Header,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Queues {
    by_class: [VecDeque<OutFrame>; Priority::COUNT],
    bytes: [usize; Priority::COUNT],
    closed: bool,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.by_class.iter().all(VecDeque::is_empty)
    }

    fn pop(&mut self) -> Option<OutFrame> {
        let class = self.by_class.iter().position(|q| !q.is_empty())?;
        let f = self.by_class[class].pop_front()?;
        self.bytes[class] -= f.payload.len();
        Some(f)
    }
}

struct WriteHalf {
    stream: Stream,
    mac: Option<FrameMac>,
    buf: Vec<u8>,
}

/// An authenticated connection.
pub(crate) struct Connection {
    pub(crate) peer: NodeId,
    control: Stream,
    write: Mutex<WriteHalf>,
    queues: Mutex<Queues>,
    queued: Condvar,
    space: Condvar,
    pending: Mutex<HashMap<u64, Arc<ReplySlot>>>,
    closed: AtomicBool,
    epoch: Instant,
    last_recv_us: AtomicU64,
    last_send_us: AtomicU64,
    stats: Arc<Stats>,
    authenticated: bool,
    /// How long after its last frame the reader polls for the next (see `await_input`).
    poll: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// What the reader thread needs besides the connection.
pub(crate) struct ReadHalf {
    pub(crate) reader: BufReader<Stream>,
    pub(crate) mac: Option<FrameMac>,
}

impl Connection {
    /// Wraps an authenticated stream; returns the connection and its read half.
    pub(crate) fn new(
        peer: NodeId,
        stream: Stream,
        send_mac: Option<FrameMac>,
        recv_mac: Option<FrameMac>,
        stats: Arc<Stats>,
        poll: Duration,
    ) -> std::io::Result<(Arc<Connection>, ReadHalf)> {
        let read = stream.try_clone()?;
        let control = stream.try_clone()?;
        let authenticated = send_mac.is_some();
        let conn = Arc::new(Connection {
            peer,
            control,
            write: Mutex::new(WriteHalf {
                stream,
                mac: send_mac,
                buf: Vec::with_capacity(WRITE_BATCH + frame::MAX_PAYLOAD),
            }),
            queues: Mutex::new(Queues::default()),
            queued: Condvar::new(),
            space: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            last_recv_us: AtomicU64::new(0),
            last_send_us: AtomicU64::new(0),
            stats,
            authenticated,
            poll,
        });
        let half = ReadHalf {
            reader: BufReader::with_capacity(READ_BUFFER, read),
            mac: recv_mac,
        };
        Ok((conn, half))
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Time since the last frame was received.
    pub(crate) fn since_recv(&self) -> Duration {
        Duration::from_micros(
            self.now_us()
                .saturating_sub(self.last_recv_us.load(Ordering::Relaxed)),
        )
    }

    /// Time since the last frame was sent.
    pub(crate) fn since_send(&self) -> Duration {
        Duration::from_micros(
            self.now_us()
                .saturating_sub(self.last_send_us.load(Ordering::Relaxed)),
        )
    }

    /// While the connection sent or received a frame within its poll window (the cluster's
    /// `poll_us`), waits for `stream` to have input by polling it, yielding the CPU between
    /// polls, instead of letting the reader sleep in its read: a frame that comes then needs
    /// no wake-up of this thread nor of an idle CPU (up to a millisecond at times under
    /// nested virtualization).
    pub(crate) fn await_input(&self, stream: &Stream) {
        let busy = |c: &Connection| c.since_recv().min(c.since_send()) < c.poll;
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        while busy(self) && !self.is_closed() {
            // SAFETY: `fd` is one valid pollfd; a zero time-out only checks readiness.
            if unsafe { libc::poll(&mut fd, 1, 0) } != 0 {
                return;
            }
            std::thread::yield_now();
        }
    }

    pub(crate) fn touch_recv(&self) {
        self.last_recv_us.store(self.now_us(), Ordering::Relaxed);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Closes the connection: wakes the reader and writer threads (which then exit) and fails
    /// every request waiting for a response.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.queues).closed = true;
        self.queued.notify_all();
        self.space.notify_all();
        self.control.shutdown();
        let pending: Vec<_> = lock(&self.pending).drain().map(|(_, s)| s).collect();
        for slot in pending {
            slot.complete(Reply::Lost);
        }
    }

    /// Sends a frame: writes it directly if the socket is free and nothing is queued,
    /// otherwise queues it for the writer thread. `direct` false always queues (for callers
    /// that must never block on the socket, like the heartbeat monitor).
    pub(crate) fn send(&self, header: Header, payload: &[u8], direct: bool) -> Result<()> {
        if self.is_closed() {
            return Err(Error::PeerLost(self.peer));
        }
        if direct
            && let Ok(mut w) = self.write.try_lock()
            && lock(&self.queues).is_empty()
        {
            let WriteHalf { stream, mac, .. } = &mut *w;
            self.count_sent(&[(header.kind, header.msg_type, payload.len())]);
            let r = frame::write_frame(stream, &header, payload, mac.as_mut());
            drop(w);
            return self.after_write(r);
        }
        let class = header.priority as usize;
        let mut q = lock(&self.queues);
        while !q.closed
            && !payload.is_empty()
            && q.bytes[class] > 0
            && q.bytes[class] + payload.len() > QUEUE_LIMIT
        {
            q = self.space.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.closed {
            return Err(Error::PeerLost(self.peer));
        }
        q.bytes[class] += payload.len();
        q.by_class[class].push_back(OutFrame {
            header,
            payload: payload.to_vec(),
        });
        drop(q);
        self.queued.notify_one();
        Ok(())
    }

    /// Counts frames about to be written (before the write, so a peer that has read them
    /// never sees stale counters here).
    fn count_sent(&self, sent: &[(Kind, u16, usize)]) {
        for &(kind, msg_type, len) in sent {
            if kind == Kind::Heartbeat {
                self.stats.count(Event::HeartbeatSent);
            } else {
                self.stats
                    .sent(msg_type, frame::wire_len(len, self.authenticated));
            }
        }
    }

    fn after_write(&self, r: std::io::Result<()>) -> Result<()> {
        match r {
            Ok(()) => {
                self.last_send_us.store(self.now_us(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                if !self.is_closed() {
                    tracing::warn!(
                        peer = self.peer,
                        "write failed: {e}; closing the connection"
                    );
                }
                self.close();
                Err(Error::PeerLost(self.peer))
            }
        }
    }

    /// The writer thread: drains the queues, highest class first, until the connection closes.
    pub(crate) fn writer_loop(&self) {
        let mut batch: Vec<OutFrame> = Vec::new();
        let mut sent = Vec::new();
        loop {
            {
                let mut q = lock(&self.queues);
                while q.is_empty() && !q.closed {
                    q = self.queued.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.closed {
                    return;
                }
            }
            let mut w = lock(&self.write);
            loop {
                let mut bytes = 0;
                {
                    let mut q = lock(&self.queues);
                    while bytes < WRITE_BATCH
                        && let Some(f) = q.pop()
                    {
                        bytes += frame::HEADER_LEN + f.payload.len();
                        batch.push(f);
                    }
                }
                if batch.is_empty() {
                    break;
                }
                self.space.notify_all();
                let WriteHalf { stream, mac, buf } = &mut *w;
                buf.clear();
                sent.clear();
                for f in batch.drain(..) {
                    frame::encode_frame(buf, &f.header, &f.payload, mac.as_mut());
                    sent.push((f.header.kind, f.header.msg_type, f.payload.len()));
                }
                self.count_sent(&sent);
                let r = stream.write_all(buf);
                if self.after_write(r).is_err() {
                    return;
                }
            }
        }
    }

    /// Registers a request waiting for the response with `correlation`.
    pub(crate) fn register(&self, correlation: u64) -> Result<Arc<ReplySlot>> {
        let slot = Arc::new(ReplySlot::default());
        lock(&self.pending).insert(correlation, slot.clone());
        if self.is_closed() {
            lock(&self.pending).remove(&correlation);
            return Err(Error::PeerLost(self.peer));
        }
        Ok(slot)
    }

    /// Forgets a request (timed out or abandoned).
    pub(crate) fn unregister(&self, correlation: u64) {
        lock(&self.pending).remove(&correlation);
    }

    /// Delivers a response; false if nobody waits for it (any more).
    pub(crate) fn deliver(&self, correlation: u64, reply: Reply) -> bool {
        match lock(&self.pending).remove(&correlation) {
            Some(slot) => {
                slot.complete(reply);
                true
            }
            None => false,
        }
    }

    /// Counts a received frame.
    pub(crate) fn count_received(&self, kind: Kind, msg_type: u16, len: usize) {
        if kind == Kind::Heartbeat {
            self.stats.count(Event::HeartbeatReceived);
        } else {
            self.stats
                .received(msg_type, frame::wire_len(len, self.authenticated));
        }
    }
}
