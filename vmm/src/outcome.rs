//! How a VM ends, and every exit status `popvmm` uses, in one place.

/// Exit status of `popvmm` when it cannot run the guest at all (like `docker run`), so that
/// it differs from the application's own statuses.
pub const EXIT_VMM_ERROR: i32 = 125;
/// Exit status when the guest aborts (a panic): as a shell reports SIGABRT.
pub const EXIT_ABORT: i32 = pop_abi::EXIT_ABORT;
/// Exit status when the guest faults: as a shell reports SIGSEGV.
pub const EXIT_FAULT: i32 = pop_abi::EXIT_FAULT;

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
    /// The VM migrated to another node and goes on there (not an end of the application).
    Moved,
}

impl Outcome {
    /// The exit status `popvmm` ends with.
    pub fn status(&self) -> i32 {
        match self {
            Outcome::Exit(status) => *status,
            Outcome::Abort => EXIT_ABORT,
            Outcome::Fault => EXIT_FAULT,
            Outcome::Error(_) | Outcome::Moved => EXIT_VMM_ERROR,
        }
    }
}
