//! Which node of the cluster the calling thread runs on.

#[cfg(target_os = "hermit")]
unsafe extern "C" {
    /// Exported by the pop libos: the node id from the boot information.
    fn pop_current_nid() -> u32;
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
