//! Statistics: bytes and messages sent and received, per message type (like Popcorn's
//! `/proc/popcorn_stat`), plus connection-level counters.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Counters of one message type (or of all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Messages sent (one-way, requests and responses).
    pub msgs_sent: u64,
    /// Bytes sent on the wire (headers and tags included).
    pub bytes_sent: u64,
    /// Messages received.
    pub msgs_received: u64,
    /// Bytes received on the wire.
    pub bytes_received: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.msgs_sent += o.msgs_sent;
        self.bytes_sent += o.bytes_sent;
        self.msgs_received += o.msgs_received;
        self.bytes_received += o.bytes_received;
    }
}

/// A copy of the statistics at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsSnapshot {
    /// Seconds since the counters were started or reset.
    pub elapsed_secs: f64,
    /// All message types together.
    pub total: Counters,
    /// Per message type, in type order.
    pub by_type: BTreeMap<u16, Counters>,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Heartbeats received.
    pub heartbeats_received: u64,
    /// Handshakes that succeeded.
    pub handshakes_ok: u64,
    /// Handshakes that failed (wrong secret, other version, garbage, time-out, ...).
    pub handshakes_failed: u64,
    /// Authenticated connections closed because of a malformed frame.
    pub bad_frames: u64,
    /// Peers declared lost after missing heartbeats.
    pub heartbeat_losses: u64,
    /// Wake-ups from (authenticated) nodes of lower ids that started: each made this node
    /// dial at once.
    pub wake_ups: u64,
}

impl StatsSnapshot {
    /// Megabytes (10^6 bytes) per second sent, since the start or the last reset.
    pub fn mb_per_sec_sent(&self) -> f64 {
        self.total.bytes_sent as f64 / 1e6 / self.elapsed_secs.max(1e-9)
    }

    /// Megabytes per second received.
    pub fn mb_per_sec_received(&self) -> f64 {
        self.total.bytes_received as f64 / 1e6 / self.elapsed_secs.max(1e-9)
    }
}

/// A node's statistics (shared by its connections).
#[derive(Debug)]
pub struct Stats {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    since: Instant,
    snap: StatsSnapshot,
}

/// Connection-level events that are counted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    HeartbeatSent,
    HeartbeatReceived,
    HandshakeOk,
    HandshakeFailed,
    BadFrame,
    HeartbeatLoss,
    WakeUp,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            inner: Mutex::new(Inner {
                since: Instant::now(),
                snap: StatsSnapshot::default(),
            }),
        }
    }
}

impl Stats {
    fn with<R>(&self, f: impl FnOnce(&mut StatsSnapshot) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g.snap)
    }

    pub(crate) fn sent(&self, msg_type: u16, bytes: usize) {
        self.with(|s| {
            let c = s.by_type.entry(msg_type).or_default();
            c.msgs_sent += 1;
            c.bytes_sent += bytes as u64;
        })
    }

    pub(crate) fn received(&self, msg_type: u16, bytes: usize) {
        self.with(|s| {
            let c = s.by_type.entry(msg_type).or_default();
            c.msgs_received += 1;
            c.bytes_received += bytes as u64;
        })
    }

    pub(crate) fn count(&self, e: Event) {
        self.with(|s| {
            *match e {
                Event::HeartbeatSent => &mut s.heartbeats_sent,
                Event::HeartbeatReceived => &mut s.heartbeats_received,
                Event::HandshakeOk => &mut s.handshakes_ok,
                Event::HandshakeFailed => &mut s.handshakes_failed,
                Event::BadFrame => &mut s.bad_frames,
                Event::HeartbeatLoss => &mut s.heartbeat_losses,
                Event::WakeUp => &mut s.wake_ups,
            } += 1
        })
    }

    /// A copy of the counters, with totals and the elapsed time filled in.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = g.snap.clone();
        s.elapsed_secs = g.since.elapsed().as_secs_f64();
        s.total = Counters::default();
        for c in s.by_type.values() {
            s.total.add(c);
        }
        s
    }

    /// Sets every counter to zero and restarts the clock.
    pub fn reset(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.since = Instant::now();
        g.snap = StatsSnapshot::default();
    }
}
