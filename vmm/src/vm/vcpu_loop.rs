//! The body of a vCPU's host thread: it runs guest threads one after another (a new thread,
//! a migrated one resuming, or none: waiting in the pool), serves their hypercalls, parks
//! when a pause asks, and reports crashes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pop_abi::layout::BOOT_INFO_ADDR;

use crate::arch::{Exit, HypercallRequest, ThreadStart, Vcpu};
use crate::boot;
use crate::fault;
use crate::moving::ThreadState;
use crate::outcome::Outcome;
use crate::threads::{MAIN_TID, Mailbox, Next, Restored};

use super::VmShared;
use super::hypercall::{self, Flow};
use super::pause::ParkEnd;

/// How a vCPU host thread begins.
pub(super) enum Begin {
    /// A new guest thread.
    Start(ThreadStart),
    /// A migrated guest thread, with the hypercall it was blocked in.
    Resume {
        tid: u32,
        pending: Option<HypercallRequest>,
    },
    /// A guest thread arriving from another node (restored here first; how that went is
    /// told before it runs).
    Arrive(Box<ThreadState>, Restored),
    /// No thread: wait in the pool.
    Idle,
}

impl std::fmt::Debug for Begin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Begin::Start(s) => f.debug_tuple("Start").field(s).finish(),
            Begin::Resume { tid, pending } => f
                .debug_struct("Resume")
                .field("tid", tid)
                .field("pending", pending)
                .finish(),
            Begin::Arrive(t, _) => f.debug_tuple("Arrive").field(&t.vcpu.tid).finish(),
            Begin::Idle => f.write_str("Idle"),
        }
    }
}

/// Stops vCPU threads: they see `stopping` at their next exit, which a signal forces.
pub(super) fn stop_vcpu_threads(handles: Vec<JoinHandle<()>>) {
    use std::os::unix::thread::JoinHandleExt;
    let deadline = Instant::now() + Duration::from_secs(2);
    for handle in handles {
        while !handle.is_finished() && Instant::now() < deadline {
            crate::sys::kick(handle.as_pthread_t());
            std::thread::sleep(Duration::from_micros(50));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
}

/// How one guest thread on a vCPU ended.
enum ThreadEnd {
    /// `thread_exit`: the vCPU is free for another thread; the guest word at `done` (if not 0)
    /// is to be set and woken.
    Exited {
        /// Guest address of the thread's completion word, or 0.
        done: u64,
    },
    /// The thread moved to another node: the vCPU waits here for it to come back (or for a
    /// new thread once it ended there).
    Away,
    /// The VM is over.
    VmOver,
}

/// Body of a vCPU's host thread: runs guest threads one after another.
pub(super) fn vcpu_thread(vm: Arc<VmShared>, vcpu: Vcpu, begin: Begin, mailbox: Arc<Mailbox>) {
    run_threads(&vm, vcpu, begin, &mailbox);
    // Nothing runs on this vCPU any more: a thread sent here meanwhile, or later, is refused
    // at once (its sender runs it on) rather than left to time out.
    if let Some(Next::Arrive(_, reply)) = mailbox.close() {
        reply(Err("the vCPU's thread here has ended".into()));
    }
}

/// The body of [`vcpu_thread`]: runs guest threads until the VM is over or the vCPU is gone.
fn run_threads(vm: &Arc<VmShared>, mut vcpu: Vcpu, begin: Begin, mailbox: &Arc<Mailbox>) {
    let mut next = Some(begin);
    loop {
        let (tid, pending) = match next.take() {
            Some(Begin::Start(start)) => {
                if let Err(e) = vcpu.start_thread(&start) {
                    vm.finish(Outcome::Error(format!(
                        "cannot start a thread on vCPU {}: {e}",
                        vcpu.index()
                    )));
                    return;
                }
                boot::write_percpu(&vm.mem, vcpu.index(), start.tid);
                if start.tid == MAIN_TID {
                    record_boot(vm, &vcpu);
                }
                // Placed on another node: it goes there before its first instruction (if it
                // cannot, it runs here).
                if let Some(to) = start.node
                    && vm.depart(&mut vcpu, start.tid, to, None).is_ok()
                {
                    vm.threads.visiting(start.tid, false);
                    continue;
                }
                (start.tid, None)
            }
            Some(Begin::Resume { tid, pending }) => (tid, pending),
            Some(Begin::Arrive(thread, reply)) => {
                match vm.restore_arrival(vcpu, &thread) {
                    Ok(v) => {
                        vcpu = v;
                        vm.threads.visiting(thread.vcpu.tid, true);
                        // Told here, not by a thread woken for it: on a node of one core,
                        // that thread would run first and hold the guest back.
                        reply(Ok(()));
                    }
                    // The vCPU is gone (KVM refused its state): this host thread ends; the
                    // source is told and runs the thread on.
                    Err(e) => return reply(Err(e)),
                }
                (thread.vcpu.tid, thread.vcpu.pending)
            }
            Some(Begin::Idle) | None => match mailbox.wait(|| vm.stopping()) {
                Some(Next::Start(start)) => {
                    next = Some(Begin::Start(start));
                    continue;
                }
                Some(Next::Arrive(thread, reply)) => {
                    next = Some(Begin::Arrive(thread, reply));
                    continue;
                }
                None => return,
            },
        };
        match run_thread(vm, &mut vcpu, tid, pending) {
            ThreadEnd::VmOver => return,
            ThreadEnd::Away => vm.threads.visiting(tid, false),
            ThreadEnd::Exited { done } => {
                // Signal the completion word before the thread stops counting as running,
                // so that a pause that sees it gone also sees the word set.
                if done != 0 {
                    // A bad address only loses the notification, which the guest asked for.
                    let _ = vm.mem.with_atomic_u32(done, |word| {
                        word.store(1, Ordering::SeqCst);
                        vm.hooks.futex_wake(done, word, i32::MAX)
                    });
                }
                if vm.hooks.thread_exited(tid, vcpu.index()) {
                    vm.threads.visiting(tid, false);
                } else if vm.threads.exited(tid, mailbox) {
                    vm.finish(Outcome::Exit(0));
                }
            }
        }
    }
}

/// Fills in the clock reference of the boot information, just before the first `KVM_RUN`.
fn record_boot(vm: &VmShared, vcpu: &Vcpu) {
    let khz = vcpu.counter_khz().unwrap_or(0);
    let counter = vcpu.read_counter().unwrap_or(0);
    let (realtime, monotonic) = (crate::sys::realtime_ns(), crate::sys::monotonic_ns());
    boot::write_clock_reference(&vm.mem, counter, realtime, monotonic);
    let khz_offset = std::mem::offset_of!(pop_abi::BootInfo, counter_khz) as u64;
    let _ = vm.mem.write_u64(BOOT_INFO_ADDR + khz_offset, khz);
    vm.timings.mark_boot();
}

/// When set (and not `0`), a guest abort (e.g. a panic) also prints the aborting thread's
/// registers and backtrace, like a fault.
pub const BACKTRACE_ENV: &str = "POPVMM_BACKTRACE";

/// Runs one guest thread until it exits or the VM ends; `pending` is a hypercall to serve
/// before the guest runs (one it was blocked in when it migrated).
fn run_thread(
    vm: &Arc<VmShared>,
    vcpu: &mut Vcpu,
    tid: u32,
    mut pending: Option<HypercallRequest>,
) -> ThreadEnd {
    loop {
        if vm.stopping() {
            return ThreadEnd::VmOver;
        }
        if pending.is_none() && vm.park_requested(tid) {
            match vm.park_here(vcpu, tid, None) {
                ParkEnd::Leave => return ThreadEnd::VmOver,
                ParkEnd::Away => return ThreadEnd::Away,
                ParkEnd::Resume(_) => continue,
            }
        }
        let exit = match pending.take() {
            Some(request) => Ok(Exit::Hypercall(request)),
            None => vcpu.run(&vm.mem),
        };
        let crash = match exit {
            Ok(Exit::Hypercall(request)) => match hypercall::handle(vm, request, tid) {
                Flow::Return(value) => {
                    vcpu.set_hypercall_result(&vm.mem, value);
                    continue;
                }
                Flow::Pending(request) => {
                    if vm.stopping() {
                        return ThreadEnd::VmOver;
                    }
                    match vm.park_here(vcpu, tid, Some(request)) {
                        ParkEnd::Leave => return ThreadEnd::VmOver,
                        ParkEnd::Away => return ThreadEnd::Away,
                        ParkEnd::Resume(again) => {
                            pending = again;
                            continue;
                        }
                    }
                }
                Flow::ThreadExit(done) => return ThreadEnd::Exited { done },
                Flow::Migrate(to, at_call) => {
                    // The thread resumes (wherever it runs) with 0 from the hypercall.
                    vcpu.set_hypercall_result(&vm.mem, 0);
                    if to == boot::node_id(&vm.mem) {
                        continue;
                    }
                    match vm.depart(vcpu, tid, to, at_call) {
                        Ok(()) => return ThreadEnd::Away,
                        Err(errno) => {
                            vcpu.set_hypercall_result(&vm.mem, -i64::from(errno));
                            continue;
                        }
                    }
                }
                Flow::Stop => return ThreadEnd::VmOver,
                Flow::Fault(frame) => vcpu.crash_from_fault_frame(&vm.mem, frame),
                Flow::Abort => {
                    if std::env::var_os(BACKTRACE_ENV).is_some_and(|v| v != "0") {
                        let crash = vcpu.crash_here("abort", None);
                        vm.reports
                            .write_all_lossy(&fault::report(&crash, &vm.mem, &vm.image));
                    }
                    vm.finish(Outcome::Abort);
                    return ThreadEnd::VmOver;
                }
                Flow::SetThreadPointer(tp) => {
                    let result = match vcpu.set_thread_pointer(tp) {
                        Ok(()) => 0,
                        Err(e) => -i64::from(e.errno()),
                    };
                    vcpu.set_hypercall_result(&vm.mem, result);
                    continue;
                }
            },
            Ok(Exit::Interrupted) => continue,
            Ok(Exit::Crash(crash)) => *crash,
            Err(e) => {
                vm.finish(Outcome::Error(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    vcpu.index()
                )));
                return ThreadEnd::VmOver;
            }
        };
        // Report only the first crash (other vCPUs may fall over while the VM stops), and
        // before finishing, so that the report is out when the process exits.
        if !vm.stopping() && !vm.crashed.swap(true, Ordering::AcqRel) {
            vm.reports
                .write_all_lossy(&fault::report(&crash, &vm.mem, &vm.image));
            vm.finish(Outcome::Fault);
        }
        return ThreadEnd::VmOver;
    }
}
