//! The shell of a VM on a node other than its origin: where its threads run when they come
//! here. Its private region is rebuilt from the image, then given the pages the origin's
//! guest (and VMM) wrote there (descriptor tables, boot information, arguments, page tables,
//! per-vCPU areas); its shared region starts empty and is served by the DSM from the origin;
//! its output and files go to the VM's home. It has no thread table of its own: threads
//! arrive at their vCPU index and report their end to the origin.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use net_msg::{Node, PeerState};
use pop_dsm::coherent::{Coherent, RegionConfig};
use vmm::config::VmConfig;
use vmm::fs::{FdTable, FileSystem, FsArgs};

use super::descriptors::OriginDescriptors;
use vmm::hooks::Hooks;
use vmm::image::{Image, ImageBytes};
use vmm::memory::{GuestMem, PAGE_SIZE};
use vmm::persist::Persist;
use vmm::threads::ThreadTable;
use vmm::vm::state::{StateHeader, VmState};
use vmm::vm::{Outcome, Vm, VmShared};

use crate::dsm::Regions;
use crate::home::Homes;
use crate::msg::{ShellSetup, Stream};

/// An error text meaning the node lacks the image: the sender sends it, then asks again.
pub const NEED_IMAGE: &str = "need the image";
/// An error text meaning the node has no shell of the VM: the sender sends its setup.
pub const NO_SHELL: &str = "no shell of the VM here";

/// Largest private region accepted.
const MAX_PRIVATE: u64 = 1 << 30;
/// Largest shared region accepted.
const MAX_SHARED: u64 = 64 << 30;
/// Most vCPUs accepted.
const MAX_VCPUS: u32 = 128;
/// Largest image accepted.
const MAX_IMAGE: u64 = 1 << 30;

/// What arrived for a shell not made yet.
#[derive(Debug, Default)]
pub struct Pieces {
    /// The image, in order.
    pub image: Vec<u8>,
    /// Private pages: (guest address, 4 KiB).
    pub pages: Vec<(u64, Vec<u8>)>,
    /// When the last piece came (stale pieces are dropped).
    pub since: Option<Instant>,
}

/// A VM's shell on this node.
#[derive(Debug)]
pub struct Shell {
    /// The VM.
    pub vm_id: u64,
    /// Its origin.
    pub origin: u32,
    /// Its home (output, files).
    pub home: u32,
    /// The shell's VM.
    pub vm: Arc<VmShared>,
    /// Its copy of the shared region.
    pub region: Arc<Coherent>,
}

/// Makes the shell of VM `vm_id` on `node` from `setup` and the `pieces` sent before.
pub fn make(
    node: &Arc<Node>,
    (homes, regions): (&Homes, &Regions),
    vm_id: u64,
    setup: &ShellSetup,
    pieces: &Pieces,
    hooks: Arc<dyn Hooks>,
) -> Result<(Shell, Vm), String> {
    if setup.private_size == 0
        || setup.private_size > MAX_PRIVATE
        || setup.shared_size == 0
        || setup.shared_size > MAX_SHARED
        || !setup.private_size.is_multiple_of(PAGE_SIZE)
        || !setup.shared_size.is_multiple_of(PAGE_SIZE)
        || setup.image_len > MAX_IMAGE
        || setup.max_threads == 0
        || setup.max_threads > MAX_VCPUS
    {
        return Err("shell setup: sizes out of range".into());
    }
    let bytes = match crate::vm::images::find(&setup.image_sha256) {
        Some(known) if known.len() as u64 == setup.image_len => known,
        _ if pieces.image.len() as u64 == setup.image_len && setup.image_len > 0 => {
            let bytes = Arc::new(ImageBytes::from(pieces.image.clone()));
            if crate::vm::images::digest_of(&bytes) != setup.image_sha256 {
                return Err("shell setup: the image does not match its digest".into());
            }
            bytes
        }
        _ => return Err(NEED_IMAGE.into()),
    };
    let image = Image::parse(setup.name.clone(), bytes).map_err(|e| e.to_string())?;
    if image.private_size() != setup.private_size {
        return Err("shell setup: the image does not match the VM's memory".into());
    }
    let mem = GuestMem::new(setup.private_size, setup.shared_size).map_err(|e| e.to_string())?;
    image.load(&mem).map_err(|e| e.to_string())?;
    vmm::arch::write_tables(&mem, setup.max_threads);
    for (addr, page) in &pieces.pages {
        if !addr.is_multiple_of(PAGE_SIZE)
            || addr + PAGE_SIZE > setup.private_size
            || page.len() != PAGE_SIZE as usize
        {
            return Err(format!("shell setup: a private page at {addr:#x}"));
        }
        mem.write(*addr, page)
            .map_err(|e| format!("private page at {addr:#x}: errno {e}"))?;
    }
    let (origin, home_node) = (setup.origin, setup.home);
    let (stdout, stderr) = (
        Homes::output(node, vm_id, home_node, Stream::Stdout),
        Homes::output(node, vm_id, home_node, Stream::Stderr),
    );
    let (service, home) = homes.file_service(node, vm_id, home_node);
    let config = VmConfig {
        memory: setup.shared_size,
        max_threads: setup.max_threads,
        stdout: stdout.clone(),
        stderr: stderr.clone(),
        node_id: node.id(),
        hooks,
        ..VmConfig::default()
    };
    // One descriptor table for the whole VM: its origin's.
    let descriptors = OriginDescriptors {
        node: node.clone(),
        origin,
        vm: vm_id,
    };
    let args = FsArgs {
        service,
        home,
        stdout,
        stderr,
        descriptors: Some(Arc::new(descriptors)),
    };
    let fs = FileSystem::restore(args, &FdTable::default())
        .map_err(|e| format!("the descriptor table: errno {e}"))?;
    let state = VmState {
        header: StateHeader::native(vm_id),
        threads: Vec::new(),
        table: ThreadTable::default(),
        // Kept at the origin (above), not here.
        fds: FdTable::default(),
        clock: setup.clock,
    };
    // The shared region is the DSM's from here on (what loading the image put there is
    // dropped: the origin's pages are the VM's).
    let shared = mem.shared_region();
    let cfg = RegionConfig {
        node: node.id(),
        home: origin,
        vm: vm_id,
        host_base: shared.host_addr,
        len: shared.size,
        write_protect: setup.read_copies && crate::write_protect_wanted(),
    };
    let region = regions.start(node, cfg).map_err(|e| e.to_string())?;
    if setup.read_copies && !region.read_copies() {
        // The VM's other nodes make read copies, which this kernel could not keep read-only.
        if let Some(region) = regions.remove(vm_id) {
            region.fail("the shell could not be made");
        }
        return Err(format!(
            "node {} cannot write-protect guest memory (userfaultfd write-protect; arm64 \
             needs Linux 6.10), and this VM's other nodes hold read copies",
            node.id()
        ));
    }
    let vm = match Vm::restore(image, &config, fs, mem, &state, None) {
        Ok(vm) => vm,
        Err(e) => {
            if let Some(region) = regions.remove(vm_id) {
                region.fail("the shell could not be made");
            }
            return Err(e.to_string());
        }
    };
    vm.shared().threads.mark_shell();
    let shell = Shell {
        vm_id,
        origin,
        home: home_node,
        vm: vm.shared(),
        region,
    };
    Ok((shell, vm))
}

/// Ends the shell's VM when its origin is lost (no node is left holding an orphaned shell).
pub fn watch_origin(vm: Weak<VmShared>, node: Weak<Node>, origin: u32) {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let (Some(vm), Some(node)) = (vm.upgrade(), node.upgrade()) else {
            return;
        };
        if vm.stopping() {
            return;
        }
        let down = node
            .peers()
            .get(origin as usize)
            .is_some_and(|p| p.state == PeerState::Down);
        if down {
            vm.finish(Outcome::Moved);
            return;
        }
    }
}
