//! The destination side: a VM arriving in pieces (`BEGIN`, image, pages, then its
//! [`VmState`] with `COMMIT`), checked, assembled into a [`Vm`] when committed, and started
//! on `GO`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use net_msg::StreamCloser;
use pop_dsm::postcopy::PostcopyRegion;
use pop_wire::WireError;
use vmm::config::VmConfig;
use vmm::fs::{FileService, FileSystem, FsArgs, HomeFiles};
use vmm::image::{Image, ImageBytes};
use vmm::memory::{GuestMem, PAGE_SIZE, PageSet};
use vmm::output::Output;
use vmm::persist::Persist;
use vmm::vm::state::VmState;
use vmm::vm::{KvmVm, Vm};

use crate::msg::Begin;

/// Most vCPUs accepted.
const MAX_VCPUS: u32 = 128;
/// Largest image accepted.
const MAX_IMAGE: u64 = 1 << 30;
/// Largest private region accepted.
const MAX_PRIVATE: u64 = 1 << 30;
/// Largest shared region accepted.
const MAX_SHARED: u64 = 64 << 30;
/// An arriving VM whose source has said nothing for this long is dropped (with its memory).
pub const STALE: Duration = Duration::from_secs(30);

/// A VM running here in post-copy: its shared region is served by the DSM from node `from`
/// (the source) until the source says every page was pushed.
#[derive(Debug)]
pub struct PostcopyIn {
    /// The shared region, registered with userfaultfd.
    pub region: Arc<PostcopyRegion>,
    /// The source.
    pub from: u32,
    /// Lets the VM's threads span nodes once every page is here (see [`Arriving::span`]).
    pub span: Mutex<Option<Span>>,
}

/// What lets a VM that arrived whole span nodes from here: its hooks, and the context to
/// give them (this node its origin, its home unchanged).
pub type Span = (Arc<crate::hooks::ClusterHooks>, crate::thread::SpanCtx);

/// A VM on its way here.
#[derive(Debug)]
pub struct Arriving {
    /// The node sending it.
    pub from: u32,
    /// What its `BEGIN` said.
    pub begin: Begin,
    /// Its memory, filled by its page stream.
    pub mem: GuestMem,
    /// Held by the page stream while it writes `mem`; `GO` marks the VM started under it.
    pub fill: Arc<Mutex<Fill>>,
    /// Closes its page stream (when the VM is dropped before it started).
    pub closer: Option<StreamCloser>,
    /// Post-copy: memory a VM of the same size left here ([`super::pool`]), whose pages the
    /// pushed pages are read into and then moved into the VM (instead of fresh memory).
    pub donor: Option<GuestMem>,
    image: Vec<u8>,
    /// The image, if this node had it already (then none is sent).
    pub known_image: Option<Arc<ImageBytes>>,
    /// The VM built by `COMMIT`, started by `GO`.
    pub prepared: Option<Vm>,
    /// Post-copy: the shared region, registered for missing-page faults at `COMMIT`.
    pub postcopy: Option<Arc<PostcopyRegion>>,
    /// Set at `COMMIT`: given to its hooks when it runs here with all its pages, so that its
    /// threads may then move to other nodes with this node as their origin.
    pub span: Option<Span>,
    /// When its last message came.
    pub since: Instant,
    /// Its KVM VM, being made meanwhile (not while the VM is stopped).
    kvm: Option<std::thread::JoinHandle<Result<KvmVm, String>>>,
}

/// How far an arriving VM's memory is filled.
#[derive(Debug)]
pub struct Fill {
    /// `GO` came: the VM runs, its page stream may no longer write its memory.
    pub started: bool,
    /// Memory reused from a VM that left ([`super::pool`]): the pages written so far. At the
    /// first `SYNC` (the end of the first copy round, which sends every page the source
    /// has) every other page is zeroed, and this becomes `None`.
    pub written: Option<PageSet>,
    /// Pages whose last record arrived changed (see [`super::page_stream`]): their contents
    /// are not trusted until they arrive again; the VM may not start before.
    pub resend: BTreeSet<u64>,
}

impl Fill {
    /// Zeroes the pages of reused memory that nothing was written to (once).
    pub fn zero_unwritten(&mut self, mem: &GuestMem) {
        if let Some(written) = self.written.take() {
            // SAFETY: an arriving VM does not run before `GO`, and its memory is written only
            // under this `Fill`'s lock, which the caller holds.
            unsafe { mem.zero_except(&written) };
        }
    }
}

/// Validates `BEGIN` and maps the VM's memory (or reuses memory from `pool`).
pub fn begin(
    from: u32,
    meta: &Begin,
    arriving: &HashMap<u64, Arriving>,
    pool: &super::pool::MemoryPool,
) -> Result<Arriving, String> {
    if meta.header.isa != pop_abi::Isa::NATIVE {
        return Err(format!(
            "this node is {}, the VM is {}: whole-VM migration needs the same ISA",
            pop_abi::Isa::NATIVE,
            meta.header.isa
        ));
    }
    meta.header
        .check_native()
        .map_err(|e| format!("BEGIN: {e}"))?;
    if meta.private_size == 0
        || meta.private_size > MAX_PRIVATE
        || meta.shared_size == 0
        || meta.shared_size > MAX_SHARED
        || !meta.private_size.is_multiple_of(PAGE_SIZE)
        || !meta.shared_size.is_multiple_of(PAGE_SIZE)
        || meta.image_len > MAX_IMAGE
        || meta.max_threads == 0
        || meta.max_threads > MAX_VCPUS
    {
        return Err("BEGIN: sizes out of range".into());
    }
    if arriving.contains_key(&meta.header.vm) {
        return Err(format!("VM {} is already arriving here", meta.header.vm));
    }
    let pooled = pool.take(meta.private_size, meta.shared_size);
    let (reused, donor) = if meta.postcopy {
        (None, pooled)
    } else {
        (pooled, None)
    };
    let recycled = reused.is_some();
    let mem = match reused {
        Some(mem) => mem,
        None => {
            let mem =
                GuestMem::new(meta.private_size, meta.shared_size).map_err(|e| e.to_string())?;
            mem.prefer_huge_pages();
            mem
        }
    };
    let made = mem.clone();
    let kvm = std::thread::Builder::new()
        .name("make-kvm-vm".into())
        .spawn(move || Vm::make_kvm_vm(&made).map_err(|e| e.to_string()))
        .ok();
    Ok(Arriving {
        kvm,
        fill: Arc::new(Mutex::new(Fill {
            started: false,
            written: recycled.then(|| PageSet::new(&mem)),
            resend: BTreeSet::new(),
        })),
        closer: None,
        span: None,
        donor,
        from,
        image: Vec::new(),
        known_image: super::images::find(&meta.image_sha256)
            .filter(|b| b.len() as u64 == meta.image_len),
        prepared: None,
        postcopy: None,
        since: Instant::now(),
        mem,
        begin: meta.clone(),
    })
}

impl Arriving {
    /// A chunk of the image at its offset.
    pub fn image_chunk(&mut self, offset: u64, data: &[u8]) -> Result<(), WireError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.begin.image_len)
            .ok_or(WireError("image chunk out of range"))?;
        if self.image.len() as u64 != offset {
            return Err(WireError("image chunk out of order"));
        }
        self.image.extend_from_slice(data);
        debug_assert_eq!(self.image.len() as u64, end);
        Ok(())
    }

    /// `COMMIT`: checks that everything arrived and builds the VM from `state` (not
    /// started) to run on node `node` (this one). Its output goes to `outputs` (stdout,
    /// stderr); its host files are served by `files`: its home's, here or over the mesh.
    pub fn commit(
        &mut self,
        (node, hooks): (u32, Arc<dyn vmm::hooks::Hooks>),
        state: &VmState,
        (stdout, stderr): (Output, Output),
        files: (Arc<dyn FileService>, Option<Arc<HomeFiles>>),
    ) -> Result<(), String> {
        if state.header.vm != self.begin.header.vm {
            return Err("COMMIT: the state of another VM".into());
        }
        state
            .check(self.begin.max_threads)
            .map_err(|e| format!("COMMIT: {e}"))?;
        let bytes = match self.known_image.clone() {
            Some(known) => known,
            None if self.image.len() as u64 == self.begin.image_len => {
                let bytes = Arc::new(ImageBytes::from(std::mem::take(&mut self.image)));
                // Its digest is worked out off the critical path, for its next arrival here.
                let remembered = bytes.clone();
                let _ = std::thread::Builder::new()
                    .name("image-digest".into())
                    .spawn(move || super::images::remember(&remembered));
                bytes
            }
            None => return Err("COMMIT: the image is incomplete".into()),
        };
        let image = Image::parse(self.begin.name.clone(), bytes).map_err(|e| e.to_string())?;
        if image.private_size() != self.begin.private_size {
            return Err("COMMIT: the image does not match the VM's memory".into());
        }
        let config = VmConfig {
            memory: self.begin.shared_size,
            max_threads: self.begin.max_threads,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            node_id: node,
            hooks,
            ..VmConfig::default()
        };
        let args = FsArgs {
            service: files.0,
            home: files.1,
            stdout,
            stderr,
            descriptors: None,
        };
        let fs = FileSystem::restore(args, &state.fds)
            .map_err(|e| format!("the descriptor table: errno {e}"))?;
        // Made while the pages arrived (an error there is met again, and reported, here).
        let kvm = self
            .kvm
            .take()
            .and_then(|made| made.join().ok())
            .and_then(Result::ok);
        let vm = Vm::restore(image, &config, fs, self.mem.clone(), state, kvm)
            .map_err(|e| e.to_string())?;
        if self.begin.postcopy {
            let shared = self.mem.shared_region();
            let region = PostcopyRegion::register(
                shared.guest_addr,
                shared.host_addr,
                shared.size,
                Box::new(self.mem.clone()),
            )
            .map_err(|e| e.to_string())?;
            self.postcopy = Some(Arc::new(region));
        }
        self.prepared = Some(vm);
        Ok(())
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        if let Some(closer) = &self.closer {
            closer.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::clock::ClockState;
    use vmm::fs::FdTable;
    use vmm::threads::ThreadTable;
    use vmm::vm::state::StateHeader;

    fn meta(isa: pop_abi::Isa, shared: u64) -> Begin {
        Begin {
            header: StateHeader {
                isa,
                ..StateHeader::native(7)
            },
            name: "x".into(),
            home: 0,
            private_size: 2 << 20,
            shared_size: shared,
            max_threads: 4,
            image_len: 100,
            postcopy: false,
            image_sha256: [0; 32],
        }
    }

    fn other_isa() -> pop_abi::Isa {
        match pop_abi::Isa::NATIVE {
            pop_abi::Isa::X86_64 => pop_abi::Isa::Aarch64,
            pop_abi::Isa::Aarch64 => pop_abi::Isa::X86_64,
        }
    }

    #[test]
    fn begin_checks_the_isa_and_the_sizes() {
        let none = HashMap::new();
        let pool = super::super::pool::MemoryPool::default();
        let native = pop_abi::Isa::NATIVE;
        let err = begin(1, &meta(other_isa(), 4 << 20), &none, &pool).unwrap_err();
        assert!(err.contains("same ISA"), "{err}");
        assert!(begin(1, &meta(native, 1 << 50), &none, &pool).is_err());
        assert!(begin(1, &meta(native, 4097), &none, &pool).is_err());
        let mut old = meta(native, 4 << 20);
        old.header.version += 1;
        assert!(begin(1, &old, &none, &pool).is_err());
        let a = begin(1, &meta(native, 4 << 20), &none, &pool).unwrap();
        let mut taken = HashMap::new();
        taken.insert(7, a);
        assert!(begin(1, &meta(native, 4 << 20), &taken, &pool).is_err());
    }

    #[test]
    fn malformed_states_are_refused() {
        let pool = super::super::pool::MemoryPool::default();
        let native = pop_abi::Isa::NATIVE;
        let mut a = begin(1, &meta(native, 4 << 20), &HashMap::new(), &pool).unwrap();
        assert!(a.image_chunk(50, &[0; 100]).is_err());
        assert!(a.image_chunk(0, &[0; 101]).is_err());
        let state = VmState {
            header: StateHeader::native(7),
            threads: Vec::new(),
            table: ThreadTable {
                last_tid: 1,
                threads: vec![(1, false)],
                vcpus: 1,
            },
            fds: FdTable::default(),
            clock: ClockState::default(),
        };
        let home: Arc<HomeFiles> = Arc::new(HomeFiles::new(Vec::new()));
        let outputs = (Output::Stdout, Output::Stderr);
        let err = a
            .commit(
                (1, Arc::new(vmm::hooks::LocalHooks)),
                &state,
                outputs.clone(),
                (home.clone(), None),
            )
            .unwrap_err();
        assert!(err.contains("do not match"), "{err}");
        let other = VmState {
            header: StateHeader::native(8),
            ..state
        };
        let err = a
            .commit(
                (1, Arc::new(vmm::hooks::LocalHooks)),
                &other,
                outputs,
                (home, None),
            )
            .unwrap_err();
        assert!(err.contains("another VM"), "{err}");
    }
}
