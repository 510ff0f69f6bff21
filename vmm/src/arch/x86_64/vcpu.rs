//! One x86-64 vCPU: long-mode register setup for a new guest thread, `KVM_RUN`, and exit
//! decoding. Hypercall arguments and results travel through KVM's synchronized registers in
//! the shared `kvm_run` page, so answering a hypercall costs no ioctl besides `KVM_RUN`.

use crate::arch::VcpuArgs;
use crate::persist::Persist;
use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, VmFd};
use pop_abi::layout::gdt::{USER_CODE_SELECTOR, USER_DATA_SELECTOR, tss_selector};
use pop_abi::layout::{
    HYPERCALL_MMIO_ADDR, HYPERCALL_MMIO_SIZE, IDT_ADDR, IDT_SIZE, PAGE_TABLES_ADDR, percpu_area,
    percpu_data,
};

use super::state::{Known, VcpuState};
use super::{VmArch, cpuid, fault, gdt};
use crate::arch::{Crash, Exit, HypercallRequest, ThreadStart};
use crate::memory::GuestMem;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// `IA32_TIME_STAMP_COUNTER`.
const MSR_TSC: u32 = 0x10;
/// Initial RFLAGS: only the always-one bit.
const RFLAGS_RESERVED: u64 = 0x2;

/// An x86-64 vCPU and the state a new guest thread starts from.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
    sregs: kvm_sregs,
    /// What the vCPU holds, as far as that is known without asking KVM.
    known: Known,
}

/// What `KVM_RUN` returned, copied out of the borrowed exit so that registers can be read.
enum RawExit {
    Out(u16),
    In(u16),
    Mmio(u64, bool),
    Hlt,
    Shutdown,
    FailEntry(u64),
    InternalError(String),
    Interrupted,
    Other(String),
}

impl Vcpu {
    /// Creates vCPU `index` of `vm`, with its CPUID and the long-mode system registers that
    /// every thread on it starts with.
    pub fn new(
        vm: &VmFd,
        arch: &VmArch,
        index: u32,
        max_vcpus: u32,
    ) -> Result<Vcpu, kvm_ioctls::Error> {
        let mut fd = vm.create_vcpu(u64::from(index))?;
        fd.set_cpuid2(&cpuid::for_vcpu(&arch.supported_cpuid, index))?;
        VcpuState::sync_at_exits(&mut fd);
        let sregs = long_mode_sregs(fd.get_sregs()?, index, max_vcpus);
        Ok(Vcpu {
            fd,
            index,
            sregs,
            known: Known::default(),
        })
    }

    /// Completes what the last exit left pending (the MMIO store of a hypercall) without
    /// running the guest, as KVM's documentation asks before the state is saved, and has the
    /// registers that [`Persist::save`] reads stored on the way (see [`VcpuState::sync_out`]).
    pub fn complete_pending(&mut self) -> Result<(), kvm_ioctls::Error> {
        VcpuState::sync_out(&mut self.fd)?;
        self.known.sregs = Some(self.fd.sync_regs().sregs);
        Ok(())
    }

    /// The state of the thread on this vCPU, which stopped at a call boundary of its own
    /// with its counter at `counter` ([`pop_abi::hypercall::MIGRATE_AT_CALL`]): what its
    /// exit stored, without completing it (a store has nothing left to complete) and,
    /// once this vCPU's MSRs are known, without an ioctl.
    pub fn save_at_call(&mut self, counter: u64) -> Result<VcpuState, kvm_ioctls::Error> {
        let msrs = match &self.known.msrs {
            Some(msrs) => msrs.clone(),
            None => {
                let msrs = VcpuState::read_msrs(&self.fd)?;
                self.known.msrs = Some(msrs.clone());
                msrs
            }
        };
        Ok(VcpuState::at_call(&self.fd, counter, msrs))
    }

    /// Index of the vCPU.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Sets all registers for a new thread: fresh general, system and FPU registers.
    pub fn start_thread(&mut self, start: &ThreadStart) -> Result<(), kvm_ioctls::Error> {
        let mut sregs = self.sregs;
        sregs.fs.base = start.thread_pointer;
        self.known.sregs = None;
        self.fd.set_sregs(&sregs)?;
        let regs = kvm_regs {
            rip: start.entry,
            rsp: start.stack_top,
            rdi: start.func,
            rsi: start.arg,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        };
        // Registers set here must not be overwritten by stale synchronized ones.
        self.fd.clear_sync_dirty_reg(SyncReg::Register);
        self.fd.set_regs(&regs)?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu)
    }

    /// Runs the vCPU until the guest needs the VMM. (`_mem` is for the architectures whose
    /// hypercalls pass their arguments in memory.)
    pub fn run(&mut self, _mem: &GuestMem) -> Result<Exit, kvm_ioctls::Error> {
        self.known.sregs = None;
        let raw = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, _)) => RawExit::Out(port),
            Ok(VcpuExit::IoIn(port, _)) => RawExit::In(port),
            Ok(VcpuExit::MmioRead(addr, _)) => RawExit::Mmio(addr, false),
            Ok(VcpuExit::MmioWrite(addr, _)) => RawExit::Mmio(addr, true),
            Ok(VcpuExit::Hlt) => RawExit::Hlt,
            Ok(VcpuExit::Shutdown) => RawExit::Shutdown,
            Ok(VcpuExit::FailEntry(reason, _)) => RawExit::FailEntry(reason),
            Ok(VcpuExit::InternalError) => RawExit::InternalError(self.internal_error()),
            Ok(VcpuExit::Intr) => RawExit::Interrupted,
            Ok(other) => RawExit::Other(format!("{other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => RawExit::Interrupted,
            Err(e) => return Err(e),
        };
        // Stored at the exit (see `VcpuState::sync_at_exits`).
        self.known.sregs = Some(self.fd.sync_regs().sregs);
        let crash = |what: &str, detail: Option<String>| {
            Ok(Exit::Crash(Box::new(self.crash_here(what, detail))))
        };
        match raw {
            RawExit::Mmio(addr, true) if is_hypercall_page(addr) => {
                let r = &self.fd.sync_regs().regs;
                Ok(Exit::Hypercall(HypercallRequest {
                    nr: ((addr - HYPERCALL_MMIO_ADDR) / 8) as u16,
                    args: [r.rdi, r.rsi, r.rdx, r.r10, r.r8],
                }))
            }
            RawExit::Out(port) => crash("write to I/O port", Some(format!("port {port:#x}"))),
            RawExit::In(port) => crash("read from I/O port", Some(format!("port {port:#x}"))),
            RawExit::Mmio(addr, write) => crash(
                if write {
                    "write to unbacked guest physical memory"
                } else {
                    "read from unbacked guest physical memory"
                },
                Some(format!("address {addr:#x}")),
            ),
            RawExit::Hlt => crash("hlt with interrupts off (the vCPU can never wake)", None),
            RawExit::Shutdown => crash(
                "triple fault (an exception the guest could not handle)",
                None,
            ),
            RawExit::FailEntry(reason) => crash(
                "VM entry failed",
                Some(format!("hardware reason {reason:#x}")),
            ),
            RawExit::InternalError(what) => crash("KVM internal error", Some(what)),
            RawExit::Interrupted => Ok(Exit::Interrupted),
            RawExit::Other(what) => crash("unexpected VM exit", Some(what)),
        }
    }

    /// Describes the `KVM_EXIT_INTERNAL_ERROR` the vCPU stopped with.
    fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which KVM fills the
        // `internal` member of the exit union; it is plain integers.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            1 => "instruction emulation failed",
            2 => "exception while delivering an exception",
            3 => "cannot deliver an event",
            4 => "unexpected exit",
            _ => "unknown suberror",
        };
        let n = (internal.ndata as usize).min(internal.data.len());
        format!(
            "{what} (suberror {}, data {:x?})",
            internal.suberror,
            &internal.data[..n]
        )
    }

    /// Sets the thread pointer (`FS.base`) of the thread running on this vCPU.
    pub fn set_thread_pointer(&mut self, tp: u64) -> Result<(), kvm_ioctls::Error> {
        let mut sregs = self.fd.get_sregs()?;
        sregs.fs.base = tp;
        self.known.sregs = None;
        self.fd.set_sregs(&sregs)
    }

    /// Answers the hypercall the vCPU stopped on (in `rax`).
    pub fn set_hypercall_result(&mut self, _mem: &GuestMem, value: i64) {
        self.fd.sync_regs_mut().regs.rax = value as u64;
        self.fd.set_sync_dirty_reg(SyncReg::Register);
    }

    /// The guest's counter (TSC) now.
    pub fn read_counter(&self) -> Result<u64, kvm_ioctls::Error> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_TSC,
            ..Default::default()
        }])
        .expect("one MSR fits");
        self.fd.get_msrs(&mut msrs)?;
        Ok(msrs.as_slice()[0].data)
    }

    /// Frequency of the guest's counter in kHz.
    pub fn counter_khz(&self) -> Result<u64, kvm_ioctls::Error> {
        self.fd.get_tsc_khz().map(u64::from)
    }

    /// The crash the libos reported with the fault frame at `frame_addr`.
    pub fn crash_from_fault_frame(&self, mem: &GuestMem, frame_addr: u64) -> Crash {
        match fault::read_frame(mem, frame_addr) {
            Ok(frame) => {
                let cr2 = self.fd.get_sregs().map(|s| s.cr2).unwrap_or(0);
                fault::crash_from_frame(&frame, cr2)
            }
            Err(_) => self.crash_here(
                "fault reported with a bad frame pointer",
                Some(format!("frame at {frame_addr:#x} is outside guest memory")),
            ),
        }
    }

    /// A crash at the vCPU's current state.
    pub fn crash_here(&self, what: &str, detail: Option<String>) -> Crash {
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        fault::crash_from_kvm(what.to_string(), detail, &regs, &sregs)
    }
}

/// Whether a store to `addr` is a hypercall (see [`pop_abi::hypercall`]).
fn is_hypercall_page(addr: u64) -> bool {
    (HYPERCALL_MMIO_ADDR..HYPERCALL_MMIO_ADDR + HYPERCALL_MMIO_SIZE).contains(&addr)
}

/// System registers for 64-bit long mode with paging, on vCPU `index`, running in ring 3:
/// hardware-assisted KVM runs ring 0 natively too, but software-virtualised KVM (PVM) only
/// runs guest user mode natively and emulates ring 0 instruction by instruction.
fn long_mode_sregs(mut sregs: kvm_sregs, index: u32, max_vcpus: u32) -> kvm_sregs {
    let flat = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 3,
        db,
        s: 1,
        l,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(USER_CODE_SELECTOR, 0xb, 1, 0);
    let data = flat(USER_DATA_SELECTOR, 0x3, 0, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.ss = data;
    sregs.fs = data;
    sregs.gs = kvm_segment {
        base: percpu_data(index),
        ..data
    };
    sregs.tr = kvm_segment {
        base: percpu_area(index),
        limit: gdt::TSS_SIZE as u32 - 1,
        selector: tss_selector(index),
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.gdt.base = pop_abi::layout::GDT_ADDR;
    sregs.gdt.limit = gdt::gdt_limit(max_vcpus);
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = (IDT_SIZE - 1) as u16;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PAGE_TABLES_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.efer = EFER_LME | EFER_LMA;
    sregs
}

impl Persist for Vcpu {
    type State = VcpuState;
    type Args<'a> = VcpuArgs;
    type Error = kvm_ioctls::Error;

    /// The whole state. Call [`Vcpu::complete_pending`] first (KVM asks for it).
    fn save(&self) -> Result<VcpuState, kvm_ioctls::Error> {
        VcpuState::save(&self.fd)
    }

    fn restore(args: VcpuArgs, state: &VcpuState) -> Result<Vcpu, kvm_ioctls::Error> {
        let mut vcpu = args.vcpu;
        // The restore ends with KVM storing the restored registers in the `kvm_run` page,
        // where a hypercall result is written into them.
        state.restore(
            &mut vcpu.fd,
            args.counter,
            args.counter_slack,
            &mut vcpu.known,
        )?;
        Ok(vcpu)
    }
}
