//! What the tutorial's programs share: finding the node to move to, and moving there.

/// The first node of the cluster, other than the caller's, that is up and has the caller's
/// instruction set (the node a thread can move to at any instruction); `None` alone.
pub fn other_node() -> Option<u32> {
    pop::movable_nodes().nth(1)
}

/// Moves the calling thread to node `nid`, or exits with status 1 and a one-line reason.
pub fn migrate_or_exit(nid: u32) {
    if let Err(e) = pop::migrate(nid) {
        eprintln!("cannot migrate to node {nid}: {e}");
        std::process::exit(1);
    }
}

/// The node to move to, or exits with status 1 if the cluster has no other node.
pub fn other_node_or_exit() -> u32 {
    other_node().unwrap_or_else(|| {
        eprintln!("no other node of this ISA is up in the cluster");
        std::process::exit(1)
    })
}

/// Argument `index` as a number, or `default`; a bad one exits with status 2.
pub fn arg(index: usize, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .map(|a| {
            a.parse().unwrap_or_else(|_| {
                eprintln!("bad argument {a:?}");
                std::process::exit(2)
            })
        })
        .unwrap_or(default)
}
