//! One AArch64 vCPU: register setup for a new guest thread through KVM's one-reg interface,
//! `KVM_RUN`, and exit decoding. A hypercall's store carries the address of its argument
//! block, so serving it costs no register ioctl; the result goes back into the block.

use std::sync::Arc;

use crate::arch::VcpuArgs;
use crate::persist::Persist;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use pop_abi::hypercall::HypercallBlock;
use pop_abi::layout::{
    HYPERCALL_MMIO_ADDR, HYPERCALL_MMIO_SIZE, PAGE_TABLES_ADDR, exception_stack_top,
};

use super::VmArch;
use super::counter::{self, VmCounter};
use super::fault::{self, Registers};
use super::regs;
use crate::arch::{Crash, Exit, HypercallRequest, ThreadStart};
use crate::memory::GuestMem;

/// Offset of the result in a [`HypercallBlock`].
const RESULT_OFFSET: u64 = std::mem::offset_of!(HypercallBlock, result) as u64;

/// An AArch64 vCPU.
#[derive(Debug)]
pub struct Vcpu {
    pub(super) fd: VcpuFd,
    index: u32,
    /// The argument block of the hypercall being served, where its result goes.
    pending_block: Option<u64>,
    /// The last exit was an MMIO access that KVM completes (PC + 4) on the next `KVM_RUN`.
    mmio_pending: bool,
    /// The VM's counter, which this vCPU shares.
    counter: Arc<VmCounter>,
}

impl Vcpu {
    /// Creates vCPU `index` of `vm`, initialised as KVM's preferred model.
    pub fn new(
        vm: &VmFd,
        arch: &VmArch,
        index: u32,
        _max_vcpus: u32,
    ) -> Result<Vcpu, kvm_ioctls::Error> {
        // Creating a vCPU may reset the VM's counter (Linux before 6.4): it goes on.
        let fd = arch.counter.create(|| {
            let fd = vm.create_vcpu(u64::from(index))?;
            fd.vcpu_init(&arch.vcpu_init)?;
            Ok(fd)
        })?;
        Ok(Vcpu {
            fd,
            index,
            pending_block: None,
            mmio_pending: false,
            counter: Arc::clone(&arch.counter),
        })
    }

    /// Completes what the last exit left pending before the state is saved: KVM steps the PC
    /// past the MMIO store of a hypercall on the next `KVM_RUN`, which this makes without
    /// running the guest.
    pub fn complete_pending(&mut self) -> Result<(), kvm_ioctls::Error> {
        self.complete_pending_mmio()
    }

    /// The state of the thread on this vCPU, stopped at a call boundary of its own: as
    /// [`Persist::save`] (every register is read: the aarch64 libos keeps no caller-saved
    /// shortcut).
    pub fn save_at_call(&mut self, _counter: u64) -> Result<super::VcpuState, kvm_ioctls::Error> {
        self.complete_pending_mmio()?;
        self.save()
    }

    /// Index of the vCPU.
    pub fn index(&self) -> u32 {
        self.index
    }

    fn set(&self, id: u64, value: u64) -> Result<(), kvm_ioctls::Error> {
        regs::set(&self.fd, id, value)
    }

    fn get(&self, id: u64) -> Result<u64, kvm_ioctls::Error> {
        regs::get(&self.fd, id)
    }

    /// Sets the registers for a new thread: the MMU and FP/SIMD on, EL1 on `SP_EL0` at the
    /// entry with its two arguments, the exception stack, and the thread pointer.
    pub fn start_thread(&mut self, start: &ThreadStart) -> Result<(), kvm_ioctls::Error> {
        self.pending_block = None;
        self.complete_pending_mmio()?;
        for (id, value) in [
            (regs::MAIR_EL1, regs::MAIR_VALUE),
            (regs::TCR_EL1, regs::TCR_VALUE),
            (regs::TTBR0_EL1, PAGE_TABLES_ADDR),
            (regs::CPACR_EL1, regs::CPACR_VALUE),
            (regs::SCTLR_EL1, regs::SCTLR_VALUE),
            (regs::TPIDR_EL0, start.thread_pointer),
            (regs::x(0), start.func),
            (regs::x(1), start.arg),
            (regs::x(29), 0),
            (regs::x(30), 0),
            (regs::SP_EL0, start.stack_top),
            (regs::SP_EL1, exception_stack_top(self.index)),
            (regs::PSTATE, regs::PSTATE_EL1T_MASKED),
            (regs::PC, start.entry),
        ] {
            self.set(id, value)?;
        }
        Ok(())
    }

    /// Lets KVM finish the MMIO exit the vCPU stopped on (it steps the PC past the store on
    /// the next `KVM_RUN`), without running the guest. Needed before the vCPU gets new
    /// registers, e.g. a new thread after `thread_exit`: otherwise KVM would step the new
    /// thread's first instruction instead.
    fn complete_pending_mmio(&mut self) -> Result<(), kvm_ioctls::Error> {
        if !std::mem::take(&mut self.mmio_pending) {
            return Ok(());
        }
        self.fd.set_kvm_immediate_exit(1);
        let result = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        };
        self.fd.set_kvm_immediate_exit(0);
        result
    }

    /// Runs the vCPU until the guest needs the VMM; a hypercall's arguments are read from its
    /// argument block in `mem`.
    pub fn run(&mut self, mem: &GuestMem) -> Result<Exit, kvm_ioctls::Error> {
        // The last hypercall was answered: running on, its block is the guest's again.
        self.pending_block = None;
        let result = self.fd.run();
        self.mmio_pending = matches!(
            result,
            Ok(VcpuExit::MmioWrite(..)) | Ok(VcpuExit::MmioRead(..))
        );
        let exit = match result {
            Ok(VcpuExit::MmioWrite(addr, data)) if is_hypercall_page(addr) => {
                let mut bytes = [0u8; 8];
                let n = data.len().min(8);
                bytes[..n].copy_from_slice(&data[..n]);
                Ok(u64::from_le_bytes(bytes)).map(|block| (addr, block))
            }
            Ok(VcpuExit::MmioWrite(addr, _)) => Err((
                "write to unbacked guest physical memory",
                Some(format!("address {addr:#x}")),
            )),
            Ok(VcpuExit::MmioRead(addr, _)) => Err((
                "read from unbacked guest physical memory",
                Some(format!("address {addr:#x}")),
            )),
            Ok(VcpuExit::SystemEvent(kind, _)) => Err((
                "system event (PSCI power off or reset)",
                Some(format!("type {kind}")),
            )),
            Ok(VcpuExit::FailEntry(reason, _)) => Err((
                "VM entry failed",
                Some(format!("hardware reason {reason:#x}")),
            )),
            Ok(VcpuExit::InternalError) => Err(("KVM internal error", None)),
            Ok(VcpuExit::Intr) => return Ok(Exit::Interrupted),
            Ok(other) => Err(("unexpected VM exit", Some(format!("{other:?}")))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(Exit::Interrupted);
            }
            Err(e) => return Err(e),
        };
        match exit {
            Ok((addr, block)) => match mem.read(block, std::mem::size_of::<HypercallBlock>()) {
                Ok(raw) => {
                    let arg = |i: usize| {
                        u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
                    };
                    self.pending_block = Some(block);
                    Ok(Exit::Hypercall(HypercallRequest {
                        nr: ((addr - HYPERCALL_MMIO_ADDR) / 8) as u16,
                        args: [arg(0), arg(1), arg(2), arg(3), arg(4)],
                    }))
                }
                Err(_) => Ok(Exit::Crash(Box::new(self.crash_here(
                    "hypercall with a bad argument block",
                    Some(format!("block at {block:#x} is outside guest memory")),
                )))),
            },
            Err((what, detail)) => Ok(Exit::Crash(Box::new(self.crash_here(what, detail)))),
        }
    }

    /// Answers the hypercall the vCPU stopped on (in its argument block); a later answer
    /// before the vCPU runs again replaces it (a move that failed after the guest was told 0).
    pub fn set_hypercall_result(&mut self, mem: &GuestMem, value: i64) {
        if let Some(block) = self.pending_block {
            // The block was readable when the hypercall came in; it still is.
            let _ = mem.write_u64(block + RESULT_OFFSET, value as u64);
        }
    }

    /// Sets the thread pointer (`TPIDR_EL0`) of the thread running on this vCPU.
    pub fn set_thread_pointer(&mut self, tp: u64) -> Result<(), kvm_ioctls::Error> {
        self.set(regs::TPIDR_EL0, tp)
    }

    /// The guest's virtual counter now.
    pub fn read_counter(&self) -> Result<u64, kvm_ioctls::Error> {
        self.get(regs::TIMER_CNT)
    }

    /// Frequency of the guest's counter in kHz: the host's, which KVM does not change.
    pub fn counter_khz(&self) -> Result<u64, kvm_ioctls::Error> {
        Ok(counter::counter_hz() / 1000)
    }

    /// The crash the libos reported with the fault frame at `frame_addr`.
    pub fn crash_from_fault_frame(&self, mem: &GuestMem, frame_addr: u64) -> Crash {
        match fault::read_frame(mem, frame_addr) {
            Ok(frame) => fault::crash_from_frame(&frame),
            Err(_) => self.crash_here(
                "fault reported with a bad frame pointer",
                Some(format!("frame at {frame_addr:#x} is outside guest memory")),
            ),
        }
    }

    /// A crash at the vCPU's current state.
    pub fn crash_here(&self, what: &str, detail: Option<String>) -> Crash {
        let mut x = [0u64; 31];
        for (n, value) in x.iter_mut().enumerate() {
            *value = self.get(regs::x(n as u64)).unwrap_or(0);
        }
        let regs = Registers {
            x,
            sp: self.get(regs::SP_EL0).unwrap_or(0),
            pc: self.get(regs::PC).unwrap_or(0),
            pstate: self.get(regs::PSTATE).unwrap_or(0),
            esr_far: None,
        };
        fault::crash_from_registers(what.to_string(), detail, &regs)
    }
}

/// Whether a store to `addr` is a hypercall (see [`pop_abi::hypercall`]).
fn is_hypercall_page(addr: u64) -> bool {
    (HYPERCALL_MMIO_ADDR..HYPERCALL_MMIO_ADDR + HYPERCALL_MMIO_SIZE).contains(&addr)
}

impl Persist for Vcpu {
    type State = super::VcpuState;
    type Args<'a> = VcpuArgs;
    type Error = kvm_ioctls::Error;

    /// The whole state. Call [`Vcpu::complete_pending`] first (KVM asks for it).
    fn save(&self) -> Result<super::VcpuState, kvm_ioctls::Error> {
        super::VcpuState::save(&self.fd, self.pending_block)
    }

    /// Puts the state on `args.vcpu`; the VM's counter goes on from `args.counter` if it is
    /// behind the state's (it is one per VM here, so `counter_slack` does not apply).
    fn restore(args: VcpuArgs, state: &super::VcpuState) -> Result<Vcpu, kvm_ioctls::Error> {
        let mut vcpu = args.vcpu;
        // A store the vCPU's last thread left pending would step the restored PC.
        vcpu.complete_pending_mmio()?;
        state.restore(&vcpu.fd, &vcpu.counter, args.counter)?;
        vcpu.pending_block = state.block;
        Ok(vcpu)
    }
}
