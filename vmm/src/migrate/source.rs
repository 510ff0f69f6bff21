//! The pre-copy driver, on the node the VM leaves: copy all memory while the VM runs, then
//! what it dirtied, in rounds, until the rest fits the downtime target (or a round limit);
//! then stop the vCPUs, send the rest, the vCPU states and the thread table, and switch over.
//! Any failure before the switch-over resumes the VM here as if nothing happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use net_msg::{Node, Priority};
use serde_json::{Value, json};

use super::dest::{BeginMeta, CommitMeta};
use super::host::HostedVm;
use super::{dirty, msg};
use crate::memory::PAGE_SIZE;
use crate::vm::{Paused, VmShared};
use crate::wire::Encoder;

/// Most copy rounds before the VM is stopped whatever is left.
pub const MAX_ROUNDS: u32 = 30;
/// Rounds in a row without progress after which the VM is stopped.
pub const STALLED_ROUNDS: u32 = 2;
/// Pages per `PAGES` message (each page: its address and 4 KiB, within net-msg's 256 KiB).
pub const PAGES_PER_MESSAGE: usize = 63;
/// Post-copy reports its push after every this many pages (64 MiB).
const PUSH_STEP: usize = 16384;
/// Bytes of image per `IMAGE` message.
const IMAGE_CHUNK: usize = 192 * 1024;
/// How long to wait for the destination to be connected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the destination may take to answer a step.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Moves `hvm` to node `to` with pre-copy. `progress` is called after each round with a JSON
/// object (round, pages, bytes, MB/s, remaining pages, estimated downtime). Returns the
/// summary; on error the VM runs on here.
pub fn precopy(
    node: &Node,
    hvm: &Arc<HostedVm>,
    to: u32,
    downtime_ms: u64,
    progress: &mut dyn FnMut(Value),
) -> Result<Value, String> {
    let start = Instant::now();
    begin_transfer(node, hvm, to, false)?;
    let vm = &hvm.vm;
    let abort = |why: String| {
        let _ = node.send(to, msg::ABORT, Priority::Control, &hvm.id.to_le_bytes());
        why
    };
    hvm.set_state("migrating");
    let result = copy_and_switch(node, hvm, to, downtime_ms, start, progress);
    match result {
        Ok(summary) => Ok(summary),
        Err(e) => {
            dirty::stop(vm);
            hvm.set_state("running");
            Err(abort(e))
        }
    }
}

/// Checks, `BEGIN`, and the image.
fn begin_transfer(node: &Node, hvm: &Arc<HostedVm>, to: u32, postcopy: bool) -> Result<(), String> {
    let vm = &hvm.vm;
    check_destination(node, to)?;
    let meta = BeginMeta {
        vm: hvm.id,
        name: hvm.name.clone(),
        home: hvm.home,
        arch: crate::arch::NAME.to_string(),
        private_size: vm.mem.private_size(),
        shared_size: vm.mem.shared_size(),
        max_threads: vm.max_vcpus,
        image_len: vm.image.bytes.len() as u64,
        postcopy,
    };
    let meta = serde_json::to_vec(&meta).map_err(|e| e.to_string())?;
    node.request(to, msg::BEGIN, Priority::Control, &meta, STEP_TIMEOUT)
        .map_err(|e| format!("node {to} refused the VM: {e}"))?;
    for (i, chunk) in vm.image.bytes.chunks(IMAGE_CHUNK).enumerate() {
        let mut e = Encoder::with_capacity(chunk.len() + 16);
        e.u64(hvm.id).u64((i * IMAGE_CHUNK) as u64).bytes(chunk);
        if let Err(err) = node.send(to, msg::IMAGE, Priority::Bulk, &e.finish()) {
            let _ = node.send(to, msg::ABORT, Priority::Control, &hvm.id.to_le_bytes());
            return Err(format!("sending the image to node {to}: {err}"));
        }
    }
    Ok(())
}

/// Post-copy, up to the switch-over: stops the VM at once, sends the private region, the
/// vCPU states and the thread table, and starts the VM on `to`, which fetches the shared
/// region's pages on demand. Returns (downtime, bytes sent). On error the VM runs on here.
/// Afterwards the caller keeps the VM's memory to serve `FETCH` and calls [`push_rest`].
pub fn postcopy_switch(
    node: &Node,
    hvm: &Arc<HostedVm>,
    to: u32,
) -> Result<(Duration, u64), String> {
    begin_transfer(node, hvm, to, true)?;
    let vm = &hvm.vm;
    let stop = Instant::now();
    let paused = match vm.pause(Duration::from_secs(5)) {
        Ok(p) => p,
        Err(e) => {
            let _ = node.send(to, msg::ABORT, Priority::Control, &hvm.id.to_le_bytes());
            return Err(e);
        }
    };
    let result = (|| -> Result<u64, String> {
        let paused_realtime_ns = crate::sys::realtime_ns();
        let private: Vec<u64> = dirty::resident_pages(vm)
            .into_iter()
            .filter(|&a| a < vm.mem.private_size())
            .collect();
        let (_, bytes) = send_pages(node, to, vm, hvm.id, &private, true)?;
        let state_bytes = hand_over(node, to, vm, hvm.id, &paused, paused_realtime_ns)?;
        Ok(bytes + state_bytes)
    })();
    match result {
        Ok(bytes) => {
            let downtime = stop.elapsed();
            hvm.set_state("postcopy-source");
            vm.leave();
            Ok((downtime, bytes))
        }
        Err(e) => {
            let _ = node.send(to, msg::ABORT, Priority::Control, &hvm.id.to_le_bytes());
            vm.resume();
            Err(e)
        }
    }
}

/// Post-copy, after the switch-over: pushes every page of the shared region the VM had
/// touched, then `DONE`; `progress` hears how far it got every [`PUSH_STEP`] pages. Returns
/// (pages, bytes).
pub fn push_rest(
    node: &Node,
    hvm: &Arc<HostedVm>,
    to: u32,
    progress: &mut dyn FnMut(Value),
) -> Result<(u64, u64), String> {
    let vm = &hvm.vm;
    let shared: Vec<u64> = dirty::resident_pages(vm)
        .into_iter()
        .filter(|&a| a >= vm.mem.private_size())
        .collect();
    let start = Instant::now();
    let mut sent = (0, 0);
    for (i, step) in shared.chunks(PUSH_STEP).enumerate() {
        let (pages, bytes) = send_pages(node, to, vm, hvm.id, step, true)?;
        sent = (sent.0 + pages, sent.1 + bytes);
        let done = (i * PUSH_STEP + step.len()) as u64;
        if done < shared.len() as u64 {
            progress(json!({
                "phase": "push",
                "pushed_pages": done,
                "total_pages": shared.len(),
                "bytes": sent.1,
                "mb_per_sec": sent.1 as f64 / start.elapsed().as_secs_f64().max(1e-6) / 1e6,
            }));
        }
    }
    node.request(
        to,
        msg::DONE,
        Priority::Bulk,
        &hvm.id.to_le_bytes(),
        STEP_TIMEOUT,
    )
    .map_err(|e| format!("node {to} did not confirm the last pages: {e}"))?;
    Ok(sent)
}

/// The ISA and reachability checks, before anything is sent.
fn check_destination(node: &Node, to: u32) -> Result<(), String> {
    if to == node.id() {
        return Err(format!("the VM already runs on node {to}"));
    }
    let Some(spec) = node.cluster().nodes.get(to as usize) else {
        return Err(format!("there is no node {to} in the cluster"));
    };
    if spec.isa.name() != crate::arch::NAME {
        return Err(format!(
            "node {to} is {}, this VM is {}: whole-VM migration needs the same ISA",
            spec.isa.name(),
            crate::arch::NAME
        ));
    }
    // A node that just started may not have been dialled back yet.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while node
        .peers()
        .get(to as usize)
        .is_none_or(|p| p.state != net_msg::PeerState::Up)
    {
        if Instant::now() > deadline {
            return Err(format!(
                "node {to} is not connected (is it running, with the cluster's secret?)"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn copy_and_switch(
    node: &Node,
    hvm: &Arc<HostedVm>,
    to: u32,
    downtime_ms: u64,
    start: Instant,
    progress: &mut dyn FnMut(Value),
) -> Result<Value, String> {
    let vm = &hvm.vm;
    dirty::start(vm)?;
    // Pages never touched are not resident and read as zero: the destination has them.
    let mut pages = dirty::resident_pages(vm);
    let mut bytes_sent = 0u64;
    let mut round = 0;
    let mut rate = 0f64; // bytes per second
    let (mut previous, mut stalled) = (pages.len(), 0);
    loop {
        round += 1;
        let t = Instant::now();
        let (sent, bytes) = send_pages(node, to, vm, hvm.id, &pages, round == 1)?;
        sync(node, to, hvm.id)?;
        bytes_sent += bytes;
        let secs = t.elapsed().as_secs_f64().max(1e-6);
        if bytes > 0 {
            rate = bytes as f64 / secs;
        }
        pages = dirty::take(vm)?;
        let remaining = pages.len() as u64 * (PAGE_SIZE + 8);
        let estimate_ms = if rate > 0.0 {
            remaining as f64 / rate * 1e3
        } else {
            0.0
        };
        progress(json!({
            "round": round,
            "pages": sent,
            "bytes": bytes,
            "mb_per_sec": rate / 1e6,
            "remaining_pages": pages.len(),
            "estimated_downtime_ms": estimate_ms,
        }));
        // Stop when the rest fits the target, at the round limit, or when the guest dirties
        // memory as fast as it is copied (two rounds without shrinking the dirty set by a
        // tenth: more rounds would only resend the same pages).
        if pages.len() as f64 > 0.9 * previous as f64 {
            stalled += 1;
        } else {
            stalled = 0;
        }
        previous = pages.len();
        if estimate_ms <= downtime_ms as f64 || round >= MAX_ROUNDS || stalled >= STALLED_ROUNDS {
            break;
        }
    }
    // Stop and copy the rest.
    let stop = Instant::now();
    let paused = vm.pause(Duration::from_secs(5))?;
    let result = (|| -> Result<(u64, u64), String> {
        let paused_realtime_ns = crate::sys::realtime_ns();
        let mut last = dirty::take(vm)?;
        last.extend_from_slice(&pages);
        last.sort_unstable();
        last.dedup();
        let (n_last, bytes) = send_pages(node, to, vm, hvm.id, &last, false)?;
        let state_bytes = hand_over(node, to, vm, hvm.id, &paused, paused_realtime_ns)?;
        Ok((n_last, bytes + state_bytes))
    })();
    let (last_pages, last_bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            vm.resume();
            return Err(e);
        }
    };
    let downtime = stop.elapsed();
    hvm.set_state("moved");
    vm.leave();
    bytes_sent += last_bytes;
    Ok(json!({
        "from": node.id(),
        "to": to,
        "mode": "precopy",
        "rounds": round,
        "total_ms": start.elapsed().as_secs_f64() * 1e3,
        "downtime_ms": downtime.as_secs_f64() * 1e3,
        "bytes": bytes_sent,
        "last_pages": last_pages,
        "vcpus": paused.vcpus.len(),
    }))
}

/// Sends the pages at `addrs` (skipping all-zero pages if `skip_zero`: the destination's
/// memory starts zeroed). Returns (pages sent, bytes sent). Each page is read from guest
/// memory straight into the message.
fn send_pages(
    node: &Node,
    to: u32,
    vm: &VmShared,
    id: u64,
    addrs: &[u64],
    skip_zero: bool,
) -> Result<(u64, u64), String> {
    let page = PAGE_SIZE as usize;
    let header = 12 + PAGES_PER_MESSAGE * 8;
    let mut payload = vec![0u8; header + PAGES_PER_MESSAGE * page];
    let (mut pages, mut bytes) = (0u64, 0u64);
    let mut n = 0usize;
    let mut flush = |payload: &mut Vec<u8>, n: usize| -> Result<(), String> {
        if n == 0 {
            return Ok(());
        }
        // Close the gap between the n addresses and the data (the header has room for all).
        let used_header = 12 + n * 8;
        payload[8..12].copy_from_slice(&(n as u32).to_le_bytes());
        if used_header < header {
            payload.copy_within(header..header + n * page, used_header);
        }
        let len = used_header + n * page;
        bytes += len as u64;
        pages += n as u64;
        let result = node
            .send(to, msg::PAGES, Priority::Bulk, &payload[..len])
            .map_err(|e| format!("sending pages to node {to}: {e}"));
        payload[..8].copy_from_slice(&id.to_le_bytes());
        result
    };
    payload[..8].copy_from_slice(&id.to_le_bytes());
    for &addr in addrs {
        let slot = header + n * page;
        vm.mem
            .read_into(addr, &mut payload[slot..slot + page])
            .map_err(|_| format!("cannot read guest page {addr:#x}"))?;
        if skip_zero && is_zero(&payload[slot..slot + page]) {
            continue;
        }
        payload[12 + n * 8..20 + n * 8].copy_from_slice(&addr.to_le_bytes());
        n += 1;
        if n == PAGES_PER_MESSAGE {
            // The next batch refills the slots after the header.
            flush(&mut payload, n)?;
            n = 0;
        }
    }
    flush(&mut payload, n)?;
    Ok((pages, bytes))
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

/// Waits until the destination has applied everything sent so far.
fn sync(node: &Node, to: u32, id: u64) -> Result<(), String> {
    node.request(
        to,
        msg::SYNC,
        Priority::Bulk,
        &id.to_le_bytes(),
        STEP_TIMEOUT,
    )
    .map(|_| ())
    .map_err(|e| format!("node {to} stopped answering: {e}"))
}

/// Sends every vCPU's state and the commit (thread table, clock), then `GO`: the VM starts on
/// `to`. Returns the bytes sent.
fn hand_over(
    node: &Node,
    to: u32,
    vm: &VmShared,
    id: u64,
    paused: &Paused,
    paused_realtime_ns: u64,
) -> Result<u64, String> {
    let mut bytes = 0u64;
    for p in &paused.vcpus {
        let mut e = Encoder::with_capacity(8 << 10);
        e.u64(id).u32(p.index).u32(p.tid);
        match &p.pending {
            Some(r) => {
                e.u8(1).u16(r.nr);
                for a in r.args {
                    e.u64(a);
                }
            }
            None => {
                e.u8(0);
            }
        }
        p.state.encode(&mut e);
        let payload = e.finish();
        bytes += payload.len() as u64;
        node.send(to, msg::VCPU, Priority::Bulk, &payload)
            .map_err(|e| format!("sending vCPU state to node {to}: {e}"))?;
    }
    let commit = CommitMeta {
        vm: id,
        threads: paused.threads.clone(),
        fds: vm.fs.fd_table(),
        counter: paused.vcpus.iter().map(|p| p.state.tsc).max().unwrap_or(0),
        paused_realtime_ns,
    };
    let mut e = Encoder::default();
    e.u64(id)
        .bytes(&serde_json::to_vec(&commit).map_err(|e| e.to_string())?);
    let payload = e.finish();
    bytes += payload.len() as u64;
    node.request(to, msg::COMMIT, Priority::Bulk, &payload, STEP_TIMEOUT)
        .map_err(|e| format!("node {to} could not take the VM: {e}"))?;
    node.request(
        to,
        msg::GO,
        Priority::Control,
        &id.to_le_bytes(),
        STEP_TIMEOUT,
    )
    .map_err(|e| format!("node {to} did not start the VM: {e}"))?;
    Ok(bytes)
}
