//! AArch64 hypercalls: a 64-bit store to the hypercall's slot in the hypercall page whose
//! value is the address of a [`HypercallBlock`] with the arguments; the VMM writes the result
//! into the block before the vCPU resumes (see `pop_abi::hypercall`).

use pop_abi::Hypercall;
use pop_abi::hypercall::HypercallBlock;

/// Issues hypercall `nr` with five arguments and returns the VMM's result.
#[inline]
pub fn call(nr: Hypercall, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let mut block = HypercallBlock {
        args: [a0, a1, a2, a3, a4],
        result: 0,
    };
    let block_addr = &raw mut block;
    // SAFETY: the store to the (unbacked, device-mapped) hypercall page exits to the VMM,
    // which reads the block, reads or writes guest memory the arguments point at (as the
    // hypercall documents) and writes the block's result; the asm is a full compiler barrier.
    unsafe {
        core::arch::asm!(
            "str {block}, [{slot}]",
            block = in(reg) block_addr,
            slot = in(reg) nr.address(),
            options(nostack),
        );
        core::ptr::read_volatile(&raw const (*block_addr).result)
    }
}

/// Issues [`Hypercall::Migrate`] to `node`, the whole register state carried by the VMM
/// (aarch64 does not use [`pop_abi::hypercall::MIGRATE_AT_CALL`] yet).
pub fn migrate(node: u32) -> i64 {
    call(Hypercall::Migrate, u64::from(node), 0, 0, 0, 0)
}

/// The register frame the exception handlers hand to [`crate::hypercall::fault`].
pub type FaultFrame = pop_abi::Aarch64FaultFrame;

/// A hypercall that must not return did: stop the vCPU for good.
pub fn unreachable_after_hypercall() -> ! {
    loop {
        // SAFETY: udf raises an undefined-instruction exception, which the vectors report.
        unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
    }
}
