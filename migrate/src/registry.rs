//! The VMs a node process runs, and the post-copy sources it still serves pages of; `LIST`
//! answers with them (what `popvmm ps` shows).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use net_msg::{Incoming, Node};
use serde_json::{Value, json};
use vmm::vm::VmShared;

use crate::error::{Error, Result};
use crate::lock;
use crate::msg::{MsgType, VmInfo, VmList};

pub use crate::msg::VmStatus;

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
    status: Mutex<VmStatus>,
    /// Spanning nodes and moving whole exclude each other.
    claims: Mutex<Claims>,
}

/// Why VM `id`, which spans nodes, cannot move whole.
pub fn cannot_move_whole(id: u64) -> String {
    format!(
        "VM {id:x} spans nodes (its threads ran on other nodes, which may hold some of its \
         memory): it cannot move whole; move its threads (`--thread`)"
    )
}

/// A whole-VM move under way ([`HostedVm::start_moving_whole`]): over when dropped.
#[derive(Debug)]
pub struct MovingWhole<'a>(&'a HostedVm);

impl Drop for MovingWhole<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.0.claims);
        c.moving = false;
        c.past_switch = false;
    }
}

/// What a VM has begun that excludes the other (see [`HostedVm::start_spanning`]).
#[derive(Debug, Default)]
struct Claims {
    /// Its threads have gone to other nodes (which may hold some of its memory).
    spanned: bool,
    /// A whole-VM move of it is under way.
    moving: bool,
    /// That move was asked to stop before its switch-over (`popvmm migrate --cancel`).
    cancelled: bool,
    /// That move has begun its switch-over (the VM is about to stop): too late to cancel.
    past_switch: bool,
}

/// Why a cancelled move failed.
const CANCELLED: &str = "cancelled (popvmm migrate --cancel): the VM runs on here";

impl HostedVm {
    /// A VM that starts running here.
    pub fn new(id: u64, name: String, home: u32, vm: Arc<VmShared>) -> HostedVm {
        HostedVm {
            id,
            name,
            home,
            vm,
            status: Mutex::new(VmStatus::Running),
            claims: Mutex::default(),
        }
    }

    /// Marks the VM as spanning nodes (its first thread is about to leave): refused while it
    /// moves whole or its pages are still arriving (post-copy).
    pub fn start_spanning(&self) -> std::result::Result<(), String> {
        let mut c = lock(&self.claims);
        if c.moving {
            return Err("the VM is moving whole".into());
        }
        if self.status() == VmStatus::Postcopy {
            return Err("the VM's pages are still arriving".into());
        }
        c.spanned = true;
        Ok(())
    }

    /// Marks a whole-VM move of it as begun, until the returned value is dropped: refused
    /// once it has spanned nodes.
    pub fn start_moving_whole(&self) -> std::result::Result<MovingWhole<'_>, String> {
        let mut c = lock(&self.claims);
        if c.spanned {
            return Err(cannot_move_whole(self.id));
        }
        c.moving = true;
        c.cancelled = false;
        c.past_switch = false;
        Ok(MovingWhole(self))
    }

    /// Asks the whole-VM move under way to stop before its switch-over: it ends as a
    /// failed migration, and the VM runs on here. `Err` if none is under way.
    pub fn cancel_move(&self) -> std::result::Result<(), String> {
        if self.status() == VmStatus::PostcopySource {
            return Err(format!(
                "VM {:x} is past its post-copy switch-over: it runs on its destination",
                self.id
            ));
        }
        let mut c = lock(&self.claims);
        if !c.moving {
            return Err(format!("VM {:x} is not migrating", self.id));
        }
        if c.past_switch {
            return Err(format!(
                "VM {:x} is in its switch-over: too late to cancel (it fails back here or runs on its destination)",
                self.id
            ));
        }
        c.cancelled = true;
        Ok(())
    }

    /// Claims the switch-over for the move under way, right before the VM stops: `Err` if
    /// it was cancelled; once this returns `Ok`, [`HostedVm::cancel_move`] refuses, so a
    /// cancel either stops the move or is told it came too late, never both.
    pub fn begin_switch(&self) -> std::result::Result<(), String> {
        let mut c = lock(&self.claims);
        if c.cancelled {
            return Err(CANCELLED.into());
        }
        c.past_switch = true;
        Ok(())
    }

    /// `Err` with the reason if the move under way was asked to stop.
    pub fn check_cancelled(&self) -> std::result::Result<(), String> {
        match lock(&self.claims).cancelled {
            true => Err(CANCELLED.into()),
            false => Ok(()),
        }
    }

    /// Sets what `ps` shows as its state.
    pub fn set_status(&self, status: VmStatus) {
        *lock(&self.status) = status;
    }

    /// What it is doing.
    pub fn status(&self) -> VmStatus {
        *lock(&self.status)
    }

    fn info(&self, node: u32) -> VmInfo {
        VmInfo {
            id: self.id,
            name: self.name.clone(),
            node,
            home: self.home,
            threads: self.vm.threads.running(),
            memory: self.vm.mem.shared_size(),
            state: self.status(),
        }
    }
}

impl VmInfo {
    /// As the control socket's `ps` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "node": self.node,
            "home": self.home,
            "threads": self.threads,
            "memory": self.memory,
            "state": self.state.name(),
        })
    }
}

/// The VMs of this node process.
#[derive(Debug, Default)]
pub struct Registry {
    vms: Mutex<HashMap<u64, Arc<HostedVm>>>,
    /// Post-copy sources: VMs that left but whose memory still serves `FETCH`.
    departed: Mutex<HashMap<u64, Arc<HostedVm>>>,
}

impl Registry {
    /// Adds a VM that runs here now.
    pub fn add(&self, hosted: Arc<HostedVm>) {
        lock(&self.vms).insert(hosted.id, hosted);
    }

    /// Removes `hosted` from the VMs running here (unless it came back meanwhile: then the
    /// entry is another one).
    pub fn remove(&self, hosted: &Arc<HostedVm>) {
        let mut vms = lock(&self.vms);
        if vms.get(&hosted.id).is_some_and(|v| Arc::ptr_eq(v, hosted)) {
            vms.remove(&hosted.id);
        }
    }

    /// The VM `id` if it runs here.
    pub fn get(&self, id: u64) -> Option<Arc<HostedVm>> {
        lock(&self.vms).get(&id).cloned()
    }

    /// The VM `key` (an id, in decimal or hex, or a name) if it runs here.
    pub fn find(&self, key: &str) -> Option<Arc<HostedVm>> {
        lock(&self.vms)
            .values()
            .find(|v| matches_key(v.id, &v.name, key))
            .cloned()
    }

    /// Keeps serving the pages of `hosted`, which is leaving in post-copy.
    pub fn depart(&self, hosted: Arc<HostedVm>) {
        lock(&self.departed).insert(hosted.id, hosted);
    }

    /// Stops serving the pages of VM `id`.
    pub fn departed_done(&self, id: u64) {
        lock(&self.departed).remove(&id);
    }

    /// A post-copy source's VM `id`, whose pages are served from here.
    pub fn departed(&self, id: u64) -> Option<Arc<HostedVm>> {
        lock(&self.departed).get(&id).cloned()
    }

    /// The VMs running here (and post-copy sources), as `ps` shows them; `node` is this one.
    pub fn list(&self, node: u32) -> VmList {
        let vms = lock(&self.vms);
        let mut list: Vec<VmInfo> = vms.values().map(|v| v.info(node)).collect();
        list.extend(
            lock(&self.departed)
                .values()
                .filter(|v| !vms.contains_key(&v.id))
                .map(|v| v.info(node)),
        );
        drop(vms);
        list.sort_by_key(|v| v.id);
        VmList(list)
    }
}

impl crate::Service for Registry {
    fn handle(&self, node: &Arc<Node>, t: MsgType, m: &mut Incoming) -> Result<()> {
        match t {
            MsgType::List => {
                let list = self.list(node.id());
                let responder = m
                    .take_responder()
                    .ok_or_else(|| Error::BadMessage("LIST must be a request".into()))?;
                let _ = responder.respond(&pop_wire::to_bytes(&list));
                Ok(())
            }
            _ => Err(Error::BadMessage(format!(
                "{} is not a registry message",
                t.name()
            ))),
        }
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

/// A VM id for a VM launched on `node` by this process.
pub fn new_vm_id(node: u32) -> u64 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (u64::from(node) << 32) | u64::from(std::process::id().wrapping_mul(16).wrapping_add(n))
}
