//! Threads of one VM on several nodes. A VM launched in a cluster has an origin (the node it
//! was launched on): its thread table, its futexes, the directory of its shared region, its
//! home. A thread that moves to another node (`pop::migrate`, or `popvmm migrate --thread`
//! from outside) runs there on a *shell* of the VM: its private region rebuilt from the image
//! plus the pages the origin's guest wrote there, its shared region served by the DSM
//! ([`crate::dsm`]) from the origin, its output and files at the home. What a thread does
//! that concerns the whole VM is carried to the origin: futex waits and wakes (so a wait on
//! one node is woken by a wake on any other), joins, thread exits, spawns, the application's
//! exit.
//!
//! * [`origin`]: the VM at its origin (futex table, where threads run, the watch that ends
//!   the VM when a node running its threads is lost);
//! * [`shell`]: making and watching a shell;
//! * [`wire`]: the messages' payloads;
//! * this module: the service handling the messages, and the hooks' side (what a vCPU
//!   thread asks for).

pub mod descriptors;
pub mod origin;
pub mod shell;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use net_msg::{Incoming, Node, Priority, Responder};
use pop_abi::errno::{EAGAIN, EHOSTUNREACH, EINVAL, ENOEXEC, ENOSYS};
use pop_dsm::coherent::RegionConfig;
use vmm::arch::ThreadStart;
use vmm::moving::ThreadState;
use vmm::persist::Persist;
use vmm::sys::FutexWait;
use vmm::vm::state::StateHeader;
use vmm::vm::{Outcome, VmShared};

use crate::dsm::Regions;
use crate::error::{Error, Result};
use crate::hooks::ClusterHooks;
use crate::local::Local;
use crate::msg::{self, MsgType, ShellSetup, ThreadList};
use crate::{Service, lock};
use origin::{FutexJob, Origin};
use shell::{NEED_IMAGE, NO_SHELL, Pieces, Shell};
use wire::PieceKind;

/// How long a move asked from outside (`popvmm migrate --thread`) waits for its destination
/// to be connected.
const PEER_UP_WAIT: Duration = Duration::from_secs(3);
/// How long a thread's arrival may take before the move is given up.
const ARRIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long other requests to the origin may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting vCPU thread looks whether it is to give up.
const POLL: Duration = Duration::from_millis(20);
/// Pieces of a shell that was never made are dropped after this long.
const STALE_PIECES: Duration = Duration::from_secs(60);

/// What a VM's hooks know of the VM spanning nodes.
#[derive(Debug, Clone)]
pub struct SpanCtx {
    /// The node's spans.
    pub spans: Weak<Spans>,
    /// The VM.
    pub vm_id: u64,
    /// Its origin: where its thread table, futexes, descriptor table and the home of its
    /// shared region are (the node it was launched on, or the one it moved to whole).
    pub origin: u32,
    /// Its home: where its output, files and exit go (the node it was launched on).
    pub home: u32,
}

/// The per-thread services of a node: the spanning VMs whose origin is here, and the shells
/// here of VMs whose origin is elsewhere.
#[derive(Debug)]
pub struct Spans {
    local: Arc<Local>,
    regions: Arc<Regions>,
    node: OnceLock<Weak<Node>>,
    origins: Mutex<HashMap<u64, Arc<Origin>>>,
    shells: Mutex<HashMap<u64, Arc<Shell>>>,
    pieces: Mutex<HashMap<u64, Pieces>>,
    /// Held while this node sends a shell's setup (threads moving at once to a node that
    /// has no shell yet make it once, one after the other).
    setups: Mutex<()>,
    /// Held while a shell is made here.
    making: Mutex<()>,
    /// Hands arrivals to the arrivals thread.
    arrivals: Mutex<Option<std::sync::mpsc::Sender<Arrival>>>,
    waiter_seq: AtomicU64,
}

impl Spans {
    /// The services of a node running `local`'s VMs, with `regions` its DSM regions.
    pub fn new(local: Arc<Local>, regions: Arc<Regions>) -> Arc<Spans> {
        Arc::new(Spans {
            local,
            regions,
            node: OnceLock::new(),
            origins: Mutex::default(),
            shells: Mutex::default(),
            pieces: Mutex::default(),
            setups: Mutex::new(()),
            making: Mutex::new(()),
            arrivals: Mutex::new(None),
            waiter_seq: AtomicU64::new(1),
        })
    }

    /// The node has joined the mesh.
    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    fn node(&self) -> Option<Arc<Node>> {
        self.node.get().and_then(Weak::upgrade)
    }

    /// The spanning VM `vm_id` at its origin here, if it spans already.
    pub fn origin(&self, vm_id: u64) -> Option<Arc<Origin>> {
        lock(&self.origins).get(&vm_id).cloned()
    }

    /// This node's copy of VM `vm_id`: the VM itself at its origin, or its shell.
    fn vm_here(&self, vm_id: u64) -> Option<Arc<VmShared>> {
        if let Some(s) = lock(&self.shells).get(&vm_id) {
            return Some(s.vm.clone());
        }
        self.local.registry.get(vm_id).map(|h| h.vm.clone())
    }

    /// The origin of VM `vm_id` here, started (its shared region homed here) if it does not
    /// span yet.
    fn origin_started(
        &self,
        node: &Arc<Node>,
        vm_id: u64,
    ) -> std::result::Result<Arc<Origin>, String> {
        let mut origins = lock(&self.origins);
        if let Some(o) = origins.get(&vm_id) {
            return Ok(o.clone());
        }
        let hosted = self
            .local
            .registry
            .get(vm_id)
            .ok_or("the VM does not run here")?;
        hosted.start_spanning()?;
        let vm = hosted.vm.clone();
        let shared = vm.mem.shared_region();
        let cfg = RegionConfig {
            node: node.id(),
            home: node.id(),
            vm: vm_id,
            host_base: shared.host_addr,
            len: shared.size,
            write_protect: crate::write_protect_wanted(),
        };
        let region = self.regions.start(node, cfg).map_err(|e| e.to_string())?;
        let o = Origin::start(node, vm_id, &vm, region);
        origins.insert(vm_id, o.clone());
        Ok(o)
    }

    // ---- the hooks' side: asked by a vCPU thread of a VM here ----

    /// Moves `thread` of VM `ctx.vm_id` from this node to node `to` (see
    /// [`vmm::hooks::Hooks::move_thread`]).
    pub fn move_thread(
        &self,
        ctx: &SpanCtx,
        thread: &ThreadState,
        to: u32,
    ) -> std::result::Result<(), i32> {
        let node = self.node().ok_or(ENOSYS)?;
        let spec = node.cluster().node(to).ok_or(EINVAL)?;
        if spec.isa != pop_abi::Isa::NATIVE {
            return Err(ENOEXEC);
        }
        if !node.is_up(to) {
            return Err(EHOSTUNREACH);
        }
        let vm = self.vm_here(ctx.vm_id).ok_or(ENOSYS)?;
        let me = node.id();
        let tid = thread.vcpu.tid;
        let origin = if me == ctx.origin {
            Some(self.origin_started(&node, ctx.vm_id).map_err(|e| {
                tracing::warn!("VM {:x}: cannot span nodes: {e}", ctx.vm_id);
                EHOSTUNREACH
            })?)
        } else {
            None
        };
        if let Some(o) = &origin {
            o.moving(tid, true);
        }
        let t0 = Instant::now();
        let sent = self.send_thread(&node, &vm, ctx, thread, to, origin.as_deref());
        tracing::trace!("move of thread {tid} to node {to}: {:?}", t0.elapsed());
        if let Some(o) = &origin {
            o.moving(tid, false);
        }
        match sent {
            Ok(()) => {
                tracing::debug!("VM {:x}: thread {tid} moved to node {to}", ctx.vm_id);
                if let Some(o) = &origin {
                    o.thread_at(tid, to, me);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    "VM {:x}: thread {tid} could not move to node {to}: {e}",
                    ctx.vm_id
                );
                Err(EHOSTUNREACH)
            }
        }
    }

    /// Sends `thread` to node `to`, with the shell's setup (and pieces) if it has none.
    fn send_thread(
        &self,
        node: &Arc<Node>,
        vm: &Arc<VmShared>,
        ctx: &SpanCtx,
        thread: &ThreadState,
        to: u32,
        origin: Option<&Origin>,
    ) -> std::result::Result<(), String> {
        let arrive = |setup: Option<ShellSetup>| -> std::result::Result<(), String> {
            let a = msg::Arrive {
                header: StateHeader::native(ctx.vm_id),
                setup,
                thread: thread.clone(),
            };
            let bytes = pop_wire::to_bytes(&a);
            tracing::trace!(
                "ARRIVE of thread {}: {} bytes",
                thread.vcpu.tid,
                bytes.len()
            );
            node.request(
                to,
                MsgType::Arrive.number(),
                Priority::Control,
                &bytes,
                ARRIVE_TIMEOUT,
            )
            .map(drop)
            .map_err(|e| e.to_string())
        };
        let has_shell = || to == ctx.origin || origin.is_some_and(|o| o.has_shell(to));
        // The pages it touches first go ahead of it, on the same connection: from the home,
        // straight to where it goes if that node has a shell (whose region takes them);
        // from another node, back to the home, which hands them on at once when asked,
        // without a recall from here.
        if let Some(region) = self.regions.get(ctx.vm_id) {
            let _ = if node.id() != ctx.origin {
                region.give_back(&hot_ranges(thread))
            } else if has_shell() {
                region.push(&hot_ranges(thread), to)
            } else {
                Ok(0)
            };
        }
        if has_shell() {
            match arrive(None) {
                Err(e) if e.contains(NO_SHELL) => {}
                done => return done,
            }
        }
        let _one_setup = lock(&self.setups);
        if has_shell() {
            // Another thread made it meanwhile.
            return arrive(None);
        }
        self.send_pages(node, vm, ctx.vm_id, to)?;
        // The VM's mode goes with it: the sender's region has it (every node of the VM has one).
        let read_copies = self
            .regions
            .get(ctx.vm_id)
            .map(|r| r.read_copies())
            .ok_or_else(|| format!("VM {:x} has no shared region here", ctx.vm_id))?;
        let setup = setup_of(vm, ctx, thread, read_copies);
        let made = match arrive(Some(setup.clone())) {
            Err(e) if e.contains(NEED_IMAGE) => {
                self.send_image(node, vm, ctx.vm_id, to)?;
                arrive(Some(setup))
            }
            done => done,
        };
        if let (Ok(()), Some(o)) = (&made, origin) {
            o.shell_made(to);
        }
        made
    }

    /// Sends the pages of VM `vm`'s private region that differ from a fresh load of its
    /// image (what the guest and this VMM wrote there) to node `to`.
    fn send_pages(
        &self,
        node: &Node,
        vm: &VmShared,
        vm_id: u64,
        to: u32,
    ) -> std::result::Result<(), String> {
        let pages = written_private_pages(vm)?;
        let per_piece = wire::MAX_PIECE / (8 + vmm::memory::PAGE_SIZE as usize);
        for chunk in pages.chunks(per_piece.max(1)) {
            let mut bytes = Vec::with_capacity(chunk.len() * (8 + 4096));
            for (addr, page) in chunk {
                bytes.extend_from_slice(&addr.to_le_bytes());
                bytes.extend_from_slice(page);
            }
            let piece = msg::ShellPiece {
                vm: vm_id,
                kind: PieceKind::Pages,
                offset: 0,
                bytes,
            };
            request(node, to, MsgType::Shell, &pop_wire::to_bytes(&piece))?;
        }
        Ok(())
    }

    /// Sends VM `vm`'s image to node `to`.
    fn send_image(
        &self,
        node: &Node,
        vm: &VmShared,
        vm_id: u64,
        to: u32,
    ) -> std::result::Result<(), String> {
        let bytes = &vm.image.bytes;
        for (i, chunk) in bytes.chunks(wire::MAX_PIECE).enumerate() {
            let piece = msg::ShellPiece {
                vm: vm_id,
                kind: PieceKind::Image,
                offset: (i * wire::MAX_PIECE) as u64,
                bytes: chunk.to_vec(),
            };
            request(node, to, MsgType::Shell, &pop_wire::to_bytes(&piece))?;
        }
        Ok(())
    }

    /// A thread of a shell ended here: its origin is told (see
    /// [`vmm::hooks::Hooks::thread_exited`]).
    pub fn thread_exited(&self, ctx: &SpanCtx, tid: u32, index: u32) -> bool {
        let Some(node) = self.node() else {
            return false;
        };
        if node.id() == ctx.origin {
            if let Some(o) = self.origin(ctx.vm_id) {
                o.thread_gone(tid);
            }
            return false;
        }
        let m = msg::ThreadExited {
            vm: ctx.vm_id,
            tid,
            index,
        };
        if let Err(e) = request(
            &node,
            ctx.origin,
            MsgType::ThreadExited,
            &pop_wire::to_bytes(&m),
        ) {
            tracing::warn!(
                "VM {:x}: cannot report the end of thread {tid}: {e}",
                ctx.vm_id
            );
        }
        true
    }

    /// The application exited on a shell here: its origin is told.
    pub fn exit(&self, ctx: &SpanCtx, status: i32) -> bool {
        let Some(node) = self.node() else {
            return false;
        };
        if node.id() == ctx.origin {
            return false;
        }
        let m = msg::SpanExit {
            vm: ctx.vm_id,
            status: status as u32,
        };
        let sent = node.send(
            ctx.origin,
            MsgType::SpanExit.number(),
            Priority::Control,
            &pop_wire::to_bytes(&m),
        );
        if let Err(e) = sent {
            tracing::warn!("VM {:x}: cannot report the exit: {e}", ctx.vm_id);
        }
        true
    }

    /// A join on a shell here, carried to the origin.
    pub fn join(
        &self,
        ctx: &SpanCtx,
        tid: u32,
        caller: u32,
        interrupted: &dyn Fn() -> bool,
    ) -> Option<i64> {
        let node = self.node()?;
        if node.id() == ctx.origin {
            return None;
        }
        let m = msg::Join {
            vm: ctx.vm_id,
            tid,
            caller,
        };
        let value = poll_request(
            &node,
            ctx.origin,
            MsgType::Join,
            &pop_wire::to_bytes(&m),
            interrupted,
        );
        Some(match value {
            Some(Ok(v)) => v as i64,
            Some(Err(_)) => -i64::from(pop_abi::errno::EIO),
            None => -i64::from(pop_abi::errno::EINTR),
        })
    }

    /// A thread spawned on a shell here: the origin makes it (its tid and vCPU are the
    /// table's) and it comes here before its first instruction.
    pub fn spawn(&self, ctx: &SpanCtx, start: &ThreadStart) -> std::result::Result<u32, i32> {
        let node = self.node().ok_or(ENOSYS)?;
        let m = msg::Spawn {
            vm: ctx.vm_id,
            entry: start.entry,
            func: start.func,
            arg: start.arg,
            stack_top: start.stack_top,
            thread_pointer: start.thread_pointer,
        };
        let answer = request(&node, ctx.origin, MsgType::Spawn, &pop_wire::to_bytes(&m))
            .map_err(|_| EAGAIN)?;
        let value = decode_answer(&answer).map_err(|_| EAGAIN)? as i64;
        if value < 0 {
            Err((-value) as i32)
        } else {
            Ok(value as u32)
        }
    }

    /// Whether futexes of VM `ctx.vm_id` are the cluster's (it spans nodes) rather than
    /// this host's.
    pub fn spans(&self, ctx: &SpanCtx) -> bool {
        match self.node() {
            Some(node) if node.id() == ctx.origin => self.origin(ctx.vm_id).is_some(),
            Some(_) => true,
            None => false,
        }
    }

    /// A futex wait of a thread here of a spanning VM.
    pub fn futex_wait(
        &self,
        ctx: &SpanCtx,
        addr: u64,
        word: &AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> FutexWait {
        let Some(node) = self.node() else {
            return vmm::sys::futex_wait(word, expected, timeout);
        };
        if node.id() == ctx.origin {
            return match self.origin(ctx.vm_id) {
                Some(o) => o.wait_here(addr, word, expected, timeout, interrupted),
                None => vmm::sys::futex_wait(word, expected, timeout),
            };
        }
        let waiter = (u64::from(node.id()) << 48) | self.waiter_seq.fetch_add(1, Ordering::Relaxed);
        let m = msg::FutexWait {
            vm: ctx.vm_id,
            addr,
            expected,
            waiter,
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let expired = || deadline.is_some_and(|d| Instant::now() >= d);
        let gave_up = || interrupted() || expired();
        match poll_request(
            &node,
            ctx.origin,
            MsgType::FutexWait,
            &pop_wire::to_bytes(&m),
            &gave_up,
        ) {
            Some(Ok(0)) => FutexWait::Woken,
            Some(Ok(_)) => FutexWait::ValueChanged,
            Some(Err(_)) => FutexWait::Interrupted,
            None => {
                let c = msg::FutexCancel {
                    vm: ctx.vm_id,
                    waiter,
                };
                let still = request(
                    &node,
                    ctx.origin,
                    MsgType::FutexCancel,
                    &pop_wire::to_bytes(&c),
                )
                .ok()
                .and_then(|a| decode_answer(&a).ok());
                match still {
                    // A wake took it meanwhile: that wake-up is not lost.
                    Some(0) => FutexWait::Woken,
                    _ if expired() => FutexWait::TimedOut,
                    _ => FutexWait::Interrupted,
                }
            }
        }
    }

    /// A futex wake of a thread here of a spanning VM.
    pub fn futex_wake(&self, ctx: &SpanCtx, addr: u64, word: &AtomicU32, count: i32) -> i64 {
        let Some(node) = self.node() else {
            return vmm::sys::futex_wake(word, count);
        };
        let count = count.max(0) as u32;
        if node.id() == ctx.origin {
            return match (self.origin(ctx.vm_id), self.vm_here(ctx.vm_id)) {
                (Some(o), Some(vm)) => o.wake(&vm, addr, count) as i64,
                _ => vmm::sys::futex_wake(word, count as i32),
            };
        }
        let m = msg::FutexWake {
            vm: ctx.vm_id,
            addr,
            count,
        };
        request(
            &node,
            ctx.origin,
            MsgType::FutexWake,
            &pop_wire::to_bytes(&m),
        )
        .ok()
        .and_then(|a| decode_answer(&a).ok())
        .map_or(0, |n| n as i64)
    }

    // ---- from outside ----

    /// Moves thread `tid` of VM `vm_id`, running on this node, to node `to`, at whatever
    /// instruction it is (`popvmm migrate --thread`).
    pub fn move_from_outside(&self, vm_id: u64, tid: u32, to: u32) -> Result<()> {
        let node = self
            .node()
            .ok_or_else(|| Error::Host("not on the mesh".into()))?;
        let vm = self
            .vm_here(vm_id)
            .ok_or_else(|| Error::NoSuchVm(format!("VM {vm_id:x} does not run here")))?;
        if to == node.id() {
            return Ok(());
        }
        let (origin, home) = self
            .origin_and_home(node.id(), vm_id)
            .unwrap_or((node.id(), node.id()));
        let ctx = SpanCtx {
            spans: Weak::new(),
            vm_id,
            origin,
            home,
        };
        let parked = vm
            .pause_thread(tid, Duration::from_secs(5))
            .map_err(|e| Error::Aborted(format!("thread {tid}: {e}")))?;
        let state = vm.thread_state(parked);
        match self.move_thread(&ctx, &state, to) {
            Ok(()) => {
                vm.thread_left();
                Ok(())
            }
            Err(errno) => {
                vm.resume();
                Err(Error::Aborted(format!(
                    "thread {tid} could not move to node {to} ({}); it runs on where it was",
                    errno_text(errno)
                )))
            }
        }
    }

    /// The origin and home of VM `vm_id` as this node (`me`) knows them: a shell's, or,
    /// for a VM that runs here, this node and its home.
    fn origin_and_home(&self, me: u32, vm_id: u64) -> Option<(u32, u32)> {
        if let Some(s) = lock(&self.shells).get(&vm_id) {
            return Some((s.origin, s.home));
        }
        self.local.registry.get(vm_id).map(|h| (me, h.home))
    }

    /// The threads of VM `vm_id` and where they run: all of them if its origin is here
    /// (asking the nodes running some how those are), else those on its shell here.
    pub fn threads(&self, vm_id: u64) -> Option<ThreadList> {
        let node = self.node()?;
        let me = node.id();
        let status = |vm: &VmShared, tid: u32| {
            if vm.blocked_threads().contains(&tid) {
                msg::ThreadStatus::Blocked
            } else {
                msg::ThreadStatus::Running
            }
        };
        if let Some(s) = lock(&self.shells).get(&vm_id).cloned() {
            let table = match s.vm.threads.save() {
                Ok(t) => t,
                Err(never) => match never {},
            };
            let list = table
                .threads
                .iter()
                .filter(|t| !t.1)
                .map(|&(tid, _)| msg::ThreadInfo {
                    tid,
                    node: me,
                    status: status(&s.vm, tid),
                })
                .collect();
            return Some(ThreadList(list));
        }
        let vm = self.local.registry.get(vm_id)?.vm.clone();
        let table = match vm.threads.save() {
            Ok(t) => t,
            Err(never) => match never {},
        };
        let (away, moving) = self.origin(vm_id).map(|o| o.places()).unwrap_or_default();
        // How the threads elsewhere are, from their nodes.
        let mut remote = HashMap::new();
        let nodes: std::collections::BTreeSet<u32> = away.values().copied().collect();
        for n in nodes {
            let asked = request(
                &node,
                n,
                MsgType::Threads,
                &pop_wire::to_bytes(&msg::VmRef { vm: vm_id }),
            );
            if let Ok(ThreadList(list)) =
                asked.and_then(|b| pop_wire::from_bytes(&b).map_err(|e| e.to_string()))
            {
                remote.extend(list.into_iter().map(|t| (t.tid, t.status)));
            }
        }
        let list = table
            .threads
            .iter()
            .filter(|t| !t.1)
            .map(|&(tid, _)| {
                let at = away.get(&tid).copied().unwrap_or(me);
                let status = if moving.contains(&tid) {
                    msg::ThreadStatus::Migrating
                } else if at == me {
                    status(&vm, tid)
                } else {
                    remote
                        .get(&tid)
                        .copied()
                        .unwrap_or(msg::ThreadStatus::Running)
                };
                msg::ThreadInfo {
                    tid,
                    node: at,
                    status,
                }
            })
            .collect();
        Some(ThreadList(list))
    }

    // ---- the service ----

    /// The thread that makes this node's shells, for arrivals that bring a shell's setup,
    /// in order (started on the first).
    fn arrivals(self: &Arc<Self>, node: &Arc<Node>) -> std::sync::mpsc::Sender<Arrival> {
        let mut slot = lock(&self.arrivals);
        if let Some(tx) = slot.as_ref() {
            return tx.clone();
        }
        let (tx, rx) = std::sync::mpsc::channel::<Arrival>();
        let (spans, node) = (Arc::downgrade(self), Arc::downgrade(node));
        let _ = std::thread::Builder::new()
            .name("arrivals".into())
            .spawn(move || {
                for (from, a, r) in rx {
                    let (Some(spans), Some(node)) = (spans.upgrade(), node.upgrade()) else {
                        return;
                    };
                    spans.arrive_with_setup(&node, from, a, r);
                }
            });
        *slot = Some(tx.clone());
        tx
    }

    /// Asks, ahead of the arriving thread, for the pages it touches first (its stack top and
    /// its thread-locals), all at once and without waiting: they are on their way while its
    /// vCPU is restored, rather than faulted in one by one after.
    fn prefetch(&self, vm_id: u64, thread: &ThreadState) {
        let Some(region) = self.regions.get(vm_id) else {
            return;
        };
        let _ = region.request_ahead(&hot_ranges(thread), true);
    }

    /// Takes thread `a.thread` that node `from` sent here, into the origin's VM or this
    /// node's shell of it, and answers `r` once its vCPU is restored (or why not). Quick
    /// unless a shell must be made first: that goes to the arrivals thread.
    fn arrive(self: &Arc<Self>, node: &Arc<Node>, from: u32, a: msg::Arrive, r: Responder) {
        let vm_id = a.header.vm;
        let (me, tid) = (node.id(), a.thread.vcpu.tid);
        let timed = Timed(Instant::now(), tid);
        if let Some(o) = self.origin(vm_id) {
            let Some(vm) = o.vm.upgrade() else {
                let _ = r.fail("the VM ended");
                return;
            };
            tracing::debug!("VM {vm_id:x}: thread {tid} came back");
            self.prefetch(vm_id, &a.thread);
            return vm.arrive_then(
                a.thread,
                Box::new(move |restored| {
                    if restored.is_ok() {
                        o.thread_at(tid, me, me);
                    }
                    answer(r, restored);
                    drop(timed);
                }),
            );
        }
        let shell = lock(&self.shells).get(&vm_id).cloned();
        match (shell, a.setup.is_some()) {
            (Some(shell), _) => self.arrive_in(node, &shell, from, a.thread, r, timed),
            (None, true) => {
                if let Err(e) = self.arrivals(node).send((from, a, r)) {
                    let _ = e.0.2.fail("the arrivals thread is gone");
                }
            }
            (None, false) => {
                let _ = r.fail(NO_SHELL);
            }
        }
    }

    /// As [`Spans::arrive`] for a thread that brings the setup of a shell this node may not
    /// have yet (made here, once per VM even if two nodes send theirs at once).
    fn arrive_with_setup(
        self: &Arc<Self>,
        node: &Arc<Node>,
        from: u32,
        a: msg::Arrive,
        r: Responder,
    ) {
        let vm_id = a.header.vm;
        let timed = Timed(Instant::now(), a.thread.vcpu.tid);
        let made = {
            let _making = lock(&self.making);
            let existing = lock(&self.shells).get(&vm_id).cloned();
            match (existing, &a.setup) {
                (Some(s), _) => Ok(s),
                (None, Some(setup)) => self.make_shell(node, vm_id, setup),
                (None, None) => Err(NO_SHELL.to_string()),
            }
        };
        match made {
            Ok(shell) => self.arrive_in(node, &shell, from, a.thread, r, timed),
            Err(e) => {
                let _ = r.fail(&e);
            }
        }
    }

    /// Restores `thread`, sent by node `from`, into `shell`, answering `r`.
    fn arrive_in(
        &self,
        node: &Arc<Node>,
        shell: &Shell,
        from: u32,
        thread: ThreadState,
        r: Responder,
        timed: Timed,
    ) {
        let (vm_id, me, tid, origin) = (shell.vm_id, node.id(), thread.vcpu.tid, shell.origin);
        self.prefetch(vm_id, &thread);
        let node = node.clone();
        shell.vm.arrive_then(
            thread,
            Box::new(move |restored| {
                // The origin learns where the thread runs from the answer when it sent the
                // thread itself; from a third node, it is told.
                if restored.is_ok() && from != origin {
                    let at = msg::ThreadAt {
                        vm: vm_id,
                        tid,
                        node: me,
                    };
                    let _ = node.send(
                        origin,
                        MsgType::ThreadAt.number(),
                        Priority::Control,
                        &pop_wire::to_bytes(&at),
                    );
                }
                answer(r, restored);
                drop(timed);
            }),
        );
    }

    fn make_shell(
        self: &Arc<Self>,
        node: &Arc<Node>,
        vm_id: u64,
        setup: &ShellSetup,
    ) -> std::result::Result<Arc<Shell>, String> {
        let hooks = ClusterHooks::on(node);
        hooks.span(SpanCtx {
            spans: Arc::downgrade(self),
            vm_id,
            origin: setup.origin,
            home: setup.home,
        });
        // The pieces stay until the shell is made (a first try may only learn that the
        // image is missing).
        let pieces = lock(&self.pieces).get(&vm_id).map(|p| Pieces {
            image: p.image.clone(),
            pages: p.pages.clone(),
            since: p.since,
        });
        let pieces = pieces.unwrap_or_default();
        let homes = (&self.local.homes, &*self.regions);
        let (shell, vm) = shell::make(node, homes, vm_id, setup, &pieces, hooks)?;
        lock(&self.pieces).remove(&vm_id);
        let shell = Arc::new(shell);
        lock(&self.shells).insert(vm_id, shell.clone());
        let spans = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name(format!("shell-{vm_id:x}"))
            .spawn(move || {
                let _ = vm.run();
                if let Some(spans) = spans.upgrade() {
                    // The region stops before the shell (and with it the VM's memory) goes,
                    // so a page message still on its way is dropped, not acted on.
                    if let Some(region) = spans.regions.remove(vm_id) {
                        tracing::debug!(vm = vm_id, stats = ?region.stats(), "shell ended");
                        region.fail("the VM ended");
                    }
                    lock(&spans.shells).remove(&vm_id);
                }
            });
        let (vm, weak_node, origin) = (
            Arc::downgrade(&shell.vm),
            Arc::downgrade(node),
            shell.origin,
        );
        let _ = std::thread::Builder::new()
            .name(format!("shell-watch-{vm_id:x}"))
            .spawn(move || shell::watch_origin(vm, weak_node, origin));
        Ok(shell)
    }

    fn piece(&self, from: u32, p: msg::ShellPiece) -> Result<()> {
        let mut pieces = lock(&self.pieces);
        pieces.retain(|_, p| p.since.is_some_and(|t| t.elapsed() < STALE_PIECES));
        let entry = pieces.entry(p.vm).or_default();
        entry.since = Some(Instant::now());
        match p.kind {
            PieceKind::Image => {
                if p.offset == 0 {
                    entry.image.clear();
                }
                if p.offset != entry.image.len() as u64 {
                    return Err(Error::BadMessage(format!(
                        "image piece out of order from node {from}"
                    )));
                }
                entry.image.extend_from_slice(&p.bytes);
            }
            PieceKind::Pages => {
                let record = 8 + vmm::memory::PAGE_SIZE as usize;
                if !p.bytes.len().is_multiple_of(record) {
                    return Err(Error::BadMessage("a cut page record".into()));
                }
                for r in p.bytes.chunks_exact(record) {
                    let addr = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                    entry.pages.push((addr, r[8..].to_vec()));
                }
            }
        }
        Ok(())
    }

    fn origin_vm(&self, vm_id: u64) -> Result<(Arc<Origin>, Arc<VmShared>)> {
        let o = self.origin(vm_id).ok_or_else(|| {
            Error::NoSuchVm(format!("VM {vm_id:x} does not span nodes from here"))
        })?;
        let vm =
            o.vm.upgrade()
                .ok_or_else(|| Error::NoSuchVm(format!("VM {vm_id:x} ended")))?;
        Ok((o, vm))
    }
}

/// Handles the messages of the per-thread range.
impl Service for Arc<Spans> {
    fn handle(&self, node: &Arc<Node>, t: MsgType, m: &mut Incoming) -> Result<()> {
        let payload = std::mem::take(&mut m.payload);
        let bad = |e| Error::malformed(t.name(), e);
        let respond = |m: &mut Incoming, bytes: &[u8]| {
            if let Some(r) = m.take_responder() {
                let _ = r.respond(bytes);
            }
        };
        let responder = |m: &mut Incoming| {
            m.take_responder()
                .ok_or_else(|| Error::BadMessage(format!("{} must be a request", t.name())))
        };
        match t {
            MsgType::Shell => {
                let p: msg::ShellPiece = pop_wire::from_bytes(&payload).map_err(bad)?;
                self.piece(m.from, p)?;
                respond(m, &[]);
                Ok(())
            }
            MsgType::Arrive => {
                let a: msg::Arrive = pop_wire::from_bytes(&payload).map_err(bad)?;
                let r = responder(m)?;
                // Quick here (the vCPU's thread restores it and answers), unless a shell is
                // to be made: that goes to this node's arrivals thread.
                self.arrive(node, m.from, a, r);
                Ok(())
            }
            MsgType::FutexWait => {
                let w: msg::FutexWait = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (o, _) = self.origin_vm(w.vm)?;
                o.futex_job(FutexJob::Wait(w, responder(m)?));
                Ok(())
            }
            MsgType::FutexWake => {
                let w: msg::FutexWake = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (o, _) = self.origin_vm(w.vm)?;
                o.futex_job(FutexJob::Wake(w, responder(m)?));
                Ok(())
            }
            MsgType::FutexCancel => {
                let c: msg::FutexCancel = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (o, _) = self.origin_vm(c.vm)?;
                o.futex_job(FutexJob::Cancel(c, responder(m)?));
                Ok(())
            }
            MsgType::ThreadExited => {
                let e: msg::ThreadExited = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (o, vm) = self.origin_vm(e.vm)?;
                o.thread_gone(e.tid);
                if vm.threads.exited_elsewhere(e.tid, e.index) {
                    vm.finish(Outcome::Exit(0));
                }
                respond(m, &[]);
                Ok(())
            }
            MsgType::ThreadAt => {
                let at: msg::ThreadAt = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (o, _) = self.origin_vm(at.vm)?;
                o.thread_at(at.tid, at.node, node.id());
                Ok(())
            }
            MsgType::Desc => {
                let d: msg::DescRequest = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (_, vm) = self.origin_vm(d.vm)?;
                let r = responder(m)?;
                // Quick (a lock on the table), so answered here.
                let answer = descriptors::serve(vm.fs.descriptors().as_ref(), d.op);
                let _ = r.respond(&pop_wire::to_bytes(&answer));
                Ok(())
            }
            MsgType::Join => {
                let j: msg::Join = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (_, vm) = self.origin_vm(j.vm)?;
                let r = responder(m)?;
                let _ = std::thread::Builder::new()
                    .name("join".into())
                    .spawn(move || {
                        let value = vm.threads.join(j.tid, j.caller, || vm.stopping()) as u64;
                        let _ = r.respond(&pop_wire::to_bytes(&msg::Answer { value }));
                    });
                Ok(())
            }
            MsgType::SpanExit => {
                let e: msg::SpanExit = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (_, vm) = self.origin_vm(e.vm)?;
                vm.finish(Outcome::Exit(e.status as i32));
                Ok(())
            }
            MsgType::SpanEnd => {
                let r: msg::VmRef = pop_wire::from_bytes(&payload).map_err(bad)?;
                if let Some(s) = lock(&self.shells).get(&r.vm) {
                    s.vm.finish(Outcome::Moved);
                }
                Ok(())
            }
            MsgType::Spawn => {
                let s: msg::Spawn = pop_wire::from_bytes(&payload).map_err(bad)?;
                let (_, vm) = self.origin_vm(s.vm)?;
                let start = ThreadStart {
                    tid: 0,
                    entry: s.entry,
                    func: s.func,
                    arg: s.arg,
                    stack_top: s.stack_top,
                    thread_pointer: s.thread_pointer,
                    // A thread spawned on a node starts there (made here, in the table).
                    node: Some(m.from),
                };
                let value = match vm.spawn(start) {
                    Ok(tid) => u64::from(tid),
                    Err(errno) => (-i64::from(errno)) as u64,
                };
                respond(m, &pop_wire::to_bytes(&msg::Answer { value }));
                Ok(())
            }
            MsgType::MoveThread => {
                let mv: msg::MoveThread = pop_wire::from_bytes(&payload).map_err(bad)?;
                let r = responder(m)?;
                let (spans, node) = (self.clone(), node.clone());
                let _ = std::thread::Builder::new()
                    .name("move-thread".into())
                    .spawn(move || match spans.move_anywhere(&node, mv) {
                        Ok(()) => {
                            let _ = r.respond(&[]);
                        }
                        Err(e) => {
                            let _ = r.fail(&e.to_string());
                        }
                    });
                Ok(())
            }
            MsgType::Threads => {
                let r: msg::VmRef = pop_wire::from_bytes(&payload).map_err(bad)?;
                let responder = responder(m)?;
                let spans = self.clone();
                // The origin asks the shells: not on the reader thread.
                let _ =
                    std::thread::Builder::new()
                        .name("threads".into())
                        .spawn(move || match spans.threads(r.vm) {
                            Some(list) => {
                                let _ = responder.respond(&pop_wire::to_bytes(&list));
                            }
                            None => {
                                let _ = responder.fail(&format!("VM {:x} does not run here", r.vm));
                            }
                        });
                Ok(())
            }
            _ => Err(Error::BadMessage(format!(
                "{} is not a thread message",
                t.name()
            ))),
        }
    }
}

impl Spans {
    /// `MOVE_THREAD`: moves the thread here, or passes the request to where it runs (known
    /// at the VM's origin).
    pub fn move_anywhere(&self, node: &Arc<Node>, mv: msg::MoveThread) -> Result<()> {
        let me = node.id();
        let at = match self.origin(mv.vm) {
            Some(o) => o.node_of(mv.tid, me),
            None if self.local.registry.get(mv.vm).is_some() => me,
            // A shell: the thread runs here, or the origin knows where.
            None => match lock(&self.shells).get(&mv.vm) {
                Some(s) if s.vm.threads.is_running(mv.tid) => me,
                Some(s) => s.origin,
                None => {
                    return Err(Error::NoSuchVm(format!(
                        "VM {:x} has no thread here",
                        mv.vm
                    )));
                }
            },
        };
        if at == me {
            // A node that just started (or was just dialled) may not be connected yet: a
            // user's move waits a little for it, as a whole-VM move does.
            node.wait_up(mv.to, PEER_UP_WAIT);
            return self.move_from_outside(mv.vm, mv.tid, mv.to);
        }
        request(node, at, MsgType::MoveThread, &pop_wire::to_bytes(&mv))
            .map(drop)
            .map_err(Error::Aborted)
    }
}

/// Logs (at trace level) how long an arrival took when it ends, whichever way: (its start,
/// the thread).
struct Timed(Instant, u32);

impl Drop for Timed {
    fn drop(&mut self) {
        tracing::trace!("arrival of thread {}: {:?}", self.1, self.0.elapsed());
    }
}

/// The shared-region ranges (offsets from its start, lengths) a thread touches first when it
/// resumes: the page of its stack pointer and of its thread pointer, each with the page
/// below (the frames it pushes next).
fn hot_ranges(thread: &ThreadState) -> Vec<(u64, u64)> {
    let (base, page) = (pop_abi::layout::SHARED_BASE, vmm::memory::PAGE_SIZE);
    thread
        .vcpu
        .state
        .hot_addresses()
        .iter()
        .filter_map(|&addr| (addr & !(page - 1)).checked_sub(base + page))
        .map(|start| (start, 2 * page))
        .collect()
}

/// The shell setup of VM `vm` for a node that has none.
fn setup_of(vm: &VmShared, ctx: &SpanCtx, thread: &ThreadState, read_copies: bool) -> ShellSetup {
    ShellSetup {
        origin: ctx.origin,
        home: ctx.home,
        name: vm.image.name.clone(),
        private_size: vm.mem.private_size(),
        shared_size: vm.mem.shared_size(),
        max_threads: vm.max_vcpus,
        image_len: vm.image.bytes.len() as u64,
        image_sha256: crate::vm::images::digest_of(&vm.image.bytes),
        clock: thread.clock,
        read_copies,
    }
}

/// The pages of `vm`'s private region that differ from a fresh load of its image and tables
/// (what a shell makes before these pages are applied: see [`shell::make`]).
fn written_private_pages(vm: &VmShared) -> std::result::Result<Vec<(u64, Vec<u8>)>, String> {
    let size = vm.mem.private_size();
    let fresh =
        vmm::memory::GuestMem::new(size, vm.mem.shared_size()).map_err(|e| e.to_string())?;
    vm.image.load(&fresh).map_err(|e| e.to_string())?;
    vmm::arch::write_tables(&fresh, vm.max_vcpus);
    let mut pages = Vec::new();
    let mut addr = 0;
    while addr < size {
        let ours = vm.mem.read(addr, 4096).map_err(|e| format!("errno {e}"))?;
        let theirs = fresh.read(addr, 4096).map_err(|e| format!("errno {e}"))?;
        if ours != theirs {
            pages.push((addr, ours));
        }
        addr += 4096;
    }
    Ok(pages)
}

/// A thread sent here: the node it came from, the message, and where its answer goes.
type Arrival = (u32, msg::Arrive, Responder);

/// Answers the sender of an arriving thread: restored, or why not.
fn answer(r: Responder, restored: std::result::Result<(), String>) {
    let _ = match restored {
        Ok(()) => r.respond(&[]),
        Err(e) => r.fail(&e),
    };
}

/// A request to node `to` whose answer is awaited here.
fn request(
    node: &Node,
    to: u32,
    t: MsgType,
    payload: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    node.request(to, t.number(), Priority::Control, payload, REQUEST_TIMEOUT)
        .map_err(|e| e.to_string())
}

/// A request whose answer (an [`msg::Answer`]) may take long: `None` if `gave_up()` turned
/// true first (the request is dropped).
fn poll_request(
    node: &Node,
    to: u32,
    t: MsgType,
    payload: &[u8],
    gave_up: &dyn Fn() -> bool,
) -> Option<std::result::Result<u64, String>> {
    let mut pending = match node.start_request(to, t.number(), Priority::Control, payload) {
        Ok(p) => p,
        Err(e) => return Some(Err(e.to_string())),
    };
    loop {
        if let Some(answer) = pending.poll(POLL) {
            return Some(
                answer
                    .map_err(|e| e.to_string())
                    .and_then(|a| decode_answer(&a).map_err(|e| e.to_string())),
            );
        }
        if gave_up() {
            return None;
        }
    }
}

fn decode_answer(bytes: &[u8]) -> std::result::Result<u64, pop_wire::WireError> {
    pop_wire::from_bytes::<msg::Answer>(bytes).map(|a| a.value)
}

fn errno_text(errno: i32) -> &'static str {
    match errno {
        EINVAL => "no such node",
        ENOEXEC => "another ISA",
        EHOSTUNREACH => "the node is down or cannot take it",
        ENOSYS => "the VM does not run in a cluster",
        _ => "failed",
    }
}
