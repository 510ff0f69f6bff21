//! The nodes of the cluster the application runs in.

use pop_abi::{MAX_NODES, NodeEntry};

pub use pop_abi::Isa;

/// One node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its id.
    pub id: u32,
    /// Its instruction set.
    pub isa: Isa,
    /// Whether it is up: the node the application runs on, or one its node reaches.
    pub up: bool,
}

/// The cluster's nodes, in id order (an iterator; see [`nodes`]).
#[derive(Clone, Debug)]
pub struct Nodes {
    entries: [NodeEntry; MAX_NODES],
    len: usize,
    at: usize,
}

impl Iterator for Nodes {
    type Item = Node;

    fn next(&mut self) -> Option<Node> {
        while self.at < self.len {
            let e = self.entries[self.at];
            self.at += 1;
            if let Some(isa) = Isa::from_abi(e.isa) {
                return Some(Node {
                    id: e.id,
                    isa,
                    up: e.up != 0,
                });
            }
        }
        None
    }
}

#[cfg(target_os = "hermit")]
unsafe extern "C" {
    /// Exported by the pop libos: the cluster's nodes as the VMM knows them.
    fn pop_nodes(buf: *mut NodeEntry, max: usize) -> isize;
}

/// The nodes of the cluster the application runs in, with their ISA and whether they are up.
///
/// A VM launched alone (and a native build) sees one node, its own, up.
pub fn nodes() -> Nodes {
    let mut entries = [NodeEntry::default(); MAX_NODES];
    #[cfg(target_os = "hermit")]
    let len = {
        // SAFETY: `pop_nodes` is provided by the pop libos linked into every hermit image; it
        // writes at most `MAX_NODES` entries into `entries`.
        let n = unsafe { pop_nodes(entries.as_mut_ptr(), MAX_NODES) };
        usize::try_from(n).map_or(0, |n| n.min(MAX_NODES))
    };
    #[cfg(not(target_os = "hermit"))]
    let len = {
        entries[0] = NodeEntry {
            id: 0,
            isa: Isa::NATIVE.abi(),
            up: 1,
        };
        1
    };
    Nodes {
        entries,
        len,
        at: 0,
    }
}

/// The nodes the calling thread can move to with [`crate::migrate`] (up, and of its
/// instruction set), its own first, in id order after it. Alone (and natively): its own.
pub fn movable_nodes() -> impl Iterator<Item = u32> {
    let here = crate::current_nid();
    let isa = nodes().find(|n| n.id == here).map(|n| n.isa);
    core::iter::once(here).chain(
        nodes()
            .filter(move |n| n.id != here && n.up && Some(n.isa) == isa)
            .map(|n| n.id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natively_one_node_is_up() {
        let mut all = nodes();
        assert_eq!(
            all.next(),
            Some(Node {
                id: 0,
                isa: Isa::NATIVE,
                up: true
            })
        );
        assert_eq!(all.next(), None);
    }
}
