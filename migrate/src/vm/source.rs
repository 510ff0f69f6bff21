//! The pre-copy driver, on the node the VM leaves: copy all memory while the VM runs, then
//! what it dirtied, in rounds, until the rest fits the downtime target (or a round limit);
//! then stop the vCPUs, send the rest, the vCPU states and the thread table, and switch over.
//! Any failure before the switch-over resumes the VM here as if nothing happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use net_msg::{Node, PendingReply, Priority};

use super::dirty;
use super::page_stream::{self, PageSender, Spares};
use crate::Mode;
use crate::msg::{Begin, BeginReply, Commit, MsgType, VmRef};
use crate::registry::{HostedVm, VmStatus};
use crate::report::{Step, Summary};
use vmm::clock::GuestClock;
use vmm::memory::PAGE_SIZE;
use vmm::persist::Persist;
use vmm::vm::state::{StateHeader, VmState};
use vmm::vm::{Paused, VmShared};

/// Pages a pre-copy round sends between two looks at whether it was cancelled (16 MiB).
const CANCEL_CHECK_PAGES: usize = 4096;
/// Most copy rounds before the VM is stopped whatever is left.
pub const MAX_ROUNDS: u32 = 30;
/// Rounds in a row without progress after which the VM is stopped.
pub const STALLED_ROUNDS: u32 = 2;
/// Post-copy reports its push after every this many pages (64 MiB).
const PUSH_STEP: usize = 16384;
/// How long to wait for the destination to be connected.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the destination may take to answer a step.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where a migration's time went: each step's milliseconds, in order (the summary's
/// `phases`).
#[derive(Debug)]
pub struct Phases {
    last: Instant,
    steps: Vec<(String, f64)>,
    /// The destination reused memory of a VM that had left it ([`super::pool`]).
    pub reused_memory: bool,
    /// The destination had the image already ([`super::images`]).
    pub had_image: bool,
}

impl Phases {
    /// Starts timing.
    pub fn new() -> Phases {
        Phases {
            last: Instant::now(),
            steps: Vec::new(),
            reused_memory: false,
            had_image: false,
        }
    }

    /// Ends the step `name` (it began where the previous one ended).
    pub fn mark(&mut self, name: impl Into<String>) {
        let now = Instant::now();
        let ms = (now - self.last).as_secs_f64() * 1e3;
        self.steps.push((name.into(), ms));
        self.last = now;
    }

    /// The steps so far: name and milliseconds.
    pub fn steps(&self) -> Vec<(String, f64)> {
        self.steps.clone()
    }
}

impl Default for Phases {
    fn default() -> Self {
        Phases::new()
    }
}

/// Moves `hvm` to node `to` with pre-copy. `progress` is called after each round (round,
/// pages, bytes, MB/s, remaining pages, estimated downtime). Returns the
/// summary; on error the VM runs on here.
pub fn precopy(
    (node, spares): (&Node, &Spares),
    hvm: &Arc<HostedVm>,
    to: u32,
    downtime_ms: u64,
    progress: &mut dyn FnMut(Step),
) -> Result<Summary, String> {
    let start = Instant::now();
    let mut phases = Phases::new();
    let vm = &hvm.vm;
    let abort = |why: String| {
        abort_at(node, to, hvm.id);
        why
    };
    // Dirty logging starts while `BEGIN` is on its way.
    let begun = begin_transfer((node, spares), hvm, to, false, || {
        // Pages never touched are not resident and read as zero: the destination has them.
        dirty::start(vm).map(|()| dirty::resident_pages(vm))
    });
    let (mut pages, answer, resident) = match begun {
        Ok((pages, answer, Ok(resident))) => (pages, answer, resident),
        Ok((_, _, Err(e))) => {
            dirty::stop(vm);
            return Err(abort(e));
        }
        Err(e) => {
            dirty::stop(vm);
            return Err(e);
        }
    };
    phases.mark("begin");
    hvm.set_status(VmStatus::Migrating);
    let result = copy_and_switch(
        node,
        (&mut pages, answer, resident),
        hvm,
        to,
        downtime_ms,
        (start, &mut phases),
        progress,
    );
    match result {
        Ok(summary) => Ok(summary),
        Err(e) => {
            dirty::stop(vm);
            hvm.set_status(VmStatus::Running);
            Err(abort(e))
        }
    }
}

/// Sends `BEGIN` (the caller checked the destination: [`check_destination`]), takes the page
/// stream (a spare one if there is) while `BEGIN` is on its way, then runs `meanwhile`. Returns the stream, `BEGIN`'s answer to come (see
/// [`begun`]) and what `meanwhile` returned. On error (after `BEGIN` was sent: `ABORT` sent
/// too) nothing was sent on the stream.
fn begin_transfer<T>(
    (node, spares): (&Node, &Spares),
    hvm: &Arc<HostedVm>,
    to: u32,
    postcopy: bool,
    meanwhile: impl FnOnce() -> T,
) -> Result<(PageSender, PendingReply, T), String> {
    let vm = &hvm.vm;
    let meta = Begin {
        header: StateHeader::native(hvm.id),
        name: hvm.name.clone(),
        home: hvm.home,
        private_size: vm.mem.private_size(),
        shared_size: vm.mem.shared_size(),
        max_threads: vm.max_vcpus,
        image_len: vm.image.bytes.len() as u64,
        postcopy,
        image_sha256: super::images::digest_of(&vm.image.bytes),
    };
    let meta = pop_wire::to_bytes(&meta);
    // The destination takes `BEGIN` while the stream's `OPEN` and the first pages come (its
    // stream thread waits for the VM to be arriving).
    let answer = node
        .start_request(to, MsgType::Begin.number(), Priority::Control, &meta)
        .map_err(|e| format!("node {to} refused the VM: {e}"))?;
    // With a spare stream this takes a few tens of microseconds: less than a thread's start.
    let opened = PageSender::open(node, spares, to, hvm.id);
    let done = meanwhile();
    match opened {
        Ok(pages) => Ok((pages, answer, done)),
        Err(e) => {
            abort_at(node, to, hvm.id);
            // The destination's own refusal says more than the stream that failed.
            Err(match answer.wait(STEP_TIMEOUT) {
                Err(refused) => format!("node {to} refused the VM: {refused}"),
                Ok(_) => e,
            })
        }
    }
}

/// Waits for `BEGIN`'s answer (pages may already be on their way: the destination reads
/// them once it took `BEGIN`), then sends the VM's image unless the destination has it.
fn begun(
    pages: &mut PageSender,
    answer: PendingReply,
    hvm: &HostedVm,
    to: u32,
    phases: &mut Phases,
) -> Result<(), String> {
    let answer = answer
        .wait(STEP_TIMEOUT)
        .map_err(|e| format!("node {to} refused the VM: {e}"))?;
    let answer: BeginReply =
        pop_wire::from_bytes(&answer).map_err(|e| format!("node {to} answered BEGIN with {e}"))?;
    phases.reused_memory = answer.reused_memory;
    phases.had_image = answer.have_image;
    if !phases.had_image {
        pages.image(&hvm.vm.image.bytes)?;
    }
    Ok(())
}

/// Post-copy, up to the switch-over: stops the VM at once, sends the private region, the
/// vCPU states and the thread table, and starts the VM on `to`, which fetches the shared
/// region's pages on demand. Returns (downtime, bytes sent, the page stream). On error the
/// VM runs on here. Afterwards the caller keeps the VM's memory to serve `FETCH` and calls
/// [`push_rest`].
pub fn postcopy_switch(
    (node, spares): (&Node, &Spares),
    hvm: &Arc<HostedVm>,
    to: u32,
    phases: &mut Phases,
) -> Result<(Duration, u64, PageSender), String> {
    let (mut pages, answer, ()) = begin_transfer((node, spares), hvm, to, true, || ())?;
    if let Err(e) = begun(&mut pages, answer, hvm, to, phases) {
        abort_at(node, to, hvm.id);
        return Err(e);
    }
    phases.mark("begin");
    if let Err(e) = hvm.begin_switch() {
        abort_at(node, to, hvm.id);
        return Err(e);
    }
    let vm = &hvm.vm;
    let stop = Instant::now();
    let paused = match vm.pause(Duration::from_secs(5)) {
        Ok(p) => p,
        Err(e) => {
            abort_at(node, to, hvm.id);
            return Err(e.to_string());
        }
    };
    let result = (|| -> Result<u64, String> {
        let clock = GuestClock::paused(counter_of(&paused));
        phases.mark("pause");
        let private = dirty::resident_private_pages(vm);
        pages.pages(&vm.mem, &private, true)?;
        phases.mark("private pages");
        let state_bytes = hand_over(node, &mut pages, to, vm, hvm.id, &paused, clock)?;
        Ok(pages.bytes + state_bytes)
    })();
    match result {
        Ok(bytes) => {
            let downtime = stop.elapsed();
            hvm.set_status(VmStatus::PostcopySource);
            vm.leave();
            Ok((downtime, bytes, pages))
        }
        Err(e) => {
            abort_at(node, to, hvm.id);
            vm.resume();
            Err(e)
        }
    }
}

/// Post-copy, after the switch-over: pushes every page of the shared region the VM had
/// touched over `stream`, then `DONE`; `progress` hears how far it got every `PUSH_STEP`
/// pages. Returns (pages, bytes).
pub fn push_rest(
    node: &Node,
    stream: &mut PageSender,
    hvm: &Arc<HostedVm>,
    to: u32,
    progress: &mut dyn FnMut(Step),
) -> Result<(u64, u64), String> {
    let vm = &hvm.vm;
    let shared = dirty::resident_shared_pages(vm);
    let start = Instant::now();
    let mut sent = (0, 0);
    // Steps end at a block boundary: the destination takes a block's pages in one record
    // (the pages of a block a record does not carry are zero).
    let mut from = 0;
    while from < shared.len() {
        let mut to_page = (from + PUSH_STEP).min(shared.len());
        while to_page < shared.len()
            && shared[to_page] & !(page_stream::BLOCK - 1)
                == shared[to_page - 1] & !(page_stream::BLOCK - 1)
        {
            to_page += 1;
        }
        let (pages, bytes) = stream.pages(&vm.mem, &shared[from..to_page], true)?;
        sent = (sent.0 + pages, sent.1 + bytes);
        from = to_page;
        let done = from as u64;
        if done < shared.len() as u64 {
            progress(Step::Push {
                pushed_pages: done,
                total_pages: shared.len() as u64,
                bytes: sent.1,
                mb_per_sec: sent.1 as f64 / start.elapsed().as_secs_f64().max(1e-6) / 1e6,
            });
        }
    }
    if !stream.sync()?.is_empty() {
        return Err(format!(
            "node {to} got pushed pages that did not arrive intact"
        ));
    }
    node.request(
        to,
        MsgType::Done.number(),
        Priority::Bulk,
        &pop_wire::to_bytes(&VmRef { vm: hvm.id }),
        STEP_TIMEOUT,
    )
    .map_err(|e| format!("node {to} did not confirm the last pages: {e}"))?;
    Ok(sent)
}

/// The ISA and reachability checks, before anything is sent (by [`super::Migrations`], before
/// either driver runs).
pub(crate) fn check_destination(node: &Node, to: u32) -> Result<(), String> {
    if to == node.id() {
        return Err(format!("the VM already runs on node {to}"));
    }
    let Some(spec) = node.cluster().nodes.get(to as usize) else {
        return Err(format!("there is no node {to} in the cluster"));
    };
    if spec.isa != pop_abi::Isa::NATIVE {
        return Err(format!(
            "node {to} is {}, this VM is {}: whole-VM migration needs the same ISA",
            spec.isa,
            pop_abi::Isa::NATIVE
        ));
    }
    // A node that just started may not have been dialled back yet.
    if !node.wait_up(to, CONNECT_TIMEOUT) {
        return Err(format!(
            "node {to} is not connected (is it running, with the cluster's secret?)"
        ));
    }
    Ok(())
}

/// The rounds, the stop and the switch-over; `stream`'s first round goes out before `BEGIN`'s
/// `answer` is awaited; `pages` are those of the first round.
fn copy_and_switch(
    node: &Node,
    (stream, answer, mut pages): (&mut PageSender, PendingReply, Vec<u64>),
    hvm: &Arc<HostedVm>,
    to: u32,
    downtime_ms: u64,
    (start, phases): (Instant, &mut Phases),
    progress: &mut dyn FnMut(Step),
) -> Result<Summary, String> {
    let vm = &hvm.vm;
    let mut answer = Some(answer);
    let mut round = 0;
    let mut rate = 0f64; // bytes per second
    let (mut previous, mut stalled) = (pages.len(), 0);
    loop {
        round += 1;
        let t = Instant::now();
        // In pieces, so that a cancel stops a long round early.
        let sent = pages
            .chunks(CANCEL_CHECK_PAGES)
            .try_fold((0, 0), |(n, b), piece| {
                hvm.check_cancelled()?;
                let (pn, pb) = stream.pages(&vm.mem, piece, round == 1)?;
                Ok::<_, String>((n + pn, b + pb))
            });
        // (A refused `BEGIN` says more than the page stream it closed.)
        if let Some(answer) = answer.take() {
            begun(stream, answer, hvm, to, phases)?;
        }
        let (sent, bytes) = sent?;
        // Pages the guest changed while they were on their way go again with the next round
        // (they are dirty anyway: the dirty log has them too).
        let again = stream.sync()?;
        let secs = t.elapsed().as_secs_f64().max(1e-6);
        if bytes > 0 {
            rate = bytes as f64 / secs;
        }
        pages = dirty::take(vm)?;
        if !again.is_empty() {
            pages.extend(again);
            pages.sort_unstable();
            pages.dedup();
        }
        phases.mark(format!("round {round}"));
        let remaining = pages.len() as u64 * (PAGE_SIZE + 8);
        let estimate_ms = if rate > 0.0 {
            remaining as f64 / rate * 1e3
        } else {
            0.0
        };
        progress(Step::Round {
            round,
            pages: sent,
            bytes,
            mb_per_sec: rate / 1e6,
            remaining_pages: pages.len() as u64,
            estimated_downtime_ms: estimate_ms,
        });
        // Stop when the rest fits the target, at the round limit, or when the guest dirties
        // memory as fast as it is copied (two rounds without shrinking the dirty set by a
        // tenth: more rounds would only resend the same pages).
        if pages.len() as f64 > 0.9 * previous as f64 {
            stalled += 1;
        } else {
            stalled = 0;
        }
        previous = pages.len();
        hvm.check_cancelled()?;
        if estimate_ms <= downtime_ms as f64 || round >= MAX_ROUNDS || stalled >= STALLED_ROUNDS {
            break;
        }
    }
    // Stop and copy the rest.
    hvm.begin_switch()?;
    let stop = Instant::now();
    let paused = vm
        .pause(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let result = (|| -> Result<(u64, u64), String> {
        let clock = GuestClock::paused(counter_of(&paused));
        let mut last = dirty::take(vm)?;
        last.extend_from_slice(&pages);
        last.sort_unstable();
        last.dedup();
        let (n_last, _) = stream.pages(&vm.mem, &last, false)?;
        let state_bytes = hand_over(node, stream, to, vm, hvm.id, &paused, clock)?;
        Ok((n_last, state_bytes))
    })();
    let (last_pages, state_bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            vm.resume();
            return Err(e);
        }
    };
    let downtime = stop.elapsed();
    phases.mark("stopped");
    hvm.set_status(VmStatus::Moved);
    vm.leave();
    Ok(Summary {
        from: node.id(),
        to,
        mode: Mode::Precopy,
        rounds: round,
        total_ms: start.elapsed().as_secs_f64() * 1e3,
        downtime_ms: downtime.as_secs_f64() * 1e3,
        bytes: stream.bytes + state_bytes,
        last_pages,
        vcpus: Some(paused.vcpus.len() as u32),
        resent_pages: Some(stream.resent),
        reused_memory: phases.reused_memory,
        had_image: phases.had_image,
        phases: phases.steps(),
    })
}

/// Waits until the pages sent are in place, sends every vCPU's state and the commit (thread
/// table, clock), then `GO`: the VM starts on `to`. Returns the bytes sent.
fn hand_over(
    node: &Node,
    stream: &mut PageSender,
    to: u32,
    vm: &VmShared,
    id: u64,
    paused: &Paused,
    clock: GuestClock,
) -> Result<u64, String> {
    // Anything that arrived changed goes again, from a copy: the VM is stopped.
    let again = stream.sync()?;
    if !again.is_empty() {
        stream.pages_copied(&vm.mem, &again)?;
        let still = stream.sync()?;
        if !still.is_empty() {
            return Err(format!(
                "{} pages did not arrive intact at node {to}",
                still.len()
            ));
        }
    }
    let Ok(clock) = clock.save();
    let fds = vm
        .fs
        .save()
        .map_err(|e| format!("the descriptor table: errno {e}"))?;
    let commit = Commit {
        state: VmState {
            header: StateHeader::native(id),
            threads: paused.vcpus.clone(),
            table: paused.threads.clone(),
            fds,
            clock,
        },
    };
    let payload = pop_wire::to_bytes(&commit);
    let bytes = payload.len() as u64;
    node.request(
        to,
        MsgType::Commit.number(),
        Priority::Bulk,
        &payload,
        STEP_TIMEOUT,
    )
    .map_err(|e| format!("node {to} could not take the VM: {e}"))?;
    node.request(
        to,
        MsgType::Go.number(),
        Priority::Control,
        &pop_wire::to_bytes(&VmRef { vm: id }),
        STEP_TIMEOUT,
    )
    .map_err(|e| format!("node {to} did not start the VM: {e}"))?;
    Ok(bytes)
}

/// The counter a paused VM's clock stopped at: the largest of its vCPUs'.
fn counter_of(paused: &Paused) -> u64 {
    paused.vcpus.iter().map(|p| p.state.tsc).max().unwrap_or(0)
}

/// Tells node `to` to forget VM `id`, which is not coming after all.
fn abort_at(node: &Node, to: u32, id: u64) {
    let _ = node.send(
        to,
        MsgType::Abort.number(),
        Priority::Control,
        &pop_wire::to_bytes(&VmRef { vm: id }),
    );
}
