//! The virtual machine: KVM setup, guest memory, and the host threads that run its vCPUs
//! until the guest exits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use pop_abi::layout::BOOT_INFO_ADDR;

use crate::arch::{self, Exit, ThreadStart, Vcpu, VmArch};
use crate::boot;
use crate::config::VmConfig;
use crate::fault;
use crate::fs::FileSystem;
use crate::hypercall::{self, Flow};
use crate::image::Image;
use crate::launch::LaunchError;
use crate::memory::GuestMem;
use crate::output::Output;
use crate::threads::{MAIN_TID, Mailbox, Threads};
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
}

impl Outcome {
    /// The exit status `popvmm` ends with.
    pub fn status(&self) -> i32 {
        match self {
            Outcome::Exit(status) => *status,
            Outcome::Abort => pop_abi::EXIT_ABORT,
            Outcome::Fault => pop_abi::EXIT_FAULT,
            Outcome::Error(_) => crate::launch::EXIT_VMM_ERROR,
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
}

impl VmShared {
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
                .spawn(move || vcpu_thread(vm2, vcpu, start, mailbox))
                .map_err(|_| ())
        })
    }
}

/// A VM ready to run.
#[derive(Debug)]
pub struct Vm {
    shared: Arc<VmShared>,
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
            for region in mem.regions() {
                let slot = kvm_userspace_memory_region {
                    slot: region.slot,
                    flags: 0,
                    guest_phys_addr: region.guest_addr,
                    memory_size: region.size,
                    userspace_addr: region.host_addr,
                };
                // SAFETY: the region is a live mapping of `region.size` bytes owned by `mem`,
                // which the VM keeps (in `VmShared`) for as long as the VM fd exists.
                unsafe { vm_fd.set_user_memory_region(slot) }
                    .map_err(kvm_error("cannot add guest memory"))?;
            }
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
        let shared = Arc::new(VmShared {
            fs: FileSystem::new(
                config.mounts.clone(),
                config.stdout.clone(),
                config.stderr.clone(),
            ),
            threads: Threads::new(config.max_threads),
            reports: config.stderr.clone(),
            max_vcpus: config.max_threads,
            mem,
            vm_fd,
            arch,
            image,
            timings,
            stopping: AtomicBool::new(false),
            crashed: AtomicBool::new(false),
            outcome: Mutex::new(None),
            ended: Condvar::new(),
        });
        Ok(Vm { shared })
    }

    /// Runs the guest until it exits, then stops all vCPU threads.
    pub fn run(self) -> Result<Outcome, LaunchError> {
        crate::sys::install_kick_handler();
        let vm = &self.shared;
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
fn vcpu_thread(vm: Arc<VmShared>, mut vcpu: Vcpu, first: ThreadStart, mailbox: Arc<Mailbox>) {
    let mut next = Some(first);
    while let Some(start) = next.take() {
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
        match run_thread(&vm, &mut vcpu, start.tid) {
            ThreadEnd::VmOver => return,
            ThreadEnd::Exited { done } => {
                if vm.threads.exited(start.tid, &mailbox) {
                    vm.finish(Outcome::Exit(0));
                }
                if done != 0 {
                    // A bad address only loses the notification, which the guest asked for.
                    let _ = vm.mem.with_atomic_u32(done, |word| {
                        word.store(1, Ordering::SeqCst);
                        crate::sys::futex_wake(word, i32::MAX)
                    });
                }
                next = mailbox.wait(|| vm.stopping());
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

/// Runs one guest thread until it exits or the VM ends.
fn run_thread(vm: &Arc<VmShared>, vcpu: &mut Vcpu, tid: u32) -> ThreadEnd {
    loop {
        if vm.stopping() {
            return ThreadEnd::VmOver;
        }
        let crash = match vcpu.run(&vm.mem) {
            Ok(Exit::Hypercall(request)) => match hypercall::handle(vm, request, tid) {
                Flow::Return(value) => {
                    vcpu.set_hypercall_result(&vm.mem, value);
                    continue;
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
