//! The descriptor table of a VM whose threads run on this node but whose origin is another:
//! kept at the origin, so that a descriptor any thread opened works in every thread. Each
//! operation is a `DESC` request there (carried out atomically on the origin's table).

use std::sync::Arc;

use net_msg::{Node, Priority};
use pop_abi::errno::EIO;
use vmm::fs::{Descriptors, Fd, FdTable};

use crate::msg::{DescAnswer, DescOp, DescRequest, MsgType};

/// The descriptor table of VM `vm`, kept at node `origin`.
#[derive(Debug)]
pub struct OriginDescriptors {
    /// This node.
    pub node: Arc<Node>,
    /// The VM's origin.
    pub origin: u32,
    /// The VM.
    pub vm: u64,
}

impl OriginDescriptors {
    /// Carries out `op` at the origin (`EIO` if it cannot be reached or answers garbage).
    fn ask(&self, op: DescOp) -> Result<DescAnswer, i32> {
        let request = pop_wire::to_bytes(&DescRequest { vm: self.vm, op });
        let answer = self
            .node
            .request(
                self.origin,
                MsgType::Desc.number(),
                Priority::Control,
                &request,
                super::REQUEST_TIMEOUT,
            )
            .map_err(|e| {
                tracing::warn!(
                    "VM {:x}: descriptor table at node {}: {e}",
                    self.vm,
                    self.origin
                );
                EIO
            })?;
        match pop_wire::from_bytes::<DescAnswer>(&answer) {
            Ok(DescAnswer::Failed(errno)) => Err(errno),
            Ok(a) => Ok(a),
            Err(_) => Err(EIO),
        }
    }
}

impl Descriptors for OriginDescriptors {
    fn get(&self, fd: i64) -> Result<Fd, i32> {
        match self.ask(DescOp::Get(fd))? {
            DescAnswer::Refers(target) => Ok(target),
            _ => Err(EIO),
        }
    }

    fn insert(&self, target: Fd) -> Result<i64, i32> {
        match self.ask(DescOp::Insert(target))? {
            DescAnswer::Number(fd) => Ok(fd),
            _ => Err(EIO),
        }
    }

    fn remove(&self, fd: i64) -> Result<(Fd, bool), i32> {
        match self.ask(DescOp::Remove(fd))? {
            DescAnswer::Removed(target, still) => Ok((target, still)),
            _ => Err(EIO),
        }
    }

    fn dup(&self, fd: i64) -> Result<i64, i32> {
        match self.ask(DescOp::Dup(fd))? {
            DescAnswer::Number(fd) => Ok(fd),
            _ => Err(EIO),
        }
    }

    fn table(&self) -> Result<FdTable, i32> {
        match self.ask(DescOp::Table)? {
            DescAnswer::Table(table) => Ok(table),
            _ => Err(EIO),
        }
    }
}

/// Carries out `op` on `table` (the origin's), as its answer.
pub fn serve(table: &dyn Descriptors, op: DescOp) -> DescAnswer {
    let answer = match op {
        DescOp::Get(fd) => table.get(fd).map(DescAnswer::Refers),
        DescOp::Insert(target) => table.insert(target).map(DescAnswer::Number),
        DescOp::Remove(fd) => table
            .remove(fd)
            .map(|(target, still)| DescAnswer::Removed(target, still)),
        DescOp::Dup(fd) => table.dup(fd).map(DescAnswer::Number),
        DescOp::Table => table.table().map(DescAnswer::Table),
    };
    answer.unwrap_or_else(DescAnswer::Failed)
}
