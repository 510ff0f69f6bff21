//! Pausing a running VM: all of its vCPUs (whole-VM migration), or the one running a given
//! guest thread (per-thread migration). A paused vCPU's host thread parks with its saved
//! state and the blocking hypercall it was in, until it is told to resume here or to leave
//! (the VM goes on elsewhere).
//!
//! A pause raises a target ([`VmShared::park_requested`]) and kicks the vCPU threads out of
//! `KVM_RUN` and of the host calls they block in; each targeted thread saves its vCPU and
//! parks at its next exit; the pause returns once every targeted thread parked. One pause at
//! a time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::arch::{HypercallRequest, Vcpu};
pub use crate::moving::ParkedVcpu;
use crate::outcome::Outcome;
use crate::persist::Persist;
use crate::threads::ThreadTable;

use super::VmShared;

/// No pause asked for.
const TARGET_NONE: u64 = 0;
/// Every thread is to park.
const TARGET_ALL: u64 = u64::MAX;

/// A paused VM's state, ready to be sent (see [`VmShared::pause`]).
#[derive(Clone, Debug)]
pub struct Paused {
    /// The vCPUs running guest threads.
    pub vcpus: Vec<ParkedVcpu>,
    /// The thread table.
    pub threads: ThreadTable,
}

/// Why a pause failed (the VM runs on as before).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PauseError {
    /// Another pause is in progress.
    #[error("the VM is being paused already")]
    Busy,
    /// The VM ended meanwhile.
    #[error("the VM ended")]
    Ended,
    /// No running thread has this id.
    #[error("no thread {0} runs in this VM")]
    NoThread(u32),
    /// The vCPUs did not all stop within the time allowed.
    #[error("the vCPUs did not stop in time")]
    Timeout,
    /// A vCPU's state could not be read.
    #[error("cannot save vCPU {index}: {why}")]
    Save {
        /// The vCPU.
        index: u32,
        /// What KVM said.
        why: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decision {
    Resume,
    Leave,
    /// The paused thread runs on another node now (the VM goes on here).
    Away,
}

/// The parking lot of a VM's vCPU threads.
#[derive(Debug, Default)]
pub(super) struct Park {
    epoch: u64,
    parked: Vec<ParkedVcpu>,
    errors: Vec<PauseError>,
    decided: Option<(u64, Decision)>,
}

/// What a parked vCPU does next.
pub(super) enum ParkEnd {
    /// Go on here, with the blocking call it was in.
    Resume(Option<HypercallRequest>),
    /// Stop: the VM runs elsewhere now.
    Leave,
    /// The thread runs on another node now; its vCPU waits here.
    Away,
}

impl VmShared {
    /// Whether guest thread `tid` is to park (at its vCPU's next exit).
    pub fn park_requested(&self, tid: u32) -> bool {
        match self.park_target.load(Ordering::Acquire) {
            TARGET_NONE => false,
            TARGET_ALL => true,
            t => t == u64::from(tid) + 1,
        }
    }

    fn park_lock(&self) -> std::sync::MutexGuard<'_, Park> {
        crate::sync::lock(&self.park)
    }

    /// Raises the pause `target` (a new epoch), unless a pause is in progress.
    fn raise(&self, target: u64) -> Result<(), PauseError> {
        let mut p = self.park_lock();
        if self.park_target.load(Ordering::Acquire) != TARGET_NONE {
            return Err(PauseError::Busy);
        }
        p.epoch += 1;
        p.parked.clear();
        p.errors.clear();
        self.park_target.store(target, Ordering::Release);
        Ok(())
    }

    /// Stops every guest thread (out of `KVM_RUN`, or out of the host call it is blocked in)
    /// and returns their states. On failure (a vCPU cannot be saved, the VM ends, `timeout`)
    /// the VM has been resumed already.
    pub fn pause(&self, timeout: Duration) -> Result<Paused, PauseError> {
        self.raise(TARGET_ALL)?;
        let vcpus = self.wait_parked(timeout, || self.threads.running() as usize)?;
        match self.threads.save() {
            Ok(threads) => Ok(Paused { vcpus, threads }),
            Err(never) => match never {},
        }
    }

    /// Stops the vCPU running guest thread `tid` and returns its state; the other threads run
    /// on. Resume it with [`VmShared::resume`]. On failure it has been resumed already.
    pub fn pause_thread(&self, tid: u32, timeout: Duration) -> Result<ParkedVcpu, PauseError> {
        if !self.threads.is_running(tid) {
            return Err(PauseError::NoThread(tid));
        }
        self.raise(u64::from(tid) + 1)?;
        let mut parked =
            self.wait_parked(timeout, || if self.threads.is_running(tid) { 1 } else { 0 })?;
        parked.pop().ok_or_else(|| {
            self.resume();
            PauseError::NoThread(tid)
        })
    }

    /// Waits until `wanted()` vCPUs parked; resumes them on failure.
    fn wait_parked(
        &self,
        timeout: Duration,
        wanted: impl Fn() -> usize,
    ) -> Result<Vec<ParkedVcpu>, PauseError> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let p = self.park_lock();
                if let Some(e) = p.errors.first() {
                    let e = e.clone();
                    drop(p);
                    self.resume();
                    return Err(e);
                }
                if p.parked.len() >= wanted() {
                    // Nothing can change now: every targeted thread is parked.
                    return Ok(p.parked.clone());
                }
            }
            if self.stopping() {
                self.resume();
                return Err(PauseError::Ended);
            }
            if Instant::now() > deadline {
                self.resume();
                return Err(PauseError::Timeout);
            }
            self.threads.kick_all();
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn decide(&self, decision: Decision) {
        let mut p = self.park_lock();
        p.decided = Some((p.epoch, decision));
        self.park_target.store(TARGET_NONE, Ordering::Release);
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

    /// The thread paused with [`VmShared::pause_thread`] runs on another node now: its vCPU
    /// waits here for it to come back; the rest of the VM runs on.
    pub fn thread_left(&self) {
        self.decide(Decision::Away);
    }

    /// Parks the calling vCPU thread (see [`VmShared::pause`]) until a decision.
    pub(super) fn park_here(
        &self,
        vcpu: &mut Vcpu,
        tid: u32,
        pending: Option<HypercallRequest>,
    ) -> ParkEnd {
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
            Err(e) => p.errors.push(PauseError::Save {
                index: vcpu.index(),
                why: e.to_string(),
            }),
        }
        loop {
            match p.decided {
                Some((e, Decision::Resume)) if e == epoch => return ParkEnd::Resume(pending),
                Some((e, Decision::Leave)) if e == epoch => return ParkEnd::Leave,
                Some((e, Decision::Away)) if e == epoch => return ParkEnd::Away,
                _ if self.stopping() => return ParkEnd::Leave,
                _ => {}
            }
            p = crate::sync::wait_timeout(&self.parked_cv, p, Duration::from_millis(50));
        }
    }
}
