//! The virtual machine: KVM setup, guest memory, and the host threads that run its vCPUs
//! until the guest exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use pop_abi::layout::BOOT_INFO_ADDR;

use crate::arch::{self, Exit, HypercallRequest, ThreadStart, Vcpu, VcpuArgs, VcpuState, VmArch};
use crate::boot;
use crate::clock::{ClockArgs, GuestClock};
use crate::config::VmConfig;
use crate::fault;
use crate::fs::FileSystem;
use crate::hypercall::{self, Flow};
use crate::image::Image;
use crate::launch::LaunchError;
use crate::memory::GuestMem;
use crate::output::Output;
use crate::persist::{Persist, VmState};
use crate::threads::{MAIN_TID, Mailbox, ThreadTable, Threads};
use crate::timings::Timings;

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest called `exit(status)`, or its last thread ended (status 0).
    Exit(i32),
    /// The guest aborted.
    Abort,
    /// The guest crashed (the report was written to the VM's stderr).
    Fault,
    /// The VMM itself failed while running the guest.
    Error(String),
    /// The VM migrated to another node and goes on there (not an end of the application).
    Moved,
}

impl Outcome {
    /// The exit status `popvmm` ends with.
    pub fn status(&self) -> i32 {
        match self {
            Outcome::Exit(status) => *status,
            Outcome::Abort => pop_abi::EXIT_ABORT,
            Outcome::Fault => pop_abi::EXIT_FAULT,
            Outcome::Error(_) | Outcome::Moved => crate::launch::EXIT_VMM_ERROR,
        }
    }
}

/// State shared by all vCPU threads of a VM.
#[derive(Debug)]
pub struct VmShared {
    /// Guest memory.
    pub mem: GuestMem,
    /// The KVM VM (vCPUs are created from it while others run).
    pub vm_fd: VmFd,
    /// Architecture state shared by vCPUs.
    pub arch: VmArch,
    /// The application image (kept for fault reports).
    pub image: Image,
    /// The guest's files.
    pub fs: FileSystem,
    /// The guest's threads.
    pub threads: Threads,
    /// Where crash reports go.
    pub reports: Output,
    /// Most vCPUs.
    pub max_vcpus: u32,
    /// Phase timings.
    pub timings: Arc<Timings>,
    stopping: AtomicBool,
    crashed: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    ended: Condvar,
    park_requested: AtomicBool,
    park: Mutex<Park>,
    parked_cv: Condvar,
}

/// A KVM VM with guest memory registered, made before the VM it will run is restored.
#[derive(Debug)]
pub struct KvmVm {
    vm_fd: VmFd,
    arch: VmArch,
}

/// A vCPU stopped for a migration: its thread, its state, and the blocking hypercall it was
/// in (to be issued again where it resumes: futex waits, sleeps and joins carry over).
#[derive(Clone, Debug)]
pub struct ParkedVcpu {
    /// vCPU index (the guest's per-vCPU data is at this index: it must not change).
    pub index: u32,
    /// Guest thread on it.
    pub tid: u32,
    /// Registers and the rest.
    pub state: VcpuState,
    /// The hypercall it was blocked in, if any (sleep: the time left).
    pub pending: Option<HypercallRequest>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Resume,
    Leave,
}

#[derive(Debug, Default)]
struct Park {
    epoch: u64,
    parked: Vec<ParkedVcpu>,
    errors: Vec<String>,
    decided: Option<(u64, Decision)>,
}

/// What a parked vCPU does next.
enum ParkEnd {
    Resume(Option<HypercallRequest>),
    Leave,
}

/// A paused VM's state, ready to be sent (see [`VmShared::pause`]).
#[derive(Clone, Debug)]
pub struct Paused {
    /// The vCPUs running guest threads.
    pub vcpus: Vec<ParkedVcpu>,
    /// The thread table.
    pub threads: ThreadTable,
}

impl VmShared {
    /// The shared state of a VM that has not run yet: its KVM VM with its memory, its files
    /// and threads, the rest from `config`.
    fn new(
        image: Image,
        config: &VmConfig,
        fs: FileSystem,
        threads: Threads,
        (mem, vm_fd, arch): (GuestMem, VmFd, VmArch),
        timings: Arc<Timings>,
    ) -> Arc<VmShared> {
        Arc::new(VmShared {
            mem,
            vm_fd,
            arch,
            image,
            fs,
            threads,
            reports: config.stderr.clone(),
            max_vcpus: config.max_threads,
            timings,
            stopping: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            outcome: Mutex::new(None),
            ended: Condvar::new(),
            park_requested: AtomicBool::new(false),
            park: Mutex::new(Park::default()),
            parked_cv: Condvar::new(),
        })
    }

    /// Whether a pause is asked for (vCPU threads park at their next exit).
    pub fn park_requested(&self) -> bool {
        self.park_requested.load(Ordering::Acquire)
    }

    fn park_lock(&self) -> std::sync::MutexGuard<'_, Park> {
        self.park.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every guest thread (out of `KVM_RUN`, or out of the host call it is blocked in)
    /// and returns their states. On failure (a vCPU cannot be saved, the VM ends, `timeout`)
    /// the VM has been resumed already.
    pub fn pause(&self, timeout: Duration) -> Result<Paused, String> {
        let deadline = Instant::now() + timeout;
        {
            let mut p = self.park_lock();
            p.epoch += 1;
            p.parked.clear();
            p.errors.clear();
            self.park_requested.store(true, Ordering::Release);
        }
        loop {
            {
                let p = self.park_lock();
                let running = self.threads.running() as usize;
                if let Some(e) = p.errors.first() {
                    let e = e.clone();
                    drop(p);
                    self.resume();
                    return Err(e);
                }
                if p.parked.len() >= running {
                    // Nothing can change now: every running thread is parked.
                    return Ok(Paused {
                        vcpus: p.parked.clone(),
                        threads: match self.threads.save() {
                            Ok(table) => table,
                            Err(never) => match never {},
                        },
                    });
                }
            }
            if self.stopping() {
                self.resume();
                return Err("the VM ended".into());
            }
            if Instant::now() > deadline {
                self.resume();
                return Err("the vCPUs did not stop in time".into());
            }
            self.threads.kick_all();
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn decide(&self, decision: Decision) {
        let mut p = self.park_lock();
        p.decided = Some((p.epoch, decision));
        self.park_requested.store(false, Ordering::Release);
        self.parked_cv.notify_all();
    }

    /// Lets the parked vCPUs go on here (the migration failed or was abandoned).
    pub fn resume(&self) {
        self.decide(Decision::Resume);
    }

    /// Ends the VM here because it now runs elsewhere: its vCPU threads end without touching
    /// the guest again.
    pub fn leave(&self) {
        self.decide(Decision::Leave);
        self.finish(Outcome::Moved);
    }

    /// Parks the calling vCPU thread (see [`VmShared::pause`]) until a decision.
    fn park_here(&self, vcpu: &mut Vcpu, tid: u32, pending: Option<HypercallRequest>) -> ParkEnd {
        let saved = vcpu.complete_pending().and_then(|()| vcpu.save());
        let mut p = self.park_lock();
        let epoch = p.epoch;
        match saved {
            Ok(state) => p.parked.push(ParkedVcpu {
                index: vcpu.index(),
                tid,
                state,
                pending,
            }),
            Err(e) => p
                .errors
                .push(format!("cannot save vCPU {}: {e}", vcpu.index())),
        }
        loop {
            match p.decided {
                Some((e, Decision::Resume)) if e == epoch => return ParkEnd::Resume(pending),
                Some((e, Decision::Leave)) if e == epoch => return ParkEnd::Leave,
                _ if self.stopping() => return ParkEnd::Leave,
                _ => {}
            }
            p = self
                .parked_cv
                .wait_timeout(p, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Whether the VM is shutting down (vCPU threads stop at their next exit).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Ends the VM with `outcome` (the first outcome wins).
    pub fn finish(&self, outcome: Outcome) {
        self.timings.mark_exit();
        let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(outcome);
        self.stopping.store(true, Ordering::Release);
        self.ended.notify_all();
    }

    /// Starts a guest thread on a vCPU, creating the vCPU and its host thread if none is idle.
    pub fn spawn(self: &Arc<Self>, start: ThreadStart) -> Result<u32, i32> {
        let vm = self.clone();
        self.threads.spawn(start, move |index, start, mailbox| {
            let vcpu = Vcpu::new(&vm.vm_fd, &vm.arch, index, vm.max_vcpus).map_err(|_| ())?;
            let vm2 = vm.clone();
            std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu_thread(vm2, vcpu, Begin::Start(start), mailbox))
                .map_err(|_| ())
        })
    }
}

/// A VM ready to run.
#[derive(Debug)]
pub struct Vm {
    shared: Arc<VmShared>,
    /// vCPUs re-created by [`Vm::restore`], started by [`Vm::run`].
    restored: Mutex<Option<Vec<(Vcpu, Begin)>>>,
}

/// How a vCPU host thread begins.
#[derive(Debug)]
enum Begin {
    /// A new guest thread.
    Start(ThreadStart),
    /// A migrated guest thread, with the hypercall it was blocked in.
    Resume {
        tid: u32,
        pending: Option<HypercallRequest>,
    },
    /// No thread: wait in the pool.
    Idle,
}

/// Registers guest memory with KVM, with `flags` (e.g. dirty logging) on every slot.
pub fn register_memory(vm_fd: &VmFd, mem: &GuestMem, flags: u32) -> Result<(), kvm_ioctls::Error> {
    for region in mem.regions() {
        let slot = kvm_userspace_memory_region {
            slot: region.slot,
            flags,
            guest_phys_addr: region.guest_addr,
            memory_size: region.size,
            userspace_addr: region.host_addr,
        };
        // SAFETY: the region is a live mapping of `region.size` bytes owned by `mem`, which
        // the VM keeps (in `VmShared`) for as long as the VM fd exists.
        unsafe { vm_fd.set_user_memory_region(slot) }?;
    }
    Ok(())
}

impl Vm {
    /// Creates the VM for `image` with `config`: KVM, memory, tables, boot information.
    pub fn new(image: Image, config: &VmConfig, timings: Arc<Timings>) -> Result<Vm, LaunchError> {
        image.check_fits(config.memory)?;
        let kvm_error = |what: &'static str| move |source| LaunchError::Kvm { what, source };
        let (kvm, vm_fd, arch, mem) = timings.kvm(|| -> Result<_, LaunchError> {
            let kvm = Kvm::new().map_err(LaunchError::NoKvm)?;
            let vm_fd = kvm.create_vm().map_err(kvm_error("cannot create a VM"))?;
            let arch = arch::setup_vm(&kvm, &vm_fd).map_err(kvm_error("cannot set up the VM"))?;
            let mem = GuestMem::new(image.private_size(), config.memory)?;
            register_memory(&vm_fd, &mem, 0).map_err(kvm_error("cannot add guest memory"))?;
            Ok((kvm, vm_fd, arch, mem))
        })?;
        drop(kvm);
        let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        timings.load(|| -> Result<(), LaunchError> {
            image.load(&mem)?;
            arch::write_tables(&mem, config.max_threads);
            let mut args = config.args.clone();
            if args.is_empty() {
                args.push(image.name.clone().into());
            }
            let block = boot::write_args(&mem, &args, &config.env)?;
            let info = boot::boot_info(
                &image,
                &mem,
                block,
                parallelism.min(config.max_threads),
                config.max_threads,
                0,
            );
            boot::write_boot_info(&mem, &info);
            Ok(())
        })?;
        let fs = FileSystem::new(
            config.mounts.clone(),
            config.stdout.clone(),
            config.stderr.clone(),
        );
        let threads = Threads::new(config.max_threads);
        let shared = VmShared::new(image, config, fs, threads, (mem, vm_fd, arch), timings);
        Ok(Vm {
            shared,
            restored: Mutex::new(None),
        })
    }

    /// Makes the KVM VM of a VM to restore into `mem` (memory registered), ahead of
    /// [`Vm::restore`]: an arriving VM's, while its pages arrive, so that it is not made
    /// while the VM is stopped.
    pub fn make_kvm_vm(mem: &GuestMem) -> Result<KvmVm, LaunchError> {
        let kvm_error = |what: &'static str| move |source| LaunchError::Kvm { what, source };
        let kvm = Kvm::new().map_err(LaunchError::NoKvm)?;
        let vm_fd = kvm.create_vm().map_err(kvm_error("cannot create a VM"))?;
        let arch = arch::setup_vm(&kvm, &vm_fd).map_err(kvm_error("cannot set up the VM"))?;
        register_memory(&vm_fd, mem, 0).map_err(kvm_error("cannot add guest memory"))?;
        Ok(KvmVm { vm_fd, arch })
    }

    /// Rebuilds a VM that stopped elsewhere from its saved `state`: `mem` holds all of its
    /// memory already (post-copy: its private region), `fs` its restored file system; `kvm`
    /// from [`Vm::make_kvm_vm`] if it was made ahead (else it is made here). The clock is
    /// re-anchored on this host. Its vCPUs start with [`Vm::run`].
    pub fn restore(
        image: Image,
        config: &VmConfig,
        fs: FileSystem,
        mem: GuestMem,
        state: &VmState,
        kvm: Option<KvmVm>,
    ) -> Result<Vm, LaunchError> {
        state.header.check_native().map_err(LaunchError::BadState)?;
        state
            .check(config.max_threads)
            .map_err(LaunchError::BadState)?;
        let kvm_error = |what: &'static str| move |source| LaunchError::Kvm { what, source };
        let KvmVm { vm_fd, arch } = match kvm {
            Some(made) => made,
            None => Vm::make_kvm_vm(&mem)?,
        };
        let timings = Arc::new(Timings::new(Instant::now()));
        let threads = match Threads::restore(config.max_threads, &state.table) {
            Ok(threads) => threads,
            Err(never) => match never {},
        };
        let shared = VmShared::new(image, config, fs, threads, (mem, vm_fd, arch), timings);
        let mut fresh = Vec::new();
        for index in 0..state.table.vcpus.min(config.max_threads) {
            let vcpu = Vcpu::new(&shared.vm_fd, &shared.arch, index, shared.max_vcpus)
                .map_err(|_| LaunchError::Vcpu)?;
            fresh.push(vcpu);
        }
        let counter_khz = fresh.first().map_or(0, |v| v.counter_khz().unwrap_or(0));
        let clock_args = ClockArgs {
            mem: &shared.mem,
            counter_khz,
        };
        let clock = match GuestClock::restore(clock_args, &state.clock) {
            Ok(clock) => clock,
            Err(never) => match never {},
        };
        let mut vcpus = Vec::new();
        for vcpu in fresh {
            let index = vcpu.index();
            let (vcpu, begin) = match state.threads.iter().find(|p| p.index == index) {
                Some(p) => {
                    let args = VcpuArgs {
                        vcpu,
                        counter: clock.counter(),
                    };
                    let vcpu = Vcpu::restore(args, &p.state)
                        .map_err(kvm_error("cannot restore a vCPU"))?;
                    let begin = Begin::Resume {
                        tid: p.tid,
                        pending: p.pending,
                    };
                    (vcpu, begin)
                }
                None => (vcpu, Begin::Idle),
            };
            vcpus.push((vcpu, begin));
        }
        Ok(Vm {
            shared,
            restored: Mutex::new(Some(vcpus)),
        })
    }

    /// The state the vCPU threads share (to pause or inspect the running VM).
    pub fn shared(&self) -> Arc<VmShared> {
        self.shared.clone()
    }

    /// Runs the guest until it exits, then stops all vCPU threads.
    pub fn run(self) -> Result<Outcome, LaunchError> {
        crate::sys::install_kick_handler();
        let vm = &self.shared;
        let restored = self
            .restored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(vcpus) = restored {
            for (vcpu, begin) in vcpus {
                let idle = matches!(begin, Begin::Idle);
                let mailbox = Arc::new(Mailbox::default());
                let (vm2, mailbox2) = (vm.clone(), mailbox.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("vcpu{}", vcpu.index()))
                    .spawn(move || vcpu_thread(vm2, vcpu, begin, mailbox2))
                    .map_err(|_| LaunchError::Vcpu)?;
                vm.threads.add_restored(mailbox, handle, idle);
            }
        } else {
            let main = ThreadStart {
                tid: MAIN_TID,
                entry: vm.image.entry,
                func: BOOT_INFO_ADDR,
                arg: 0,
                stack_top: vm.mem.shared_end(),
                thread_pointer: 0,
            };
            let tid = vm.spawn(main).map_err(|_| LaunchError::Vcpu)?;
            debug_assert_eq!(tid, MAIN_TID);
        }
        let outcome = {
            let mut slot = vm.outcome.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(outcome) = slot.clone() {
                    break outcome;
                }
                slot = vm.ended.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        stop_vcpu_threads(vm.threads.close());
        Ok(outcome)
    }
}

/// Stops vCPU threads: they see `stopping` at their next exit, which a signal forces.
fn stop_vcpu_threads(handles: Vec<JoinHandle<()>>) {
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
    /// The VM is over.
    VmOver,
}

/// Body of a vCPU's host thread: runs guest threads one after another.
fn vcpu_thread(vm: Arc<VmShared>, mut vcpu: Vcpu, begin: Begin, mailbox: Arc<Mailbox>) {
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
                    record_boot(&vm, &vcpu);
                }
                (start.tid, None)
            }
            Some(Begin::Resume { tid, pending }) => (tid, pending),
            Some(Begin::Idle) | None => match mailbox.wait(|| vm.stopping()) {
                Some(start) => {
                    next = Some(Begin::Start(start));
                    continue;
                }
                None => return,
            },
        };
        match run_thread(&vm, &mut vcpu, tid, pending) {
            ThreadEnd::VmOver => return,
            ThreadEnd::Exited { done } => {
                // Signal the completion word before the thread stops counting as running,
                // so that a pause that sees it gone also sees the word set.
                if done != 0 {
                    // A bad address only loses the notification, which the guest asked for.
                    let _ = vm.mem.with_atomic_u32(done, |word| {
                        word.store(1, Ordering::SeqCst);
                        crate::sys::futex_wake(word, i32::MAX)
                    });
                }
                if vm.threads.exited(tid, &mailbox) {
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
        if pending.is_none() && vm.park_requested() {
            match vm.park_here(vcpu, tid, None) {
                ParkEnd::Leave => return ThreadEnd::VmOver,
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
                        ParkEnd::Resume(again) => {
                            pending = again;
                            continue;
                        }
                    }
                }
                Flow::ThreadExit(done) => return ThreadEnd::Exited { done },
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
