//! A VM whose threads span nodes: a thread leaving this node (`VmShared::depart`, from its
//! own `migrate` hypercall; a thread stopped from outside leaves through
//! [`VmShared::thread_state`] and [`VmShared::thread_left`]) and one arriving
//! ([`VmShared::arrive_then`]), on the vCPU of its index here, made if this node has none. Where
//! the thread goes and how is the hooks' business ([`crate::hooks::Hooks::move_thread`]).

use std::mem::offset_of;
use std::sync::{Arc, Mutex};

use pop_abi::BootInfo;
use pop_abi::errno::EIO;
use pop_abi::layout::{BOOT_INFO_ADDR, PERCPU_SIZE, percpu_area};

use super::VmShared;
use super::vcpu_loop::{Begin, vcpu_thread};
use crate::arch::{Vcpu, VcpuArgs};
use crate::clock::ClockState;
use crate::moving::{ParkedVcpu, ThreadState};
use crate::persist::Persist;
use crate::sync::lock;
use crate::threads::{Mailbox, Next, Restored};

impl VmShared {
    /// The node this copy of the VM runs on.
    pub fn node(&self) -> u32 {
        crate::boot::node_id(&self.mem)
    }

    /// What thread `parked` (stopped) takes with it: its per-vCPU area and its clock.
    pub fn thread_state(&self, parked: ParkedVcpu) -> ThreadState {
        let percpu = self
            .mem
            .read(percpu_area(parked.index), PERCPU_SIZE as usize)
            .unwrap_or_else(|_| vec![0; PERCPU_SIZE as usize]);
        let clock = ClockState {
            counter: parked.state.tsc,
            paused_realtime_ns: crate::sys::realtime_ns(),
        };
        ThreadState {
            vcpu: parked,
            percpu,
            clock,
        }
    }

    /// Moves thread `tid`, which runs on `vcpu` and asked for it (its hypercall answered
    /// already), to node `to`; `at_call`: the counter it read, if it asked from a call
    /// boundary (then its state is what the exit left, without a vCPU ioctl). `Ok`: it runs
    /// there; `Err(errno)`: it goes on here.
    pub(super) fn depart(
        &self,
        vcpu: &mut Vcpu,
        tid: u32,
        to: u32,
        at_call: Option<u64>,
    ) -> Result<(), i32> {
        let state = match at_call {
            Some(counter) => vcpu.save_at_call(counter),
            None => vcpu.complete_pending().and_then(|()| vcpu.save()),
        }
        .map_err(|_| EIO)?;
        let parked = ParkedVcpu {
            index: vcpu.index(),
            tid,
            state,
            pending: None,
        };
        self.hooks.move_thread(&self.thread_state(parked), to)
    }

    /// Runs `thread`, arriving from another node, on the vCPU of its index here (made if
    /// this node has none), without waiting: `then` is told, exactly once, whether the
    /// thread was restored (on its vCPU's thread, just before it runs) or why not.
    pub fn arrive_then(self: &Arc<Self>, thread: ThreadState, then: Restored) {
        let index = thread.vcpu.index;
        if index >= self.max_vcpus || thread.percpu.len() != PERCPU_SIZE as usize {
            return then(Err(format!(
                "an arriving thread on vCPU {index}, out of range"
            )));
        }
        if self.stopping() {
            return then(Err("the VM is ending".into()));
        }
        if let Some(mailbox) = self.threads.mailbox(index) {
            if let Err(Next::Arrive(_, then)) =
                mailbox.post_next(Next::Arrive(Box::new(thread), then))
            {
                then(Err(format!("vCPU {index} here takes no thread")));
            }
            return;
        }
        let vcpu = match Vcpu::new(&self.vm_fd, &self.arch, index, self.max_vcpus) {
            Ok(v) => v,
            Err(e) => return then(Err(format!("cannot make vCPU {index}: {e}"))),
        };
        let mailbox = Arc::new(Mailbox::default());
        let (vm, waiting) = (self.clone(), mailbox.clone());
        // The callback must reach whoever runs the thread, or come back if nothing does.
        let slot = Arc::new(Mutex::new(Some(then)));
        let given = slot.clone();
        let begin = Begin::Arrive(
            Box::new(thread),
            Box::new(move |restored| {
                if let Some(then) = lock(&given).take() {
                    then(restored);
                }
            }),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu_thread(vm, vcpu, begin, waiting));
        let failed = match spawned {
            Ok(handle) => {
                if self.threads.add_arrived(index, mailbox, handle) {
                    return;
                }
                "the VM is ending".to_string()
            }
            Err(e) => format!("cannot start vCPU {index}: {e}"),
        };
        if let Some(then) = lock(&slot).take() {
            then(Err(failed));
        }
    }

    /// Restores an arriving thread onto `vcpu` (of its index): its per-vCPU area, its
    /// registers, its counter going on from where it stopped.
    pub(super) fn restore_arrival(&self, vcpu: Vcpu, thread: &ThreadState) -> Result<Vcpu, String> {
        let area = percpu_area(thread.vcpu.index);
        self.mem
            .write(area, &thread.percpu)
            .map_err(|e| format!("per-vCPU area: errno {e}"))?;
        let khz_at = BOOT_INFO_ADDR + offset_of!(BootInfo, counter_khz) as u64;
        let khz = self.mem.read_u64(khz_at).unwrap_or(0);
        // A vCPU that ran here keeps its counter if it goes on from the thread's (this VM's
        // vCPUs here share one offset) and is at most 1 ms past the estimate.
        let args = VcpuArgs {
            vcpu,
            counter: thread.clock.resumed_counter(khz),
            counter_slack: khz,
        };
        Vcpu::restore(args, &thread.vcpu.state).map_err(|e| format!("cannot restore the vCPU: {e}"))
    }
}
