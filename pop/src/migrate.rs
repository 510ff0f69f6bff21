//! Moving the calling thread to another node.

use pop_abi::errno::{EHOSTUNREACH, EINVAL, ENOEXEC, ENOSYS};

/// Why [`migrate`] did not move the thread (it goes on where it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrateError {
    /// The cluster has no such node.
    UnknownNode,
    /// The node is down, or could not take the thread.
    Unreachable,
    /// The node has another instruction set: a thread moves at any instruction only between
    /// nodes of the same ISA.
    OtherIsa,
    /// The application does not run in a cluster (launched alone, or natively).
    NotInCluster,
    /// Another failure, with its errno.
    Other(i32),
}

impl core::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MigrateError::UnknownNode => f.write_str("no such node in the cluster"),
            MigrateError::Unreachable => f.write_str("the node is down or cannot take the thread"),
            MigrateError::OtherIsa => f.write_str("the node has another instruction set"),
            MigrateError::NotInCluster => f.write_str("not running in a cluster"),
            MigrateError::Other(errno) => write!(f, "migration failed (errno {errno})"),
        }
    }
}

impl core::error::Error for MigrateError {}

impl MigrateError {
    fn from_errno(errno: i32) -> MigrateError {
        match errno {
            EINVAL => MigrateError::UnknownNode,
            EHOSTUNREACH => MigrateError::Unreachable,
            ENOEXEC => MigrateError::OtherIsa,
            ENOSYS => MigrateError::NotInCluster,
            e => MigrateError::Other(e),
        }
    }
}

#[cfg(target_os = "hermit")]
unsafe extern "C" {
    /// Exported by the pop libos: the `migrate` hypercall.
    fn pop_migrate(node: u32) -> i32;
}

/// Moves the calling thread to node `nid` and returns there: its registers, its stack and
/// every object it uses go on as they were (memory stays coherent between the nodes), and
/// [`crate::current_nid`] says `nid` from then on. To the node it is on: nothing to do.
///
/// In a native build there is one node, 0: `migrate(0)` succeeds, any other node is
/// [`MigrateError::UnknownNode`].
pub fn migrate(nid: u32) -> Result<(), MigrateError> {
    #[cfg(target_os = "hermit")]
    {
        // SAFETY: `pop_migrate` is provided by the pop libos that `cargo pop build` links
        // into every hermit image; it takes a plain integer.
        let r = unsafe { pop_migrate(nid) };
        if r < 0 {
            return Err(MigrateError::from_errno(-r));
        }
        Ok(())
    }
    #[cfg(not(target_os = "hermit"))]
    {
        if nid == 0 {
            Ok(())
        } else {
            Err(MigrateError::from_errno(EINVAL))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natively_only_node_zero_exists() {
        assert_eq!(migrate(0), Ok(()));
        assert_eq!(migrate(1), Err(MigrateError::UnknownNode));
        assert_eq!(MigrateError::from_errno(ENOSYS), MigrateError::NotInCluster);
    }
}
