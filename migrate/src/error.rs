//! Why a migration, or a message from another node, failed: by kind, so that callers can tell
//! a refusal (the VM runs on where it was) from a failure after the switch-over.

/// A failure of this crate, each with its one-line reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No VM of that name or id where it was looked for.
    #[error("{0}")]
    NoSuchVm(String),
    /// The destination cannot take the VM (not in the cluster, not connected, another ISA);
    /// nothing was sent.
    #[error("{0}")]
    Unreachable(String),
    /// The migration failed before the switch-over: the VM runs on where it was.
    #[error("{0}")]
    Aborted(String),
    /// The VM started at the destination, but what came after the switch-over failed.
    #[error("{0}")]
    AfterSwitch(String),
    /// The VM cannot move now (its pages are still arriving).
    #[error("{0}")]
    Busy(String),
    /// The node driving a relayed migration could not be asked, or was lost before it
    /// answered: where the VM runs is for `ps` to tell.
    #[error("{0}")]
    Lost(String),
    /// A message from another node that does not decode, or that does not fit what this node
    /// knows (a VM it does not expect, a sender that is not the VM's).
    #[error("{0}")]
    BadMessage(String),
    /// This node could not do its part (a host resource: memory, userfaultfd, threads).
    #[error("{0}")]
    Host(String),
}

impl Error {
    /// The kind's number on the wire (a relayed migration's answer carries it).
    pub fn kind(&self) -> u8 {
        match self {
            Error::NoSuchVm(_) => 1,
            Error::Unreachable(_) => 2,
            Error::Aborted(_) => 3,
            Error::AfterSwitch(_) => 4,
            Error::Busy(_) => 5,
            Error::Lost(_) => 6,
            Error::BadMessage(_) => 7,
            Error::Host(_) => 8,
        }
    }

    /// The error of kind `kind` (see [`Error::kind`]) with `text`.
    pub fn of_kind(kind: u8, text: String) -> Option<Error> {
        Some(match kind {
            1 => Error::NoSuchVm(text),
            2 => Error::Unreachable(text),
            3 => Error::Aborted(text),
            4 => Error::AfterSwitch(text),
            5 => Error::Busy(text),
            6 => Error::Lost(text),
            7 => Error::BadMessage(text),
            8 => Error::Host(text),
            _ => return None,
        })
    }

    /// A message that did not decode.
    pub(crate) fn malformed(what: impl std::fmt::Display, e: pop_wire::WireError) -> Error {
        Error::BadMessage(format!("bad {what}: {e}"))
    }
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
