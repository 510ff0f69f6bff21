//! What one node process hosts: the VMs running here, the VMs whose home is here (their
//! `popvmm launch` waits here for output and the exit status), and VMs arriving. It answers the
//! migration and home messages of the mesh.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use net_msg::{Incoming, Node, Priority};
use serde_json::{Value, json};

use super::dest::{self, Arriving};
use super::files::{FileServer, RemoteFiles};
use super::msg;
use super::page_stream::{self, Target};
use pop_dsm::postcopy::PostcopyRegion;
use pop_wire::{Decoder, Encoder};
use vmm::fs::{FileService, HomeFiles};
use vmm::output::{Output, Sink};
use vmm::vm::{Outcome, Vm, VmShared};

/// A VM running on this node.
#[derive(Debug)]
pub struct HostedVm {
    /// Cluster-wide id: home node in the high 32 bits, a per-home number below.
    pub id: u64,
    /// Name (the image's).
    pub name: String,
    /// Home node.
    pub home: u32,
    /// The running VM.
    pub vm: Arc<VmShared>,
    state: Mutex<&'static str>,
}

impl HostedVm {
    /// Sets what `ps` shows as its state.
    pub fn set_state(&self, state: &'static str) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    fn describe(&self, node: u32) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "node": node,
            "home": self.home,
            "threads": self.vm.threads.running(),
            "memory": self.vm.mem.shared_size(),
            "state": *self.state.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

/// A VM running here in post-copy: its shared region is served by the DSM from node `from`
/// (the source) until the source says every page was pushed.
#[derive(Debug)]
pub struct PostcopyIn {
    /// The shared region, registered with userfaultfd.
    pub region: Arc<PostcopyRegion>,
    from: u32,
}

/// How an application ended, as its home learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Exit status for `popvmm launch`.
    pub status: i32,
    /// A VMM error message, if the VMM failed.
    pub error: Option<String>,
}

/// The VMs of this node process.
#[derive(Debug, Default)]
pub struct Host {
    node: OnceLock<Arc<Node>>,
    vms: Mutex<HashMap<u64, Arc<HostedVm>>>,
    homes: Mutex<HashMap<u64, Sender<Ended>>>,
    /// The files (mounts, open host files) of the VMs whose home is here.
    home_files: Mutex<HashMap<u64, Arc<HomeFiles>>>,
    files: FileServer,
    relays: super::relay::Relays,
    locations: Mutex<HashMap<u64, u32>>,
    /// Post-copy sources: VMs that left but whose memory still serves `FETCH`.
    departed: Mutex<HashMap<u64, Arc<HostedVm>>>,
    /// Post-copy destinations: VMs running here with pages still to come.
    postcopy_in: Mutex<HashMap<u64, Arc<PostcopyIn>>>,
    arriving: Mutex<HashMap<u64, Arriving>>,
    /// VMs whose `BEGIN` was refused lately, with the node and when: their page streams
    /// (opened while `BEGIN` was on its way) are refused at once.
    refused: Mutex<HashMap<u64, (u32, Instant)>>,
    /// Memory of VMs that left, for the next arrivals.
    pool: super::pool::MemoryPool,
    /// Page streams to the peers, opened ahead of migrations.
    spares: page_stream::Spares,
}

/// How long a refused `BEGIN` is remembered (see [`Host::was_refused`]).
const REFUSAL_KEPT: Duration = Duration::from_secs(5);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Host {
    /// A host not yet on the mesh; [`Host::attach`] it to its node.
    pub fn new() -> Arc<Host> {
        Arc::new(Host::default())
    }

    /// The mesh handler to start the node with (it forwards to [`Host::handle`]).
    pub fn handler(self: &Arc<Self>) -> impl Fn(Incoming) + Send + Sync + 'static {
        let host = Arc::downgrade(self);
        move |m| {
            if let Some(host) = host.upgrade() {
                host.handle(m);
            }
        }
    }

    /// Attaches the started node, serves the page streams of arriving VMs, and starts
    /// dropping arriving VMs that were abandoned.
    pub fn attach(self: &Arc<Self>, node: Arc<Node>) {
        let host = Arc::downgrade(self);
        node.serve_streams(move |stream| {
            if let (Some(host), page_stream::KIND) = (host.upgrade(), stream.kind()) {
                page_stream::serve(&host, stream);
            }
        });
        self.open_spares(&node);
        let _ = self.node.set(node);
        let host = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("arrivals".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(500));
                    match host.upgrade() {
                        Some(host) => host.purge_stale(),
                        None => return,
                    }
                }
            });
    }

    /// Keeps a page stream open ahead to each peer of this ISA while it is up (whole-VM
    /// migrations go only there).
    fn open_spares(&self, node: &Arc<Node>) {
        fn same_isa(node: &Node, p: u32) -> bool {
            let spec = node.cluster().nodes.get(p as usize);
            spec.is_some_and(|n| n.isa.name() == vmm::arch::NAME)
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

    /// How long the memory of a VM that left is kept for the next arrival (zero: not at all).
    pub fn keep_memory(&self, keep: Duration) {
        self.pool.set_keep(keep);
    }

    /// Migrations this node relays for `popvmm migrate` (see [`super::relay`]).
    pub(super) fn relays(&self) -> &super::relay::Relays {
        &self.relays
    }

    /// The node (after [`Host::attach`]).
    pub fn node(&self) -> &Arc<Node> {
        self.node.get().expect("host attached to its node")
    }

    /// Registers a VM whose home is here, with its files; the receiver gets how it ended,
    /// wherever it ran.
    pub fn add_home(&self, id: u64, files: Arc<HomeFiles>) -> Receiver<Ended> {
        let (tx, rx) = channel();
        lock(&self.homes).insert(id, tx);
        lock(&self.home_files).insert(id, files);
        rx
    }

    /// Forgets a VM whose home was here, once it ended (its host files close).
    pub fn end_home(&self, id: u64) {
        lock(&self.homes).remove(&id);
        lock(&self.home_files).remove(&id);
        lock(&self.locations).remove(&id);
    }

    /// Who serves the host files of VM `id` (home `home`) if it runs here: its home files
    /// if this is its home, else its home node.
    fn file_service(&self, id: u64, home: u32) -> (Arc<dyn FileService>, Option<Arc<HomeFiles>>) {
        if home == self.node().id()
            && let Some(files) = lock(&self.home_files).get(&id)
        {
            return (files.clone(), Some(files.clone()));
        }
        let remote = RemoteFiles {
            node: self.node().clone(),
            home,
            id,
        };
        (Arc::new(remote), None)
    }

    /// Where the VM `id`, whose home is here, runs now (as last reported).
    pub fn location(&self, id: u64) -> Option<u32> {
        lock(&self.locations).get(&id).copied()
    }

    /// Runs `vm` here (on a thread of its own) until it ends or moves away.
    pub fn run_vm(self: &Arc<Self>, id: u64, name: String, home: u32, vm: Vm) {
        let me = self.node().id();
        if home == me {
            lock(&self.locations).insert(id, me);
        } else {
            let mut e = Encoder::default();
            e.u64(id).u32(me);
            if let Err(err) = self
                .node()
                .send(home, msg::LOCATION, Priority::Control, &e.finish())
            {
                tracing::warn!("cannot tell node {home} where VM {id:x} runs: {err}");
            }
        }
        let hosted = Arc::new(HostedVm {
            id,
            name,
            home,
            vm: vm.shared(),
            state: Mutex::new("running"),
        });
        lock(&self.vms).insert(id, hosted.clone());
        let host = self.clone();
        let _ = std::thread::Builder::new()
            .name(format!("vm-{id:x}"))
            .spawn(move || {
                let outcome = vm.run();
                host.forget(&hosted);
                let ended = match outcome {
                    Ok(Outcome::Moved) => return,
                    Ok(Outcome::Error(e)) => Ended {
                        status: vmm::launch::EXIT_VMM_ERROR,
                        error: Some(e),
                    },
                    Ok(o) => Ended {
                        status: o.status(),
                        error: None,
                    },
                    Err(e) => Ended {
                        status: vmm::launch::EXIT_VMM_ERROR,
                        error: Some(e.to_string()),
                    },
                };
                host.report_end(id, home, ended);
            });
    }

    /// Removes `hosted` from the VMs running here (unless it came back meanwhile: then the
    /// entry is another one).
    fn forget(&self, hosted: &Arc<HostedVm>) {
        let mut vms = lock(&self.vms);
        if vms.get(&hosted.id).is_some_and(|v| Arc::ptr_eq(v, hosted)) {
            vms.remove(&hosted.id);
        }
    }

    /// Tells the home of VM `id` how it ended.
    fn report_end(&self, id: u64, home: u32, ended: Ended) {
        if home == self.node().id() {
            if let Some(tx) = lock(&self.homes).get(&id) {
                let _ = tx.send(ended);
            }
            return;
        }
        let mut e = Encoder::default();
        e.u64(id).u32(ended.status as u32);
        e.blob(ended.error.unwrap_or_default().as_bytes());
        if let Err(err) = self
            .node()
            .send(home, msg::EXIT, Priority::Control, &e.finish())
        {
            tracing::warn!("cannot tell node {home} that VM {id:x} ended: {err}");
        }
    }

    /// The VM `key` (an id, in decimal or hex, or a name) if it runs here.
    pub fn find(&self, key: &str) -> Option<Arc<HostedVm>> {
        let vms = lock(&self.vms);
        vms.values()
            .find(|v| matches_key(v.id, &v.name, key))
            .cloned()
    }

    /// The VMs running here, as `ps` shows them.
    pub fn local_list(&self) -> Vec<Value> {
        let id = self.node().id();
        let vms = lock(&self.vms);
        let mut list: Vec<Value> = vms.values().map(|v| v.describe(id)).collect();
        list.extend(
            lock(&self.departed)
                .values()
                .filter(|v| !vms.contains_key(&v.id))
                .map(|v| v.describe(id)),
        );
        drop(vms);
        list.sort_by_key(|v| v["id"].as_u64());
        list
    }

    /// The VMs of every node this one reaches.
    pub fn cluster_list(&self) -> Vec<Value> {
        let node = self.node();
        let mut list = self.local_list();
        let pending: Vec<_> = (0..node.cluster().nodes.len() as u32)
            .filter(|&n| n != node.id())
            .filter_map(|n| {
                node.start_request(n, msg::LIST, Priority::Control, &[])
                    .ok()
            })
            .collect();
        for p in pending {
            if let Ok(bytes) = p.wait(Duration::from_secs(2))
                && let Ok(Value::Array(vms)) = serde_json::from_slice(&bytes)
            {
                list.extend(vms);
            }
        }
        list
    }

    /// Output of VM `id` whose home is `home`: this process's own if it is the home.
    fn output(self: &Arc<Self>, id: u64, home: u32, fd: u8) -> Output {
        if home == self.node().id() {
            return if fd == 1 {
                Output::Stdout
            } else {
                Output::Stderr
            };
        }
        Output::Sink(Arc::new(HomeOutput {
            node: self.node().clone(),
            home,
            id,
            fd,
        }))
    }

    /// Serves one mesh message.
    pub fn handle(self: &Arc<Self>, mut m: Incoming) {
        let result = match m.msg_type {
            msg::LIST => {
                let list = serde_json::to_vec(&self.local_list()).unwrap_or_default();
                let _ = m.respond(&list);
                return;
            }
            msg::BEGIN => {
                self.purge_stale();
                let mut arriving = lock(&self.arriving);
                match dest::begin(m.from, &m.payload, &arriving, &self.pool) {
                    Ok(a) => {
                        let reused = lock(&a.fill).written.is_some() || a.donor.is_some();
                        let have_image = a.known_image.is_some();
                        arriving.insert(a.meta.vm, a);
                        drop(arriving);
                        let answer = json!({ "reused_memory": reused, "have_image": have_image });
                        let _ = m.respond(&serde_json::to_vec(&answer).unwrap_or_default());
                    }
                    Err(e) => {
                        drop(arriving);
                        let vm = serde_json::from_slice::<Value>(&m.payload).ok();
                        if let Some(id) = vm.and_then(|v| v["vm"].as_u64()) {
                            let mut refused = lock(&self.refused);
                            refused.retain(|_, (_, at)| at.elapsed() < REFUSAL_KEPT);
                            refused.insert(id, (m.from, Instant::now()));
                        }
                        if let Some(r) = m.take_responder() {
                            let _ = r.fail(&e);
                        }
                    }
                }
                return;
            }
            msg::DONE => self.postcopy_done(&mut m),
            msg::FETCH => self.fetch(&mut m),
            msg::VCPU | msg::ABORT | msg::COMMIT | msg::GO => self.arriving_message(&mut m),
            msg::OUTPUT => self.home_output(&m.payload),
            msg::FILE => self.home_file(&mut m),
            msg::MIGRATE => self.relayed_migrate(&mut m),
            msg::PROGRESS => self.relayed_progress(&m.payload),
            msg::EXIT => self.home_exit(&m.payload),
            msg::LOCATION => {
                let mut d = Decoder::new(&m.payload);
                match (d.u64(), d.u32()) {
                    (Ok(id), Ok(at)) if lock(&self.homes).contains_key(&id) => {
                        lock(&self.locations).insert(id, at);
                        Ok(())
                    }
                    _ => Err("bad LOCATION".to_string()),
                }
            }
            _ => Err(format!("message of unknown type {}", m.msg_type)),
        };
        if let Err(e) = result {
            tracing::warn!(from = m.from, "migration message {}: {e}", m.msg_type);
            if let Some(r) = m.take_responder() {
                let _ = r.fail(&e);
            }
        }
    }

    /// `DONE` of a post-copy VM running here: every page was pushed (and is in place: the
    /// source synced its page stream first), so faults need no catching any more.
    fn postcopy_done(&self, m: &mut Incoming) -> Result<(), String> {
        let id = Decoder::new(&m.payload).u64().map_err(|e| e.to_string())?;
        let pin = match lock(&self.postcopy_in).get(&id) {
            Some(pin) if pin.from == m.from => pin.clone(),
            _ => return Err(format!("no post-copy VM {id:x} from node {}", m.from)),
        };
        pin.region.finish();
        lock(&self.postcopy_in).remove(&id);
        if let Some(v) = lock(&self.vms).get(&id) {
            v.set_state("running");
        }
        let _ = m.take_responder().map(|r| r.respond(&[]));
        Ok(())
    }

    /// Where the pages of VM `id`'s page stream from node `from` go now.
    pub(super) fn page_target(&self, id: u64, from: u32) -> Result<Target, String> {
        if let Some(pin) = lock(&self.postcopy_in).get(&id)
            && pin.from == from
        {
            return Ok(Target::Postcopy(pin.clone()));
        }
        let mut arriving = lock(&self.arriving);
        match arriving.get_mut(&id) {
            Some(a) if a.from == from => {
                a.since = std::time::Instant::now();
                Ok(Target::Arriving(a.mem.clone(), a.fill.clone()))
            }
            _ => Err(format!("no VM {id:x} is arriving from node {from}")),
        }
    }

    /// A piece of the image of VM `id`, arriving from node `from`.
    pub(super) fn image_chunk(
        &self,
        id: u64,
        from: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), String> {
        match lock(&self.arriving).get_mut(&id) {
            Some(a) if a.from == from => a.image_chunk(offset, data).map_err(|e| e.to_string()),
            _ => Err(format!("no VM {id:x} is arriving from node {from}")),
        }
    }

    /// The page stream of VM `id` from node `from` opened; `closer` ends it if the VM is
    /// dropped before it starts.
    /// Returns the memory its post-copy pushes go through, if the pool had some.
    pub(super) fn stream_opened(
        &self,
        id: u64,
        from: u32,
        closer: net_msg::StreamCloser,
    ) -> Result<Option<vmm::memory::GuestMem>, String> {
        match lock(&self.arriving).get_mut(&id) {
            Some(a) if a.from == from && a.closer.is_none() => {
                a.closer = Some(closer);
                Ok(a.donor.take())
            }
            _ => Err(format!("no VM {id:x} is arriving from node {from}")),
        }
    }

    /// Whether VM `id` is arriving from node `from`.
    pub(super) fn is_arriving(&self, id: u64, from: u32) -> bool {
        lock(&self.arriving)
            .get(&id)
            .is_some_and(|a| a.from == from)
    }

    /// Whether this node refused VM `id` from node `from` lately.
    pub(super) fn was_refused(&self, id: u64, from: u32) -> bool {
        lock(&self.refused)
            .get(&id)
            .is_some_and(|&(f, at)| f == from && at.elapsed() < REFUSAL_KEPT)
    }

    /// Forgets VM `id` arriving from node `from` if it has not started (a failed migration).
    pub(super) fn drop_arriving(&self, id: u64, from: u32) {
        let mut arriving = lock(&self.arriving);
        if arriving.get(&id).is_some_and(|a| a.from == from) {
            let a = arriving.remove(&id);
            drop(arriving);
            drop(a);
        }
    }

    /// `FETCH` (on a post-copy source): one page of a VM that left.
    fn fetch(&self, m: &mut Incoming) -> Result<(), String> {
        let mut d = Decoder::new(&m.payload);
        let (id, addr) = match (d.u64(), d.u64()) {
            (Ok(id), Ok(addr)) => (id, addr),
            _ => return Err("bad FETCH".into()),
        };
        let hvm = lock(&self.departed)
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no pages of VM {id:x} here"))?;
        let page = hvm
            .vm
            .mem
            .read(
                addr & !(vmm::memory::PAGE_SIZE - 1),
                vmm::memory::PAGE_SIZE as usize,
            )
            .map_err(|_| format!("FETCH of {addr:#x}: outside guest memory"))?;
        let _ = m.take_responder().map(|r| r.respond(&page));
        Ok(())
    }

    /// Serves the missing-page faults of post-copy VM `id` by fetching from its source.
    fn serve_faults(&self, id: u64, pin: Arc<PostcopyIn>, vm: std::sync::Weak<VmShared>) {
        let node = self.node().clone();
        let _ = std::thread::Builder::new()
            .name(format!("uffd-{id:x}"))
            .spawn(move || {
                let from = pin.from;
                let fetch = |guest: u64| {
                    let mut e = Encoder::default();
                    e.u64(id).u64(guest);
                    let timeout = Duration::from_secs(10);
                    node.request(from, msg::FETCH, Priority::Page, &e.finish(), timeout)
                        .map_err(|e| e.to_string())
                };
                let lost = |why: String| {
                    if let Some(vm) = vm.upgrade() {
                        vm.finish(Outcome::Error(format!(
                            "post-copy: node {from} still held pages of this VM and did not \
                             send one ({why}); the VM is lost"
                        )));
                    }
                };
                pin.region.serve_faults(fetch, lost);
            });
    }

    /// Drops arriving VMs whose source went quiet for [`dest::STALE`] or was lost (a
    /// migration that failed before its switch-over leaves nothing behind here).
    fn purge_stale(&self) {
        self.pool.purge();
        let peers = self.node().peers();
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

    fn arriving_message(self: &Arc<Self>, m: &mut Incoming) -> Result<(), String> {
        let payload = std::mem::take(&mut m.payload);
        let id = Decoder::new(&payload).u64().map_err(|e| e.to_string())?;
        test_hook(match m.msg_type {
            msg::COMMIT => "commit",
            msg::GO => "go",
            _ => "",
        });
        let mut arriving = lock(&self.arriving);
        let a = match arriving.get_mut(&id) {
            Some(a) if a.from == m.from => a,
            _ => return Err(format!("no VM {id:x} is arriving from node {}", m.from)),
        };
        a.since = std::time::Instant::now();
        let mut d = Decoder::new(&payload);
        d.u64().map_err(|e| e.to_string())?;
        match m.msg_type {
            msg::VCPU => a.vcpu(&mut d).map_err(|e| e.to_string()),
            msg::ABORT => {
                arriving.remove(&id);
                Ok(())
            }
            msg::COMMIT => {
                let (home, fd_out, fd_err) = (a.meta.home, 1, 2);
                let stdout = self.output(id, home, fd_out);
                let stderr = self.output(id, home, fd_err);
                let files = self.file_service(id, home);
                // (The source syncs its page stream first, so this zeroes nothing in practice.)
                let resend = {
                    let mut fill = lock(&a.fill);
                    fill.zero_unwritten(&a.mem);
                    fill.resend.len()
                };
                let result = if resend > 0 {
                    Err(format!("{resend} pages of the VM did not arrive intact"))
                } else {
                    a.commit(d.rest(), stdout, stderr, files)
                };
                if result.is_err() {
                    arriving.remove(&id);
                }
                drop(arriving);
                result?;
                let _ = m.take_responder().map(|r| r.respond(&[]));
                Ok(())
            }
            msg::GO => {
                let mut a = arriving.remove(&id).expect("present");
                drop(arriving);
                // The page stream lives on (the source closes it); it writes no more pages
                // straight into memory once the VM is no longer arriving.
                a.closer = None;
                let fill = a.fill.clone();
                let mut fill = lock(&fill);
                if !fill.resend.is_empty() {
                    return Err("pages of the VM did not arrive intact".into());
                }
                fill.started = true;
                let vm = a.prepared.take().ok_or("GO before COMMIT")?;
                let shared = vm.shared();
                // Post-copy: registered before the VM runs, so that pages pushed from now on
                // go through userfaultfd.
                let postcopy = a.postcopy.take().map(|region| {
                    Arc::new(PostcopyIn {
                        region,
                        from: a.from,
                    })
                });
                if let Some(pin) = &postcopy {
                    lock(&self.postcopy_in).insert(id, pin.clone());
                }
                self.run_vm(id, a.meta.name.clone(), a.meta.home, vm);
                if let Some(pin) = postcopy {
                    if let Some(v) = lock(&self.vms).get(&id) {
                        v.set_state("postcopy");
                    }
                    self.serve_faults(id, pin, Arc::downgrade(&shared));
                }
                let _ = m.take_responder().map(|r| r.respond(&[]));
                Ok(())
            }
            _ => unreachable!("dispatched above"),
        }
    }

    fn home_output(&self, payload: &[u8]) -> Result<(), String> {
        let mut d = Decoder::new(payload);
        let id = d.u64().map_err(|e| e.to_string())?;
        let fd = d.u8().map_err(|e| e.to_string())?;
        if !lock(&self.homes).contains_key(&id) {
            return Err(format!("output of VM {id:x}, whose home is not here"));
        }
        let out = if fd == 1 {
            Output::Stdout
        } else {
            Output::Stderr
        };
        out.write_all_bytes(d.rest());
        Ok(())
    }

    /// `FILE`: a file operation of a VM whose home is here, running elsewhere.
    fn home_file(&self, m: &mut Incoming) -> Result<(), String> {
        let payload = std::mem::take(&mut m.payload);
        let mut d = Decoder::new(&payload);
        let id = d.u64().map_err(|e| e.to_string())?;
        let files = lock(&self.home_files)
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("file operation of VM {id:x}, whose home is not here"))?;
        let op = vmm::fs::op::FileOp::decode(&mut d).map_err(|e| e.to_string())?;
        let responder = m.take_responder().ok_or("FILE must be a request")?;
        self.files.serve(files, op, responder);
        Ok(())
    }

    fn home_exit(&self, payload: &[u8]) -> Result<(), String> {
        let mut d = Decoder::new(payload);
        let id = d.u64().map_err(|e| e.to_string())?;
        let status = d.u32().map_err(|e| e.to_string())? as i32;
        let error = d.blob(4096).map_err(|e| e.to_string())?;
        let error = (!error.is_empty()).then(|| String::from_utf8_lossy(error).into_owned());
        match lock(&self.homes).get(&id) {
            Some(tx) => {
                let _ = tx.send(Ended { status, error });
                Ok(())
            }
            None => Err(format!("exit of VM {id:x}, whose home is not here")),
        }
    }

    /// Moves VM `key` (running here) to node `to`; `progress` gets one JSON object per round.
    pub fn migrate(
        &self,
        key: &str,
        to: u32,
        mode: super::Mode,
        downtime_ms: u64,
        progress: &mut dyn FnMut(Value),
    ) -> Result<Value, String> {
        let hvm = self
            .find(key)
            .ok_or_else(|| format!("no VM {key} runs on node {}", self.node().id()))?;
        if lock(&self.postcopy_in).contains_key(&hvm.id) {
            return Err("this VM is still receiving its pages (post-copy); try again soon".into());
        }
        if mode == super::Mode::Postcopy {
            let start = std::time::Instant::now();
            // Serve its pages before the switch: the destination may fault on the first
            // instruction after `GO`, before `postcopy_switch` returns.
            lock(&self.departed).insert(hvm.id, hvm.clone());
            let mut phases = super::source::Phases::new();
            let switched =
                super::source::postcopy_switch((self.node(), &self.spares), &hvm, to, &mut phases);
            self.spares.refill(self.node(), to);
            phases.mark("switched");
            let (downtime, bytes, mut stream) = switched.inspect_err(|_| {
                lock(&self.departed).remove(&hvm.id);
            })?;
            self.forget(&hvm);
            test_hook("push");
            progress(json!({
                "phase": "switched",
                "to": to,
                "bytes": bytes,
                "downtime_ms": downtime.as_secs_f64() * 1e3,
            }));
            let pushed = super::source::push_rest(self.node(), &mut stream, &hvm, to, progress);
            phases.mark("push");
            lock(&self.departed).remove(&hvm.id);
            self.pool.left(hvm.vm.clone());
            let (pages, pushed_bytes) = pushed.map_err(|e| {
                format!("the VM started on node {to}, but pushing its pages failed: {e}")
            })?;
            return Ok(json!({
                "from": self.node().id(),
                "to": to,
                "mode": "postcopy",
                "rounds": 1,
                "reused_memory": phases.reused_memory,
                "had_image": phases.had_image,
                "phases": phases.json(),
                "total_ms": start.elapsed().as_secs_f64() * 1e3,
                "downtime_ms": downtime.as_secs_f64() * 1e3,
                "bytes": bytes + pushed_bytes,
                "last_pages": pages,
            }));
        }
        let moved =
            super::source::precopy((self.node(), &self.spares), &hvm, to, downtime_ms, progress);
        self.spares.refill(self.node(), to);
        let summary = moved?;
        self.forget(&hvm);
        self.pool.left(hvm.vm.clone());
        Ok(summary)
    }
}

/// For the tests of failures: with `POPVMM_TEST_DIE_ON=pages` (or `commit`, `go`) in its
/// environment, a destination node process dies abruptly when that message arrives, as a
/// crashed host would; with `push`, a post-copy source dies right after the switch-over.
pub(super) fn test_hook(point: &str) {
    static DIE_ON: OnceLock<Option<String>> = OnceLock::new();
    let die_on = DIE_ON.get_or_init(|| std::env::var("POPVMM_TEST_DIE_ON").ok());
    if die_on.as_deref() == Some(point) {
        // SAFETY: `_exit` ends the process at once, which is the point: no cleanup, like a
        // crash.
        unsafe { libc::_exit(137) };
    }
}

/// Whether a VM with `id` and `name` is the one the user named with `key`.
pub fn matches_key(id: u64, name: &str, key: &str) -> bool {
    key == name
        || key.parse::<u64>() == Ok(id)
        || u64::from_str_radix(key.trim_start_matches("0x"), 16) == Ok(id)
        || std::path::Path::new(name)
            .file_name()
            .is_some_and(|f| f.to_str() == Some(key))
}

/// Guest output sent to the VM's home node.
#[derive(Debug)]
struct HomeOutput {
    node: Arc<Node>,
    home: u32,
    id: u64,
    fd: u8,
}

impl Sink for HomeOutput {
    fn write(&self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(128 * 1024);
        let mut e = Encoder::with_capacity(n + 9);
        e.u64(self.id).u8(self.fd).bytes(&bytes[..n]);
        self.node
            .send(self.home, msg::OUTPUT, Priority::Control, &e.finish())
            .map_err(std::io::Error::other)?;
        Ok(n)
    }
}

/// A VM id for a VM launched on `node` by this process.
pub fn new_vm_id(node: u32) -> u64 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (u64::from(node) << 32) | u64::from(std::process::id().wrapping_mul(16).wrapping_add(n))
}
