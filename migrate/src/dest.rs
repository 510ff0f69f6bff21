//! The destination side: a VM arriving in pieces (metadata, image, pages, vCPU states, thread
//! table), checked, assembled into a [`Vm`] when committed, and started on `GO`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use net_msg::StreamCloser;
use pop_dsm::postcopy::PostcopyRegion;
use pop_wire::{Decoder, WireError};
use vmm::arch::{HypercallRequest, VcpuState};
use vmm::config::VmConfig;
use vmm::fs::{FdTable, FileService, FileSystem, HomeFiles};
use vmm::image::{Image, ImageBytes};
use vmm::memory::{GuestMem, PAGE_SIZE, PageSet};
use vmm::output::Output;
use vmm::threads::ThreadTable;
use vmm::vm::{KvmVm, ParkedVcpu, Paused, Vm};

/// Most vCPUs accepted.
const MAX_VCPUS: u32 = 128;
/// Largest image accepted.
const MAX_IMAGE: u64 = 1 << 30;
/// Largest private region accepted.
const MAX_PRIVATE: u64 = 1 << 30;
/// Largest shared region accepted.
const MAX_SHARED: u64 = 64 << 30;
/// Most thread-table entries accepted.
const MAX_THREADS_TABLE: usize = 1 << 16;
/// An arriving VM whose source has said nothing for this long is dropped (with its memory).
pub const STALE: Duration = Duration::from_secs(30);

/// `BEGIN`: what the destination needs to know before memory arrives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BeginMeta {
    /// VM id.
    pub vm: u64,
    /// VM name (the image's).
    pub name: String,
    /// Home node (output and exit status go there).
    pub home: u32,
    /// ISA of the VM.
    pub arch: String,
    /// Private region size.
    pub private_size: u64,
    /// Shared region size.
    pub shared_size: u64,
    /// Most vCPUs.
    pub max_threads: u32,
    /// Bytes of the image file.
    pub image_len: u64,
    /// Post-copy: the shared region's pages come after the VM started, on demand.
    #[serde(default)]
    pub postcopy: bool,
    /// SHA-256 of the image (hex): a node that has it says so and is not sent it.
    #[serde(default)]
    pub image_sha256: Option<String>,
}

/// `COMMIT`: the thread table and the clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommitMeta {
    /// VM id.
    pub vm: u64,
    /// Thread table.
    pub threads: ThreadTable,
    /// The guest's file descriptors (host files stay open at the VM's home).
    pub fds: FdTable,
    /// The guest counter when the VM stopped.
    pub counter: u64,
    /// Source host realtime when the VM stopped.
    pub paused_realtime_ns: u64,
}

/// A VM on its way here.
#[derive(Debug)]
pub struct Arriving {
    /// The node sending it.
    pub from: u32,
    /// Its metadata.
    pub meta: BeginMeta,
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
    vcpus: Vec<ParkedVcpu>,
    /// The VM built by `COMMIT`, started by `GO`.
    pub prepared: Option<Vm>,
    /// Post-copy: the shared region, registered for missing-page faults at `COMMIT`.
    pub postcopy: Option<Arc<PostcopyRegion>>,
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
    payload: &[u8],
    arriving: &HashMap<u64, Arriving>,
    pool: &super::pool::MemoryPool,
) -> Result<Arriving, String> {
    let meta: BeginMeta = serde_json::from_slice(payload).map_err(|e| format!("bad BEGIN: {e}"))?;
    if meta.arch != vmm::arch::NAME {
        return Err(format!(
            "this node is {}, the VM is {}: whole-VM migration needs the same ISA",
            vmm::arch::NAME,
            meta.arch
        ));
    }
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
    if arriving.contains_key(&meta.vm) {
        return Err(format!("VM {} is already arriving here", meta.vm));
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
        donor,
        from,
        image: Vec::new(),
        known_image: meta
            .image_sha256
            .as_deref()
            .and_then(super::images::parse_hex)
            .and_then(|d| super::images::find(&d))
            .filter(|b| b.len() as u64 == meta.image_len),
        vcpus: Vec::new(),
        prepared: None,
        postcopy: None,
        since: Instant::now(),
        mem,
        meta,
    })
}

impl Arriving {
    /// A chunk of the image at its offset.
    pub fn image_chunk(&mut self, offset: u64, data: &[u8]) -> Result<(), WireError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= self.meta.image_len)
            .ok_or(WireError("image chunk out of range"))?;
        if self.image.len() as u64 != offset {
            return Err(WireError("image chunk out of order"));
        }
        self.image.extend_from_slice(data);
        debug_assert_eq!(self.image.len() as u64, end);
        Ok(())
    }

    /// `VCPU`: one vCPU's state.
    pub fn vcpu(&mut self, d: &mut Decoder<'_>) -> Result<(), WireError> {
        let index = d.u32()?;
        let tid = d.u32()?;
        let pending = match d.u8()? {
            0 => None,
            1 => {
                let nr = d.u16()?;
                let mut args = [0; 5];
                for a in &mut args {
                    *a = d.u64()?;
                }
                Some(HypercallRequest { nr, args })
            }
            _ => return Err(WireError("bad pending flag")),
        };
        let state = VcpuState::decode(d)?;
        d.end()?;
        if index >= self.meta.max_threads || self.vcpus.iter().any(|v| v.index == index) {
            return Err(WireError("bad vCPU index"));
        }
        self.vcpus.push(ParkedVcpu {
            index,
            tid,
            state,
            pending,
        });
        Ok(())
    }

    /// `COMMIT`: checks that everything arrived and builds the VM (not started). Its host
    /// files are served by `files`: its home's, here (`home`) or over the mesh.
    pub fn commit(
        &mut self,
        payload: &[u8],
        stdout: Output,
        stderr: Output,
        files: (Arc<dyn FileService>, Option<Arc<HomeFiles>>),
    ) -> Result<(), String> {
        let commit: CommitMeta =
            serde_json::from_slice(payload).map_err(|e| format!("bad COMMIT: {e}"))?;
        let t = &commit.threads;
        if t.threads.len() > MAX_THREADS_TABLE || t.vcpus > self.meta.max_threads {
            return Err("COMMIT: thread table out of range".into());
        }
        let running = t.threads.iter().filter(|(_, exited)| !exited).count();
        if running != self.vcpus.len()
            || self.vcpus.iter().any(|v| v.index >= t.vcpus)
            || self
                .vcpus
                .iter()
                .any(|v| !t.threads.contains(&(v.tid, false)))
        {
            return Err("COMMIT: vCPU states do not match the thread table".into());
        }
        let bytes = match self.known_image.clone() {
            Some(known) => known,
            None if self.image.len() as u64 == self.meta.image_len => {
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
        let image = Image::parse(self.meta.name.clone(), bytes).map_err(|e| e.to_string())?;
        if image.private_size() != self.meta.private_size {
            return Err("COMMIT: the image does not match the VM's memory".into());
        }
        let config = VmConfig {
            memory: self.meta.shared_size,
            max_threads: self.meta.max_threads,
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            ..VmConfig::default()
        };
        let fs = FileSystem::moved(files.0, files.1, commit.fds.clone(), stdout, stderr);
        let paused = Paused {
            vcpus: std::mem::take(&mut self.vcpus),
            threads: commit.threads.clone(),
        };
        let mem = self.mem.clone();
        // Made while the pages arrived (an error there is met again, and reported, here).
        let kvm = self
            .kvm
            .take()
            .and_then(|made| made.join().ok())
            .and_then(Result::ok);
        let vm = Vm::restore(
            image,
            &config,
            fs,
            self.mem.clone(),
            paused,
            kvm,
            &|dest_khz| {
                super::clock::carry(&mem, commit.counter, commit.paused_realtime_ns, dest_khz)
            },
        )
        .map_err(|e| e.to_string())?;
        if self.meta.postcopy {
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
    use pop_wire::Encoder;

    fn meta(arch: &str, shared: u64) -> Vec<u8> {
        serde_json::to_vec(&BeginMeta {
            vm: 7,
            name: "x".into(),
            home: 0,
            arch: arch.into(),
            private_size: 2 << 20,
            shared_size: shared,
            max_threads: 4,
            image_len: 100,
            postcopy: false,
            image_sha256: None,
        })
        .unwrap()
    }

    #[test]
    fn begin_checks_the_isa_and_the_sizes() {
        let none = HashMap::new();
        let pool = super::super::pool::MemoryPool::default();
        let err = begin(1, &meta("riscv64", 4 << 20), &none, &pool).unwrap_err();
        assert!(err.contains("same ISA"), "{err}");
        assert!(begin(1, &meta(vmm::arch::NAME, 1 << 50), &none, &pool).is_err());
        assert!(begin(1, &meta(vmm::arch::NAME, 4097), &none, &pool).is_err());
        assert!(begin(1, b"{not json", &none, &pool).is_err());
        let a = begin(1, &meta(vmm::arch::NAME, 4 << 20), &none, &pool).unwrap();
        let mut taken = HashMap::new();
        taken.insert(7, a);
        assert!(begin(1, &meta(vmm::arch::NAME, 4 << 20), &taken, &pool).is_err());
    }

    #[test]
    fn malformed_states_are_refused() {
        let pool = super::super::pool::MemoryPool::default();
        let mut a = begin(1, &meta(vmm::arch::NAME, 4 << 20), &HashMap::new(), &pool).unwrap();
        let mut e = Encoder::default();
        e.u32(0).u32(1).u8(2);
        assert!(a.vcpu(&mut Decoder::new(&e.finish())).is_err());
        let mut e = Encoder::default();
        e.u32(0).u32(1).u8(0).bytes(&[0; 100]);
        assert!(a.vcpu(&mut Decoder::new(&e.finish())).is_err());
        assert!(a.image_chunk(50, &[0; 100]).is_err());
        assert!(a.image_chunk(0, &[0; 101]).is_err());
        let commit = serde_json::to_vec(&CommitMeta {
            vm: 7,
            threads: ThreadTable {
                last_tid: 1,
                threads: vec![(1, false)],
                vcpus: 1,
            },
            fds: FdTable::default(),
            counter: 0,
            paused_realtime_ns: 0,
        })
        .unwrap();
        let home: Arc<HomeFiles> = Arc::new(HomeFiles::new(Vec::new()));
        let err = a
            .commit(&commit, Output::Stdout, Output::Stderr, (home, None))
            .unwrap_err();
        assert!(err.contains("do not match"), "{err}");
    }
}
