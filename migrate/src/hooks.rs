//! The hooks of a VM that runs in a cluster (see `vmm::hooks`): the guest sees the cluster's
//! nodes (`pop::nodes()`), each up if it is the VM's node or one its node reaches. A VM that
//! may span nodes (one launched in a cluster, and its shells) also has a [`SpanCtx`]: its
//! threads move ([`crate::thread`]), and once it spans, its futexes, joins, spawns, thread
//! exits and exit are the cluster's (carried to its origin).

use std::sync::atomic::AtomicU32;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use net_msg::{Node, PeerState};
use pop_abi::NodeEntry;
use pop_abi::errno::ENOSYS;
use vmm::arch::ThreadStart;
use vmm::hooks::{Hooks, Placement};
use vmm::moving::ThreadState;
use vmm::sys::FutexWait;

use crate::thread::{SpanCtx, Spans};

/// The hooks of a VM on a cluster node.
#[derive(Debug, Default)]
pub struct ClusterHooks {
    node: OnceLock<Weak<Node>>,
    span: OnceLock<SpanCtx>,
    /// New threads go round-robin over the nodes (the count of those placed so far).
    spread: OnceLock<AtomicU32>,
}

impl ClusterHooks {
    /// Hooks for a VM made before its node joined the mesh ([`ClusterHooks::attach`] it).
    pub fn new() -> Arc<ClusterHooks> {
        Arc::new(ClusterHooks::default())
    }

    /// Hooks for a VM on `node`.
    pub fn on(node: &Arc<Node>) -> Arc<ClusterHooks> {
        let hooks = ClusterHooks::new();
        hooks.attach(node);
        hooks
    }

    /// The VM's node has joined the mesh.
    pub fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(Arc::downgrade(node));
    }

    /// New threads start round-robin over the cluster's up nodes of this ISA (this one
    /// first), not all here.
    pub fn spread_threads(&self) {
        let _ = self.spread.set(AtomicU32::new(0));
    }

    /// The node the next new thread goes to, if threads are spread.
    fn next_node(&self) -> Option<u32> {
        let count = self.spread.get()?;
        let node = self.node.get()?.upgrade()?;
        let me = node.id();
        let mut nodes = vec![me];
        nodes.extend(
            node.cluster()
                .nodes
                .iter()
                .filter(|n| n.id != me && n.isa == pop_abi::Isa::NATIVE && node.is_up(n.id))
                .map(|n| n.id),
        );
        let k = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
        tracing::debug!(
            "new thread {k} placed on node {} of {nodes:?}",
            nodes[k % nodes.len()]
        );
        Some(nodes[k % nodes.len()])
    }

    /// The VM may span nodes: its threads move, as `ctx` says.
    pub fn span(&self, ctx: SpanCtx) {
        let _ = self.span.set(ctx);
    }

    fn spanning(&self) -> Option<(&SpanCtx, Arc<Spans>)> {
        let ctx = self.span.get()?;
        Some((ctx, ctx.spans.upgrade()?))
    }

    /// The VM's context and spans, if its futexes are the cluster's now.
    fn spread(&self) -> Option<(&SpanCtx, Arc<Spans>)> {
        self.spanning().filter(|(ctx, spans)| spans.spans(ctx))
    }

    fn on_shell(&self) -> Option<(&SpanCtx, Arc<Spans>)> {
        let node = self.node.get()?.upgrade()?;
        self.spanning().filter(|(ctx, _)| ctx.origin != node.id())
    }
}

impl Hooks for ClusterHooks {
    fn place_thread(&self, start: &ThreadStart) -> Placement {
        if let Some((ctx, _)) = self.on_shell() {
            return Placement::Node(ctx.origin);
        }
        if start.tid == vmm::threads::MAIN_TID || self.spanning().is_none() {
            return Placement::Here;
        }
        match self.next_node() {
            Some(node) => Placement::MoveTo(node),
            None => Placement::Here,
        }
    }

    fn start_remote(&self, _node: u32, start: ThreadStart) -> Result<u32, i32> {
        match self.spanning() {
            Some((ctx, spans)) => spans.spawn(ctx, &start),
            None => Err(ENOSYS),
        }
    }

    fn move_thread(&self, thread: &ThreadState, to: u32) -> Result<(), i32> {
        match self.spanning() {
            Some((ctx, spans)) => spans.move_thread(ctx, thread, to),
            None => Err(ENOSYS),
        }
    }

    fn thread_exited(&self, tid: u32, index: u32) -> bool {
        self.spanning()
            .is_some_and(|(ctx, spans)| spans.thread_exited(ctx, tid, index))
    }

    fn exit_elsewhere(&self, status: i32) -> bool {
        self.spanning()
            .is_some_and(|(ctx, spans)| spans.exit(ctx, status))
    }

    fn join_elsewhere(&self, tid: u32, caller: u32, interrupted: &dyn Fn() -> bool) -> Option<i64> {
        let (ctx, spans) = self.on_shell()?;
        spans.join(ctx, tid, caller, interrupted)
    }

    fn futex_wait(
        &self,
        addr: u64,
        word: &AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
        interrupted: &dyn Fn() -> bool,
    ) -> FutexWait {
        match self.spread() {
            Some((ctx, spans)) => spans.futex_wait(ctx, addr, word, expected, timeout, interrupted),
            None => vmm::sys::futex_wait(word, expected, timeout),
        }
    }

    fn futex_wake(&self, addr: u64, word: &AtomicU32, count: i32) -> i64 {
        match self.spread() {
            Some((ctx, spans)) => spans.futex_wake(ctx, addr, word, count),
            None => vmm::sys::futex_wake(word, count),
        }
    }

    fn nodes(&self, here: u32) -> Vec<NodeEntry> {
        let Some(node) = self.node.get().and_then(Weak::upgrade) else {
            return vmm::hooks::LocalHooks.nodes(here);
        };
        let peers = node.peers();
        node.cluster()
            .nodes
            .iter()
            .map(|spec| NodeEntry {
                id: spec.id,
                isa: spec.isa.abi(),
                up: u32::from(
                    spec.id == node.id()
                        || peers
                            .get(spec.id as usize)
                            .is_some_and(|p| p.state == PeerState::Up),
                ),
            })
            .collect()
    }
}
