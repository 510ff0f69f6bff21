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

/// How long a waiter spins before it blocks in the VMM, in nanoseconds. Blocking costs a
/// hypercall to wait and one to be woken (tens of microseconds under software-virtualised
/// KVM), so a partner that answers within this time is cheaper to spin for.
const SPIN_NS: u64 = 20_000;

/// Number of waiter counters; futex words hash onto them.
const WAITER_SLOTS: usize = 256;

/// How many vCPUs are blocked (or about to block) in the VMM on futex words hashing to each
/// slot. A wake with no waiter on its slot needs no hypercall. Collisions only cost a
/// needless wake.
static WAITERS: [AtomicU32; WAITER_SLOTS] = [const { AtomicU32::new(0) }; WAITER_SLOTS];

fn waiters(word: &AtomicU32) -> &'static AtomicU32 {
    let addr = word.as_ptr() as usize;
    &WAITERS[(addr >> 2) % WAITER_SLOTS]
}

/// Blocks while `*word == expected`, at most `timeout_ns` ([`NO_TIMEOUT`]: forever). Returns
/// 0 (woken, or the word changed), `-EAGAIN` or `-ETIMEDOUT`, like the hypercall.
///
/// It first spins for up to [`SPIN_NS`] watching the word, then announces itself in the
/// waiter counters and blocks in the VMM. A waker either sees the announcement (and issues the
/// wake hypercall) or stored the new value before it, which the VMM's compare then sees: the
/// announcement and the waker's check are both sequentially consistent (Dekker's pattern).
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) -> i64 {
    let start = crate::time::since_boot_ns();
    let spin = SPIN_NS.min(timeout_ns);
    while word.load(Ordering::Acquire) == expected {
        if crate::time::since_boot_ns() - start >= spin {
            let count = waiters(word);
            count.fetch_add(1, Ordering::SeqCst);
            let ret = crate::hypercall::call(
                Hypercall::FutexWait,
                word.as_ptr() as u64,
                u64::from(expected),
                if timeout_ns == NO_TIMEOUT {
                    NO_TIMEOUT
                } else {
                    timeout_ns - spin
                },
                0,
                0,
            );
            count.fetch_sub(1, Ordering::SeqCst);
            return ret;
        }
        arch::spin_hint();
    }
    0
}

/// Wakes up to `count` waiters on `word`; returns how many were woken (0 without a hypercall
/// when nobody waits on the word's slot).
pub fn futex_wake(word: &AtomicU32, count: i32) -> i64 {
    core::sync::atomic::fence(Ordering::SeqCst);
    if waiters(word).load(Ordering::SeqCst) == 0 {
        return 0;
    }
    crate::hypercall::call(
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
