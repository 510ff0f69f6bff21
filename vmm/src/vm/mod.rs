//! The virtual machine: KVM setup, guest memory, and the host threads that run its vCPUs
//! until the guest exits.
//!
//! * this module: the VM ([`Vm`]: made, restored, run) and what its vCPU threads share
//!   ([`VmShared`]);
//! * [`vcpu_loop`]: the body of a vCPU's host thread;
//! * [`hypercall`]: serving the guest's requests;
//! * [`pause`]: stopping all vCPUs, or one thread's, for a migration;
//! * [`moves`]: a thread leaving for another node of the VM, or arriving from one;
//! * [`state`]: the saved VM ([`state::VmState`]).

pub mod hypercall;
pub mod moves;
pub mod pause;
pub mod state;
pub mod vcpu_loop;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use pop_abi::layout::BOOT_INFO_ADDR;

use crate::arch::{self, ThreadStart, Vcpu, VcpuArgs, VmArch};
use crate::boot;
use crate::clock::{ClockArgs, GuestClock};
use crate::config::VmConfig;
use crate::error::LaunchError;
use crate::fs::FileSystem;
use crate::hooks::{Hooks, Placement};
use crate::image::Image;
use crate::memory::GuestMem;
use crate::output::Output;
use crate::persist::Persist;
use crate::threads::{MAIN_TID, Mailbox, Threads};
use crate::timings::Timings;
use state::VmState;

pub use crate::outcome::Outcome;
pub use pause::{ParkedVcpu, PauseError, Paused};
pub use vcpu_loop::BACKTRACE_ENV;
use vcpu_loop::{Begin, stop_vcpu_threads, vcpu_thread};

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
    /// How threads are placed and futexes carried out.
    pub hooks: Arc<dyn Hooks>,
    park_target: AtomicU64,
    park: Mutex<pause::Park>,
    parked_cv: Condvar,
    /// Threads blocked in a hypercall here (a futex wait, a sleep, a join).
    blocked: Mutex<std::collections::BTreeSet<u32>>,
}

/// A KVM VM with guest memory registered, made before the VM it will run is restored.
#[derive(Debug)]
pub struct KvmVm {
    vm_fd: VmFd,
    arch: VmArch,
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
            hooks: config.hooks.clone(),
            park_target: AtomicU64::new(0),
            park: Mutex::new(pause::Park::default()),
            parked_cv: Condvar::new(),
            blocked: Mutex::default(),
        })
    }

    /// The threads blocked here in a futex wait, a sleep or a join (for `ps --threads`).
    pub fn blocked_threads(&self) -> Vec<u32> {
        crate::sync::lock(&self.blocked).iter().copied().collect()
    }

    /// Runs `f`, a blocking hypercall of thread `tid`, with the thread counted as blocked.
    pub(crate) fn blocking<T>(&self, tid: u32, f: impl FnOnce() -> T) -> T {
        crate::sync::lock(&self.blocked).insert(tid);
        let r = f();
        crate::sync::lock(&self.blocked).remove(&tid);
        r
    }

    /// Whether the VM is shutting down (vCPU threads stop at their next exit).
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Ends the VM with `outcome` (the first outcome wins).
    pub fn finish(&self, outcome: Outcome) {
        self.timings.mark_exit();
        let mut slot = crate::sync::lock(&self.outcome);
        slot.get_or_insert(outcome);
        self.stopping.store(true, Ordering::Release);
        self.ended.notify_all();
    }

    /// Starts a guest thread on a vCPU, creating the vCPU and its host thread if none is idle.
    /// Where it runs is the hooks' choice ([`Hooks::place_thread`]).
    pub fn spawn(self: &Arc<Self>, mut start: ThreadStart) -> Result<u32, i32> {
        // A thread asked for on another node (`start.node` set) goes there; else where the
        // hooks say.
        if start.node.is_none() {
            match self.hooks.place_thread(&start) {
                Placement::Node(node) => return self.hooks.start_remote(node, start),
                Placement::MoveTo(node) => start.node = Some(node),
                Placement::Here => {}
            }
        }
        if start.node == Some(self.node()) {
            start.node = None;
        }
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
                config.node_id,
            );
            boot::write_boot_info(&mem, &info);
            Ok(())
        })?;
        let scratch = (config.scratch_tmp
            && !config
                .mounts
                .iter()
                .any(|m| m.guest_dir == crate::fs::scratch::GUEST_DIR))
        .then(crate::fs::Scratch::create)
        .transpose()
        .map_err(LaunchError::Scratch)?;
        let fs = FileSystem::new(
            config.mounts.clone(),
            scratch,
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
        boot::write_node_id(&shared.mem, config.node_id);
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
                        counter_slack: 0,
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
        let restored = crate::sync::lock(&self.restored).take();
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
                node: None,
            };
            let tid = vm.spawn(main).map_err(|_| LaunchError::Vcpu)?;
            debug_assert_eq!(tid, MAIN_TID);
        }
        let outcome = {
            let mut slot = crate::sync::lock(&vm.outcome);
            loop {
                if let Some(outcome) = slot.clone() {
                    break outcome;
                }
                slot = crate::sync::wait(&vm.ended, slot);
            }
        };
        stop_vcpu_threads(vm.threads.close());
        Ok(outcome)
    }
}
