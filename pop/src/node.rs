//! Which node of the cluster the calling thread runs on.

#[cfg(target_os = "hermit")]
unsafe extern "C" {
    /// Exported by the pop libos: the node id from the boot information.
    fn pop_current_nid() -> u32;
    /// Exported by the pop libos (hermit's ABI): the application's process id.
    fn sys_getpid() -> i32;
}

/// The application's process id: the same on every node its threads run on (std's
/// `std::process::id` has none on the hermit targets). Natively, the process's.
pub fn process_id() -> u32 {
    #[cfg(target_os = "hermit")]
    {
        // SAFETY: `sys_getpid` is provided by the pop libos linked into every hermit image;
        // it takes no arguments and reads the boot information.
        unsafe { sys_getpid() as u32 }
    }
    #[cfg(not(target_os = "hermit"))]
    {
        extern crate std;
        std::process::id()
    }
}

/// Returns the id of the node the calling thread is running on.
///
/// Under `popvmm` this is the node id the VMM passed at boot (0 when the VM runs alone).
/// In a native build there is no cluster and the answer is always 0.
pub fn current_nid() -> u32 {
    #[cfg(target_os = "hermit")]
    {
        // SAFETY: `pop_current_nid` is provided by the pop libos that `cargo pop build`
        // links into every hermit image; it takes no arguments and only reads boot info.
        unsafe { pop_current_nid() }
    }
    #[cfg(not(target_os = "hermit"))]
    {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_build_runs_on_node_zero() {
        assert_eq!(current_nid(), 0);
    }
}
