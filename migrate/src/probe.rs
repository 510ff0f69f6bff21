//! Stream probes (`popvmm ping --stream`): a timed bulk stream from one node process to
//! another, its bytes received there into fresh memory, as a scan's pages are. It is the
//! baseline of the DSM's scans measured between the very node processes (and so in the
//! very memory state) a scan runs in, and a quick look at what two nodes can carry.

use std::time::{Duration, Instant};

use net_msg::{BulkStream, Node};
use pop_dsm::uffd::Staging;

/// The bulk-stream kind of a probe.
pub const KIND: u16 = 3;
/// The most bytes one probe carries.
pub const MAX_BYTES: u64 = 1 << 30;
/// Bytes of each record (a huge page, as a streamed run's).
pub const RECORD: usize = 2 << 20;
/// How long the probe's stream may wait for the other end.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Streams `bytes` (a multiple of [`RECORD`], at most [`MAX_BYTES`]) to node `to` in
/// records of [`RECORD`] bytes; returns the seconds from the first record to the receiver's
/// word that all of it is in.
pub fn stream_to(node: &Node, to: u32, bytes: u64) -> Result<f64, String> {
    if bytes == 0 || bytes > MAX_BYTES || !bytes.is_multiple_of(RECORD as u64) {
        return Err(format!(
            "a probe carries a multiple of {} MiB up to {} MiB",
            RECORD >> 20,
            MAX_BYTES >> 20
        ));
    }
    let mut s = node.open_stream(to, KIND).map_err(|e| e.to_string())?;
    s.set_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let record = vec![0x5au8; RECORD];
    let t = Instant::now();
    s.send(&bytes.to_le_bytes(), &[])
        .map_err(|e| e.to_string())?;
    for _ in 0..bytes / RECORD as u64 {
        s.send(&[1], &record).map_err(|e| e.to_string())?;
    }
    match s.recv().map_err(|e| e.to_string())? {
        Some((head, _)) if head == b"ok" => Ok(t.elapsed().as_secs_f64()),
        Some((head, _)) => Err(String::from_utf8_lossy(&head).into_owned()),
        None => Err(format!("node {to} closed the probe's stream")),
    }
}

/// Receives a probe: its first record says how many bytes come; they are read into a fresh
/// mapping of that size, then acknowledged. A probe that breaks these rules is dropped.
pub fn serve(mut stream: BulkStream) {
    let _ = receive(&mut stream).map_err(|e| stream.send(e.as_bytes(), &[]));
}

fn receive(s: &mut BulkStream) -> Result<(), String> {
    s.set_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let bytes = match s.recv().map_err(|e| e.to_string())? {
        Some((head, body)) if head.len() == 8 && body.is_empty() => {
            u64::from_le_bytes(head[..].try_into().expect("8 bytes"))
        }
        _ => return Err("a probe that does not say its length".into()),
    };
    if bytes == 0 || bytes > MAX_BYTES || !bytes.is_multiple_of(RECORD as u64) {
        return Err(format!("a probe of {bytes} bytes"));
    }
    let mut memory = Staging::new(bytes).map_err(|e| e.to_string())?;
    for record in memory.bytes().chunks_mut(RECORD) {
        match s.recv_head().map_err(|e| e.to_string())? {
            Some(h) if h.body_len == RECORD => {}
            _ => return Err("a probe record of another size".into()),
        }
        s.recv_body(&mut [record]).map_err(|e| e.to_string())?;
    }
    s.send(b"ok", &[]).map_err(|e| e.to_string())
}
