//! Holds what an aligned pair cannot carry across ISAs, so that `cargo pop verify` has
//! something to refuse: a static std `HashMap`, an async fn that keeps a `HashSet` across
//! an await, a type whose fields depend on `cfg(target_arch)`, and one that is a 128-bit
//! atomic where the target has those. It runs like any program on either ISA.

#![cfg_attr(target_has_atomic = "128", feature(integer_atomics))]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

/// A table in a static: std's HashMap.
static TABLE: Mutex<Option<HashMap<u32, u32>>> = Mutex::new(None);

/// A static of one type whose value depends on the ISA: each image keeps its own.
static ISA_ID: u32 = if cfg!(target_arch = "x86_64") { 86 } else { 64 };

/// A type whose layout depends on the ISA.
pub struct PerIsa {
    /// On both.
    pub common: u64,
    /// On x86-64 only.
    #[cfg(target_arch = "x86_64")]
    pub x86_only: [u8; 24],
    /// On aarch64 only.
    #[cfg(target_arch = "aarch64")]
    pub arm_only: u16,
}

/// A counter that is a native 128-bit atomic where the target has one.
pub struct Wide {
    /// The count.
    #[cfg(target_has_atomic = "128")]
    pub count: std::sync::atomic::AtomicU128,
    /// The count, under a lock elsewhere.
    #[cfg(not(target_has_atomic = "128"))]
    pub count: Mutex<u128>,
}

impl Wide {
    fn add(&self, n: u128) -> u128 {
        #[cfg(target_has_atomic = "128")]
        {
            self.count.fetch_add(n, std::sync::atomic::Ordering::SeqCst) + n
        }
        #[cfg(not(target_has_atomic = "128"))]
        {
            let mut c = self.count.lock().unwrap();
            *c += n;
            *c
        }
    }
}

/// Yields once.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Keeps a HashSet in its state across an await.
async fn keeps(set: HashSet<u8>) -> usize {
    YieldNow(false).await;
    set.len()
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn main() {
    TABLE
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(1, 2);
    let per_isa = PerIsa {
        common: 7,
        #[cfg(target_arch = "x86_64")]
        x86_only: [0; 24],
        #[cfg(target_arch = "aarch64")]
        arm_only: 0,
    };
    let wide = Wide {
        #[cfg(target_has_atomic = "128")]
        count: std::sync::atomic::AtomicU128::new(0),
        #[cfg(not(target_has_atomic = "128"))]
        count: Mutex::new(0),
    };
    let n = block_on(keeps((0..5).collect()));
    let isa = std::hint::black_box(&ISA_ID);
    assert!(*isa == 86 || *isa == 64);
    let table = TABLE.lock().unwrap().as_ref().map_or(0, HashMap::len);
    println!(
        "hazards: {} {} {} {}",
        std::hint::black_box(&per_isa).common,
        wide.add(3),
        n,
        table
    );
}
