//! Whole-VM live migration between nodes of the same ISA: pre-copy and post-copy.
//!
//! * [`source`]: the driver on the node the VM leaves;
//! * [`dest`]: assembling an arriving VM from its [`vmm::vm::state::VmState`] and starting it;
//! * [`page_stream`]: the image and memory of a moving VM, on a bulk stream of its own;
//! * [`pool`]: memory of VMs that left, reused by the next arrival;
//! * [`images`]: the images this process has, so that they are not sent again;
//! * [`dirty`]: which pages changed (KVM's dirty log plus the VMM's own writes).
//!
//! [`Migrations`] is the service: the VMs arriving here, the post-copy VMs whose pages still
//! come (served by the DSM, [`pop_dsm::postcopy`]), and the messages of the range
//! [`crate::msg::Service::Vm`].

pub mod dest;
pub mod dirty;
pub mod images;
pub mod page_stream;
pub mod pool;
pub mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use net_msg::{Incoming, Node, Priority, StreamCloser};
use vmm::memory::{GuestMem, PAGE_SIZE};
use vmm::vm::{Outcome, VmShared};

use crate::dsm::Regions;
use crate::error::{Error, Result};
use crate::home::Homes;
use crate::hooks::ClusterHooks;
use crate::local::Local;
use crate::msg::{self, BeginReply, Fetch, MsgType, Stream, VmRef};
use crate::registry::{HostedVm, VmStatus};
use crate::report::{Step, Summary};
use crate::thread::Spans;
use crate::{Mode, lock, test_hook};
use dest::{Arriving, PostcopyIn};
use page_stream::{Arrivals, Spares, Target};

/// How long a refused `BEGIN` is remembered (see [`Migrations::was_refused`]).
const REFUSAL_KEPT: Duration = Duration::from_secs(5);
/// How long a post-copy destination waits for one page from the source.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Whole-VM migrations to and from this node.
#[derive(Debug)]
pub struct Migrations {
    /// The VMs of this node process.
    local: Arc<Local>,
    /// The coherent regions of VMs that span nodes (such a VM cannot move whole).
    regions: Arc<Regions>,
    /// This node's spans (a VM that arrives whole may span nodes from here).
    spans: Weak<Spans>,
    arriving: Mutex<HashMap<u64, Arriving>>,
    /// VMs whose `BEGIN` was refused lately, with the node and when: their page streams
    /// (opened while `BEGIN` was on its way) are refused at once.
    refused: Mutex<HashMap<u64, (u32, Instant)>>,
    /// Post-copy destinations: VMs running here with pages still to come.
    postcopy_in: Mutex<HashMap<u64, Arc<PostcopyIn>>>,
    /// Memory of VMs that left, for the next arrivals.
    pool: pool::MemoryPool,
    /// Page streams to the peers, opened ahead of migrations.
    spares: Spares,
}

impl Migrations {
    /// The migrations of the node process whose VMs are `local`, whose spanning VMs' shared
    /// regions are `regions`, and whose spans are `spans`.
    pub fn new(local: Arc<Local>, regions: Arc<Regions>, spans: Weak<Spans>) -> Migrations {
        Migrations {
            local,
            regions,
            spans,
            arriving: Mutex::default(),
            refused: Mutex::default(),
            postcopy_in: Mutex::default(),
            pool: pool::MemoryPool::default(),
            spares: Spares::default(),
        }
    }

    /// How long the memory of a VM that left is kept for the next arrival (zero: not at all).
    pub fn keep_memory(&self, keep: Duration) {
        self.pool.set_keep(keep);
    }

    /// Keeps a page stream open ahead to each peer of this ISA while it is up (whole-VM
    /// migrations go only there).
    pub fn open_spares(&self, node: &Arc<Node>) {
        fn same_isa(node: &Node, p: u32) -> bool {
            let spec = node.cluster().nodes.get(p as usize);
            spec.is_some_and(|n| n.isa == pop_abi::Isa::NATIVE)
        }
        let events = node.subscribe();
        for (p, peer) in node.peers().iter().enumerate() {
            if peer.state == net_msg::PeerState::Up && same_isa(node, p as u32) {
                self.spares.refill(node, p as u32);
            }
        }
        let (spares, weak) = (self.spares.clone(), Arc::downgrade(node));
        let _ = std::thread::Builder::new()
            .name("spare-streams".into())
            .spawn(move || {
                // Ends when the node is gone (its sender with it).
                for event in events {
                    let Some(node) = weak.upgrade() else { return };
                    match event {
                        net_msg::PeerEvent::Up(p) => {
                            spares.forget(p);
                            if same_isa(&node, p) {
                                spares.refill(&node, p);
                            }
                        }
                        net_msg::PeerEvent::Down(p) => spares.forget(p),
                    }
                }
            });
    }

    /// Drops arriving VMs whose source went quiet for [`dest::STALE`] or was lost (a
    /// migration that failed before its switch-over leaves nothing behind here).
    pub fn purge_stale(&self, node: &Node) {
        self.pool.purge();
        let peers = node.peers();
        lock(&self.arriving).retain(|id, a| {
            let lost = peers
                .get(a.from as usize)
                .is_some_and(|p| p.state == net_msg::PeerState::Down);
            let keep = !lost && a.since.elapsed() < dest::STALE;
            if !keep {
                tracing::info!("dropping VM {id:x}, which node {} stopped sending", a.from);
            }
            keep
        });
    }

    /// Whether VM `id` still receives its pages here (post-copy).
    pub fn is_receiving(&self, id: u64) -> bool {
        lock(&self.postcopy_in).contains_key(&id)
    }

    /// `BEGIN`: a VM is about to arrive.
    fn begin(&self, node: &Node, m: &mut Incoming) -> Result<()> {
        self.purge_stale(node);
        let payload = std::mem::take(&mut m.payload);
        let begin = pop_wire::from_bytes::<msg::Begin>(&payload);
        let mut arriving = lock(&self.arriving);
        let accepted = begin
            .as_ref()
            .map_err(|e| Error::malformed("BEGIN", *e))
            .and_then(|b| dest::begin(m.from, b, &arriving, &self.pool).map_err(Error::Aborted));
        match accepted {
            Ok(a) => {
                let reply = BeginReply {
                    reused_memory: lock(&a.fill).written.is_some() || a.donor.is_some(),
                    have_image: a.known_image.is_some(),
                };
                arriving.insert(a.begin.header.vm, a);
                drop(arriving);
                let _ = m
                    .take_responder()
                    .map(|r| r.respond(&pop_wire::to_bytes(&reply)));
                Ok(())
            }
            Err(e) => {
                drop(arriving);
                if let Ok(b) = begin {
                    let mut refused = lock(&self.refused);
                    refused.retain(|_, (_, at)| at.elapsed() < REFUSAL_KEPT);
                    refused.insert(b.header.vm, (m.from, Instant::now()));
                }
                Err(e)
            }
        }
    }

    /// `COMMIT`, `GO` and `ABORT` of a VM arriving from the sender.
    fn arriving_message(&self, node: &Arc<Node>, t: MsgType, m: &mut Incoming) -> Result<()> {
        let payload = std::mem::take(&mut m.payload);
        test_hook(match t {
            MsgType::Commit => "commit",
            MsgType::Go => "go",
            _ => "",
        });
        let (id, commit) = match t {
            MsgType::Commit => {
                let commit: msg::Commit =
                    pop_wire::from_bytes(&payload).map_err(|e| Error::malformed("COMMIT", e))?;
                (commit.state.header.vm, Some(commit))
            }
            _ => {
                let r: VmRef =
                    pop_wire::from_bytes(&payload).map_err(|e| Error::malformed(t.name(), e))?;
                (r.vm, None)
            }
        };
        let mut arriving = lock(&self.arriving);
        let a = match arriving.get_mut(&id) {
            Some(a) if a.from == m.from => a,
            _ => return Err(not_arriving(id, m.from)),
        };
        a.since = Instant::now();
        match (t, commit) {
            (MsgType::Abort, _) => {
                arriving.remove(&id);
                Ok(())
            }
            (MsgType::Commit, Some(commit)) => {
                let home = a.begin.home;
                let outputs = (
                    Homes::output(node, id, home, Stream::Stdout),
                    Homes::output(node, id, home, Stream::Stderr),
                );
                let files = self.local.homes.file_service(node, id, home);
                // (The source syncs its page stream first, so this zeroes nothing in practice.)
                let resend = {
                    let mut fill = lock(&a.fill);
                    fill.zero_unwritten(&a.mem);
                    fill.resend.len()
                };
                let hooks = ClusterHooks::on(node);
                a.span = Some((
                    hooks.clone(),
                    crate::thread::SpanCtx {
                        spans: self.spans.clone(),
                        vm_id: id,
                        origin: node.id(),
                        home,
                    },
                ));
                let result = if resend > 0 {
                    Err(format!("{resend} pages of the VM did not arrive intact"))
                } else {
                    a.commit((node.id(), hooks), &commit.state, outputs, files)
                };
                let result = result.map_err(Error::Aborted);
                if result.is_err() {
                    arriving.remove(&id);
                }
                drop(arriving);
                result?;
                let _ = m.take_responder().map(|r| r.respond(&[]));
                Ok(())
            }
            (MsgType::Go, _) => {
                let mut a = arriving.remove(&id).expect("present");
                drop(arriving);
                self.go(node, id, &mut a)?;
                let _ = m.take_responder().map(|r| r.respond(&[]));
                Ok(())
            }
            _ => Err(Error::BadMessage(format!(
                "{} is not an arrival message",
                t.name()
            ))),
        }
    }

    /// `GO`: starts the arrived VM `a` (its state was committed).
    fn go(&self, node: &Arc<Node>, id: u64, a: &mut Arriving) -> Result<()> {
        // The page stream lives on (the source closes it); it writes no more pages straight
        // into memory once the VM is no longer arriving.
        a.closer = None;
        let fill = a.fill.clone();
        let mut fill = lock(&fill);
        if !fill.resend.is_empty() {
            return Err(Error::Aborted(
                "pages of the VM did not arrive intact".into(),
            ));
        }
        fill.started = true;
        let vm = a
            .prepared
            .take()
            .ok_or_else(|| Error::BadMessage("GO before COMMIT".into()))?;
        let shared = vm.shared();
        // Post-copy: registered before the VM runs, so that pages pushed from now on go
        // through userfaultfd.
        let postcopy = a.postcopy.take().map(|region| {
            Arc::new(PostcopyIn {
                region,
                from: a.from,
                span: Mutex::new(a.span.take()),
            })
        });
        if let Some((hooks, ctx)) = a.span.take() {
            hooks.span(ctx);
        }
        if let Some(pin) = &postcopy {
            lock(&self.postcopy_in).insert(id, pin.clone());
        }
        let hosted = self
            .local
            .run_vm(node, (id, a.begin.name.clone(), a.begin.home), vm);
        if let Some(pin) = postcopy {
            hosted.set_status(VmStatus::Postcopy);
            serve_faults(node, id, pin, Arc::downgrade(&shared));
        }
        Ok(())
    }

    /// `DONE` of a post-copy VM running here: every page was pushed (and is in place: the
    /// source synced its page stream first), so faults need no catching any more.
    fn postcopy_done(&self, m: &mut Incoming) -> Result<()> {
        let VmRef { vm: id } =
            pop_wire::from_bytes(&m.payload).map_err(|e| Error::malformed("DONE", e))?;
        let pin = match lock(&self.postcopy_in).get(&id) {
            Some(pin) if pin.from == m.from => pin.clone(),
            _ => {
                let from = m.from;
                return Err(Error::NoSuchVm(format!(
                    "no post-copy VM {id:x} from node {from}"
                )));
            }
        };
        pin.region.finish();
        lock(&self.postcopy_in).remove(&id);
        if let Some((hooks, ctx)) = lock(&pin.span).take() {
            hooks.span(ctx);
        }
        if let Some(v) = self.local.registry.get(id) {
            v.set_status(VmStatus::Running);
        }
        let _ = m.take_responder().map(|r| r.respond(&[]));
        Ok(())
    }

    /// `FETCH` (on a post-copy source): one page of a VM that left.
    fn fetch(&self, m: &mut Incoming) -> Result<()> {
        let Fetch { vm: id, addr } =
            pop_wire::from_bytes(&m.payload).map_err(|e| Error::malformed("FETCH", e))?;
        let hvm = self
            .local
            .registry
            .departed(id)
            .ok_or_else(|| Error::NoSuchVm(format!("no pages of VM {id:x} here")))?;
        let page = hvm
            .vm
            .mem
            .read(addr & !(PAGE_SIZE - 1), PAGE_SIZE as usize)
            .map_err(|_| Error::BadMessage(format!("FETCH of {addr:#x}: outside guest memory")))?;
        let _ = m.take_responder().map(|r| r.respond(&page));
        Ok(())
    }

    /// Moves `hvm` (running here) to node `to`; `progress` gets each step.
    pub fn migrate(
        &self,
        node: &Arc<Node>,
        hvm: Arc<HostedVm>,
        to: u32,
        (mode, downtime_ms): (Mode, u64),
        progress: &mut dyn FnMut(Step),
    ) -> Result<Summary> {
        if self.is_receiving(hvm.id) {
            return Err(Error::Busy(
                "this VM is still receiving its pages (post-copy); try again soon".into(),
            ));
        }
        // A shell (a region here, no claim) or a VM whose threads left cannot move whole;
        // while it does, none of its threads may leave (`HostedVm::start_spanning`).
        if self.regions.get(hvm.id).is_some() {
            return Err(Error::Aborted(crate::registry::cannot_move_whole(hvm.id)));
        }
        let _moving = hvm.start_moving_whole().map_err(Error::Aborted)?;
        source::check_destination(node, to).map_err(Error::Unreachable)?;
        let registry = &self.local.registry;
        if mode == Mode::Precopy {
            let moved = source::precopy((node, &self.spares), &hvm, to, downtime_ms, progress);
            self.spares.refill(node, to);
            let summary = moved.map_err(Error::Aborted)?;
            registry.remove(&hvm);
            self.pool.left(hvm.vm.clone());
            return Ok(summary);
        }
        let start = Instant::now();
        // Serve its pages before the switch: the destination may fault on the first
        // instruction after `GO`, before `postcopy_switch` returns.
        registry.depart(hvm.clone());
        let mut phases = source::Phases::new();
        let switched = source::postcopy_switch((node, &self.spares), &hvm, to, &mut phases);
        self.spares.refill(node, to);
        phases.mark("switched");
        let (downtime, bytes, mut stream) = switched.map_err(|e| {
            registry.departed_done(hvm.id);
            Error::Aborted(e)
        })?;
        registry.remove(&hvm);
        test_hook("push");
        progress(Step::Switched {
            to,
            bytes,
            downtime_ms: downtime.as_secs_f64() * 1e3,
        });
        let pushed = source::push_rest(node, &mut stream, &hvm, to, progress);
        phases.mark("push");
        registry.departed_done(hvm.id);
        self.pool.left(hvm.vm.clone());
        let (pages, pushed_bytes) = pushed.map_err(|e| {
            Error::AfterSwitch(format!(
                "the VM started on node {to}, but pushing its pages failed: {e}"
            ))
        })?;
        Ok(Summary {
            from: node.id(),
            to,
            mode: Mode::Postcopy,
            rounds: 1,
            total_ms: start.elapsed().as_secs_f64() * 1e3,
            downtime_ms: downtime.as_secs_f64() * 1e3,
            bytes: bytes + pushed_bytes,
            last_pages: pages,
            vcpus: None,
            resent_pages: None,
            reused_memory: phases.reused_memory,
            had_image: phases.had_image,
            phases: phases.steps(),
        })
    }
}

impl Arrivals for Migrations {
    fn page_target(&self, id: u64, from: u32) -> std::result::Result<Target, String> {
        if let Some(pin) = lock(&self.postcopy_in).get(&id)
            && pin.from == from
        {
            return Ok(Target::Postcopy(pin.clone()));
        }
        let mut arriving = lock(&self.arriving);
        match arriving.get_mut(&id) {
            Some(a) if a.from == from => {
                a.since = Instant::now();
                Ok(Target::Arriving(a.mem.clone(), a.fill.clone()))
            }
            _ => Err(format!("no VM {id:x} is arriving from node {from}")),
        }
    }

    fn image_chunk(
        &self,
        id: u64,
        from: u32,
        offset: u64,
        data: &[u8],
    ) -> std::result::Result<(), String> {
        match lock(&self.arriving).get_mut(&id) {
            Some(a) if a.from == from => a.image_chunk(offset, data).map_err(|e| e.to_string()),
            _ => Err(format!("no VM {id:x} is arriving from node {from}")),
        }
    }

    fn stream_opened(
        &self,
        id: u64,
        from: u32,
        closer: StreamCloser,
    ) -> std::result::Result<Option<GuestMem>, String> {
        match lock(&self.arriving).get_mut(&id) {
            Some(a) if a.from == from && a.closer.is_none() => {
                a.closer = Some(closer);
                Ok(a.donor.take())
            }
            _ => Err(format!("no VM {id:x} is arriving from node {from}")),
        }
    }

    fn is_arriving(&self, id: u64, from: u32) -> bool {
        lock(&self.arriving)
            .get(&id)
            .is_some_and(|a| a.from == from)
    }

    fn was_refused(&self, id: u64, from: u32) -> bool {
        lock(&self.refused)
            .get(&id)
            .is_some_and(|&(f, at)| f == from && at.elapsed() < REFUSAL_KEPT)
    }

    fn drop_arriving(&self, id: u64, from: u32) {
        let mut arriving = lock(&self.arriving);
        if arriving.get(&id).is_some_and(|a| a.from == from) {
            let a = arriving.remove(&id);
            drop(arriving);
            drop(a);
        }
    }
}

impl crate::Service for Migrations {
    fn handle(&self, node: &Arc<Node>, t: MsgType, m: &mut Incoming) -> Result<()> {
        match t {
            MsgType::Begin => self.begin(node, m),
            MsgType::Commit | MsgType::Go | MsgType::Abort => self.arriving_message(node, t, m),
            MsgType::Done => self.postcopy_done(m),
            MsgType::Fetch => self.fetch(m),
            _ => Err(Error::BadMessage(format!(
                "{} is not a migration message",
                t.name()
            ))),
        }
    }
}

/// A message about VM `id` from node `from`, which is not arriving from there.
fn not_arriving(id: u64, from: u32) -> Error {
    Error::NoSuchVm(format!("no VM {id:x} is arriving from node {from}"))
}

/// Serves the missing-page faults of post-copy VM `id` by fetching from its source, on a
/// thread of its own (which lets go of the VM once the DSM region is finished).
fn serve_faults(node: &Arc<Node>, id: u64, pin: Arc<PostcopyIn>, vm: std::sync::Weak<VmShared>) {
    let node = node.clone();
    let _ = std::thread::Builder::new()
        .name(format!("uffd-{id:x}"))
        .spawn(move || {
            let from = pin.from;
            let fetch = |addr: u64| {
                let request = pop_wire::to_bytes(&Fetch { vm: id, addr });
                node.request(
                    from,
                    MsgType::Fetch.number(),
                    Priority::Page,
                    &request,
                    FETCH_TIMEOUT,
                )
                .map_err(|e| e.to_string())
            };
            let lost = |why: String| {
                if let Some(vm) = vm.upgrade() {
                    vm.finish(Outcome::Error(format!(
                        "post-copy: node {from} still held pages of this VM and did not send \
                         one ({why}); the VM is lost"
                    )));
                }
            };
            pin.region.serve_faults(fetch, lost);
        });
}
