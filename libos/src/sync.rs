//! A mutex for the libos's own shared state (heap, thread registry) that spins briefly and
//! then blocks its vCPU in the VMM through a futex, so a vCPU preempted by the host while
//! holding it does not make the others burn their time slices.

use core::sync::atomic::{AtomicU32, Ordering};

use pop_abi::Hypercall;
use pop_abi::hypercall::NO_TIMEOUT;

use crate::arch;

const UNLOCKED: u32 = 0;
const LOCKED: u32 = 1;
const CONTENDED: u32 = 2;
const SPINS: u32 = 100;

/// The raw lock, usable with `lock_api`.
pub struct FutexRawMutex {
    state: AtomicU32,
}

/// A mutex guarding `T` with [`FutexRawMutex`].
pub type Mutex<T> = lock_api::Mutex<FutexRawMutex, T>;

/// Blocks while `*word == expected` (or until a wake-up).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) -> i64 {
    arch::hypercall::call(
        Hypercall::FutexWait,
        word.as_ptr() as u64,
        u64::from(expected),
        timeout_ns,
        0,
        0,
    )
}

/// Wakes up to `count` waiters on `word`.
pub fn futex_wake(word: &AtomicU32, count: i32) -> i64 {
    arch::hypercall::call(
        Hypercall::FutexWake,
        word.as_ptr() as u64,
        count as u64,
        0,
        0,
        0,
    )
}

// SAFETY: the state machine below gives mutual exclusion: only the thread that moves the
// state away from UNLOCKED owns the lock, and unlock always returns it to UNLOCKED.
unsafe impl lock_api::RawMutex for FutexRawMutex {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = FutexRawMutex {
        state: AtomicU32::new(UNLOCKED),
    };
    type GuardMarker = lock_api::GuardSend;

    fn lock(&self) {
        if self.try_lock() {
            return;
        }
        for _ in 0..SPINS {
            arch::spin_hint();
            if self.state.load(Ordering::Relaxed) == UNLOCKED && self.try_lock() {
                return;
            }
        }
        while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
            futex_wait(&self.state, CONTENDED, NO_TIMEOUT);
        }
    }

    fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    unsafe fn unlock(&self) {
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_wake(&self.state, 1);
        }
    }
}
