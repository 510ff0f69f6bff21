//! Threads. A thread is a vCPU (DESIGN.md, decision 2): the libos allocates the stack and the
//! TLS block in application memory and asks the VMM to start a vCPU on them. When the thread
//! ends, the VMM sets the thread's completion word (after the vCPU has left the thread's
//! stack for good) and wakes it, so a join is a futex wait on that word: it spins briefly, then
//! blocks in the VMM. The registry remembers each thread's allocations so they can be freed
//! once the thread has exited: at `join`, or for threads nobody joins (std detaches them by
//! dropping the handle), at the next spawn.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use pop_abi::Hypercall;
use pop_abi::hypercall::NO_TIMEOUT;

use crate::heap;
use crate::hypercall;
use crate::sync::{self, Mutex};
use crate::tls::{self, TlsBlock};

/// Smallest stack a thread gets.
const MIN_STACK: usize = 64 * 1024;
/// Stack alignment.
const STACK_ALIGN: usize = 16;

/// A started thread's resources.
struct ThreadRecord {
    tid: u32,
    stack: *mut u8,
    stack_size: usize,
    _tls: TlsBlock,
    /// The thread's completion word (in its `Start`), set to 1 by the VMM once it has exited.
    done: *const AtomicU32,
    /// A joiner is waiting on `done`: the reaper must leave the record alone.
    joining: bool,
}

// SAFETY: the records only hold addresses of heap memory owned by the registry.
unsafe impl Send for ThreadRecord {}

/// What the new thread's entry receives (allocated on the heap, freed by the thread).
struct Start {
    func: extern "C" fn(usize),
    arg: usize,
    done: AtomicU32,
}

static REGISTRY: Mutex<Vec<ThreadRecord>> = Mutex::new(Vec::new());

/// Starts `func(arg)` on a new vCPU with a stack of at least `stack_size` bytes.
/// Returns the thread id, or a negated errno.
pub fn spawn(func: extern "C" fn(usize), arg: usize, stack_size: usize) -> Result<u32, i32> {
    reap_finished();
    let stack_size = stack_size.max(MIN_STACK).next_multiple_of(STACK_ALIGN);
    let tls = tls::new_block().ok_or(pop_abi::errno::ENOMEM)?;
    let stack = heap::alloc(stack_size, STACK_ALIGN, false);
    if stack.is_null() {
        return Err(pop_abi::errno::ENOMEM);
    }
    let start = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(Start {
        func,
        arg,
        done: AtomicU32::new(0),
    }));
    let stack_top = crate::arch::thread_stack_pointer(stack as u64 + stack_size as u64);
    let mut registry = REGISTRY.lock();
    let tid = hypercall::call(
        Hypercall::Spawn,
        thread_entry as *const () as u64,
        start as u64,
        0,
        stack_top,
        tls.thread_pointer,
    );
    if tid <= 0 {
        drop(registry);
        // SAFETY: the thread did not start, so we still own everything.
        unsafe {
            drop(alloc::boxed::Box::from_raw(start));
            heap::free(stack, stack_size, STACK_ALIGN);
        }
        return Err(if tid == 0 {
            pop_abi::errno::EAGAIN
        } else {
            (-tid) as i32
        });
    }
    registry.push(ThreadRecord {
        tid: tid as u32,
        stack,
        stack_size,
        _tls: tls,
        // SAFETY: `start` stays allocated until `release` frees it.
        done: unsafe { &raw const (*start).done },
        joining: false,
    });
    Ok(tid as u32)
}

/// Blocks until thread `tid` has exited, then frees its stack and TLS.
pub fn join(tid: u32) -> i32 {
    let done = {
        let mut registry = REGISTRY.lock();
        match registry.iter_mut().find(|r| r.tid == tid) {
            Some(record) => {
                record.joining = true;
                record.done
            }
            // Not ours (or already reaped): the VMM knows whether it exists.
            None => {
                drop(registry);
                return hypercall::call(Hypercall::Join, u64::from(tid), 0, 0, 0, 0) as i32;
            }
        }
    };
    // SAFETY: `joining` keeps the reaper from freeing the word while we wait on it.
    let done = unsafe { &*done };
    while done.load(Ordering::Acquire) == 0 {
        sync::futex_wait(done, 0, NO_TIMEOUT);
    }
    let mut registry = REGISTRY.lock();
    if let Some(i) = registry.iter().position(|r| r.tid == tid) {
        let record = registry.swap_remove(i);
        drop(registry);
        release(record);
    }
    0
}

/// Frees the resources of threads that have exited and that nobody is joining.
fn reap_finished() {
    let finished: Vec<ThreadRecord> = {
        let mut registry = REGISTRY.lock();
        let mut done = Vec::new();
        let mut i = 0;
        while i < registry.len() {
            let record = &registry[i];
            // SAFETY: the word lives in the thread's `Start`, which only `release` frees, after
            // the record has left the registry.
            let exited = unsafe { (*record.done).load(Ordering::Acquire) } != 0;
            if exited && !record.joining {
                done.push(registry.swap_remove(i));
            } else {
                i += 1;
            }
        }
        done
    };
    for record in finished {
        release(record);
    }
}

fn release(record: ThreadRecord) {
    // SAFETY: the thread has exited (the VMM set its completion word after its vCPU left the
    // thread for good), so nothing runs on its stack or reads its `Start` any more.
    unsafe {
        heap::free(record.stack, record.stack_size, STACK_ALIGN);
        drop(alloc::boxed::Box::from_raw(
            record
                .done
                .cast_mut()
                .byte_sub(core::mem::offset_of!(Start, done)) as *mut Start,
        ));
    }
}

/// Where the VMM starts a new thread's vCPU: `start` is the `Start` built by [`spawn`].
extern "C" fn thread_entry(start: *mut Start, _unused: usize) -> ! {
    crate::arch::init_thread();
    // SAFETY: `spawn` passes a valid `Start` that stays allocated until the thread is reaped.
    let start = unsafe { &*start };
    (start.func)(start.arg);
    hypercall::thread_exit(&start.done)
}
