//! The payloads of the per-thread messages (`SHELL` .. `THREADS`, see [`crate::msg`]).

use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};
use vmm::clock::ClockState;
use vmm::fs::{Fd, FdTable};
use vmm::moving::ThreadState;
use vmm::vm::state::StateHeader;

/// Most bytes of one `SHELL` piece.
pub const MAX_PIECE: usize = 192 * 1024;
/// Most bytes of a VM name.
const MAX_NAME: usize = 4096;
/// Most threads a `THREADS` answer lists.
const MAX_LISTED: usize = 1 << 12;

/// What a `SHELL` piece carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// Bytes of the image file at `offset`.
    Image,
    /// Pages of the private region: records of (guest address, 4 KiB).
    Pages,
}

/// `SHELL`: a piece of what a node needs to make a shell of a VM (before its first thread
/// arrives there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellPiece {
    /// The VM.
    pub vm: u64,
    /// What.
    pub kind: PieceKind,
    /// Image: where the bytes go.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Encode for ShellPiece {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm)
            .u8(match self.kind {
                PieceKind::Image => 1,
                PieceKind::Pages => 2,
            })
            .u64(self.offset)
            .blob(&self.bytes);
    }
}

impl Decode for ShellPiece {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let vm = d.u64()?;
        let kind = match d.u8()? {
            1 => PieceKind::Image,
            2 => PieceKind::Pages,
            _ => return Err(WireError("unknown shell piece")),
        };
        Ok(ShellPiece {
            vm,
            kind,
            offset: d.u64()?,
            bytes: d.blob(MAX_PIECE)?.to_vec(),
        })
    }
}

/// How to make the shell of a VM on a node that has none (with the pieces sent before).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShellSetup {
    /// The VM's origin: its thread table, futexes, descriptor table and directory.
    pub origin: u32,
    /// Its home: where its output and file operations go.
    pub home: u32,
    /// Its name.
    pub name: String,
    /// Private region size.
    pub private_size: u64,
    /// Shared region size.
    pub shared_size: u64,
    /// Most vCPUs.
    pub max_threads: u32,
    /// Bytes of the image.
    pub image_len: u64,
    /// Its SHA-256 (a node that has the image needs no image pieces).
    pub image_sha256: [u8; 32],
    /// The guest clock.
    pub clock: ClockState,
    /// Whether the VM's nodes hold read copies (every node of a VM does, or none: see
    /// `pop_dsm::RegionConfig::write_protect`).
    pub read_copies: bool,
}

impl Encode for ShellSetup {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.origin)
            .u32(self.home)
            .string(&self.name)
            .u64(self.private_size)
            .u64(self.shared_size)
            .u32(self.max_threads)
            .u64(self.image_len)
            .bytes(&self.image_sha256);
        self.clock.encode(e);
        self.read_copies.encode(e);
    }
}

impl Decode for ShellSetup {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(ShellSetup {
            origin: d.u32()?,
            home: d.u32()?,
            name: d.string(MAX_NAME)?,
            private_size: d.u64()?,
            shared_size: d.u64()?,
            max_threads: d.u32()?,
            image_len: d.u64()?,
            image_sha256: d.bytes(32)?.try_into().expect("32 bytes"),
            clock: ClockState::decode(d)?,
            read_copies: bool::decode(d)?,
        })
    }
}

/// `ARRIVE`: a thread of a VM arriving (with the shell's setup if the node has none).
#[derive(Clone, Debug)]
pub struct Arrive {
    /// Version, ISA (checked before the thread's native state is read) and VM.
    pub header: StateHeader,
    /// The shell to make first, if any.
    pub setup: Option<ShellSetup>,
    /// The thread.
    pub thread: ThreadState,
}

impl Encode for Arrive {
    fn encode(&self, e: &mut Encoder) {
        self.header.encode(e);
        self.setup.encode(e);
        self.thread.encode(e);
    }
}

impl Decode for Arrive {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let header = StateHeader::decode(d)?;
        header.check_native()?;
        Ok(Arrive {
            header,
            setup: Option::decode(d)?,
            thread: ThreadState::decode(d)?,
        })
    }
}

/// Declares a payload of plain integer fields with its wire form.
macro_rules! plain {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl Encode for $name {
            fn encode(&self, e: &mut Encoder) {
                $(e.$ty(self.$field as $ty);)*
            }
        }

        impl Decode for $name {
            fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
                Ok($name { $($field: d.$ty()?,)* })
            }
        }
    };
}

plain!(
    /// `FUTEX_WAIT`: queue `waiter` on the word at `addr` while it holds `expected`.
    /// Answer: [`Answer`] 0 when woken, `-EAGAIN` if the word differed.
    FutexWait {
        /// The VM.
        vm: u64,
        /// Guest address of the word.
        addr: u64,
        /// The value it must hold.
        expected: u32,
        /// The waiter's id (sender's node, vCPU and a sequence number).
        waiter: u64,
    }
);

plain!(
    /// `FUTEX_WAKE`: wake up to `count` waiters on `addr`. Answer: [`Answer`], how many.
    FutexWake {
        /// The VM.
        vm: u64,
        /// Guest address of the word.
        addr: u64,
        /// Most waiters to wake.
        count: u32,
    }
);

plain!(
    /// `FUTEX_CANCEL`: the waiter gives up. Answer: [`Answer`] 1 if it was still queued (now
    /// taken off), 0 if a wake took it.
    FutexCancel {
        /// The VM.
        vm: u64,
        /// The waiter's id.
        waiter: u64,
    }
);

plain!(
    /// `THREAD_EXITED`: thread `tid`, on vCPU `index`, ended on the sending node.
    ThreadExited {
        /// The VM.
        vm: u64,
        /// The thread.
        tid: u32,
        /// Its vCPU.
        index: u32,
    }
);

plain!(
    /// `THREAD_AT`: thread `tid` of VM `vm` runs on node `node` now (to the VM's origin).
    ThreadAt {
        /// The VM.
        vm: u64,
        /// The thread.
        tid: u32,
        /// Its node.
        node: u32,
    }
);

plain!(
    /// `JOIN`: thread `caller` waits for thread `tid`. Answer: [`Answer`], the join's result.
    Join {
        /// The VM.
        vm: u64,
        /// The thread joined.
        tid: u32,
        /// The joiner.
        caller: u32,
    }
);

plain!(
    /// `SPAN_EXIT`: the application exited with `status` on the sending node.
    SpanExit {
        /// The VM.
        vm: u64,
        /// Its status.
        status: u32,
    }
);

plain!(
    /// `SPAWN`: start a thread of the VM (at its origin). Answer: [`Answer`], its tid or a
    /// negated errno.
    Spawn {
        /// The VM.
        vm: u64,
        /// Entry point.
        entry: u64,
        /// First argument.
        func: u64,
        /// Second argument.
        arg: u64,
        /// Stack top.
        stack_top: u64,
        /// Thread pointer.
        thread_pointer: u64,
    }
);

plain!(
    /// `MOVE_THREAD`: move thread `tid` of VM `vm` to node `to`, from outside (`popvmm
    /// migrate --thread`); asked of the VM's origin, which passes it to the thread's node.
    /// Answer: empty, or an error.
    MoveThread {
        /// The VM.
        vm: u64,
        /// The thread.
        tid: u32,
        /// Where to.
        to: u32,
    }
);

plain!(
    /// An answer that is one number.
    Answer {
        /// The number.
        value: u64,
    }
);

/// What a thread is doing, as `ps --threads` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadStatus {
    /// Running (or ready to).
    Running,
    /// Blocked in a futex wait, a sleep or a join.
    Blocked,
    /// Moving to another node.
    Migrating,
}

impl ThreadStatus {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            ThreadStatus::Running => "running",
            ThreadStatus::Blocked => "blocked",
            ThreadStatus::Migrating => "migrating",
        }
    }
}

/// One thread of a VM, where it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// Its tid.
    pub tid: u32,
    /// Its node.
    pub node: u32,
    /// What it does.
    pub status: ThreadStatus,
}

/// `THREADS` (payload a [`crate::msg::VmRef`]): asked of a VM's origin, every thread of the
/// VM; of a node with its shell, the threads there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadList(pub Vec<ThreadInfo>);

impl Encode for ThreadList {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.0.len() as u32);
        for t in &self.0 {
            e.u32(t.tid).u32(t.node).u8(match t.status {
                ThreadStatus::Running => 1,
                ThreadStatus::Migrating => 2,
                ThreadStatus::Blocked => 3,
            });
        }
    }
}

impl Decode for ThreadList {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let n = d.u32()? as usize;
        if n > MAX_LISTED {
            return Err(WireError("thread list too long"));
        }
        let mut list = Vec::with_capacity(n.min(d.rest().len() / 9));
        for _ in 0..n {
            let tid = d.u32()?;
            let node = d.u32()?;
            let status = match d.u8()? {
                1 => ThreadStatus::Running,
                2 => ThreadStatus::Migrating,
                3 => ThreadStatus::Blocked,
                _ => return Err(WireError("unknown thread state")),
            };
            list.push(ThreadInfo { tid, node, status });
        }
        Ok(ThreadList(list))
    }
}

/// An operation on the descriptor table of a VM that spans nodes, which its origin keeps
/// (see [`vmm::fs::Descriptors`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescOp {
    /// What a descriptor refers to.
    Get(i64),
    /// Gives this the lowest free descriptor.
    Insert(Fd),
    /// Frees a descriptor.
    Remove(i64),
    /// Gives what a descriptor refers to the lowest free one too.
    Dup(i64),
    /// The whole table.
    Table,
}

/// `DESC`: an operation on VM `vm`'s descriptor table (to its origin). Answer: [`DescAnswer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescRequest {
    /// The VM.
    pub vm: u64,
    /// What.
    pub op: DescOp,
}

impl Encode for DescRequest {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm);
        match self.op {
            DescOp::Get(fd) => e.u8(0).u64(fd as u64),
            DescOp::Insert(target) => {
                e.u8(1);
                target.encode(e);
                e
            }
            DescOp::Remove(fd) => e.u8(2).u64(fd as u64),
            DescOp::Dup(fd) => e.u8(3).u64(fd as u64),
            DescOp::Table => e.u8(4),
        };
    }
}

impl Decode for DescRequest {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let vm = d.u64()?;
        let op = match d.u8()? {
            0 => DescOp::Get(d.u64()? as i64),
            1 => DescOp::Insert(Fd::decode(d)?),
            2 => DescOp::Remove(d.u64()? as i64),
            3 => DescOp::Dup(d.u64()? as i64),
            4 => DescOp::Table,
            _ => return Err(WireError("unknown descriptor operation")),
        };
        Ok(DescRequest { vm, op })
    }
}

/// The answer to a [`DescRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DescAnswer {
    /// The operation failed with this errno.
    Failed(i32),
    /// A descriptor (`Insert`, `Dup`).
    Number(i64),
    /// What a descriptor refers to (`Get`).
    Refers(Fd),
    /// What a freed descriptor referred to, and whether another still does (`Remove`).
    Removed(Fd, bool),
    /// The table (`Table`).
    Table(FdTable),
}

impl Encode for DescAnswer {
    fn encode(&self, e: &mut Encoder) {
        match self {
            DescAnswer::Failed(errno) => {
                e.u8(0).u32(*errno as u32);
            }
            DescAnswer::Number(fd) => {
                e.u8(1).u64(*fd as u64);
            }
            DescAnswer::Refers(target) => {
                e.u8(2);
                target.encode(e);
            }
            DescAnswer::Removed(target, still) => {
                e.u8(3);
                target.encode(e);
                e.u8(u8::from(*still));
            }
            DescAnswer::Table(table) => {
                e.u8(4);
                table.encode(e);
            }
        }
    }
}

impl Decode for DescAnswer {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(match d.u8()? {
            0 => DescAnswer::Failed(d.u32()? as i32),
            1 => DescAnswer::Number(d.u64()? as i64),
            2 => DescAnswer::Refers(Fd::decode(d)?),
            3 => DescAnswer::Removed(Fd::decode(d)?, d.flag()?),
            4 => DescAnswer::Table(FdTable::decode(d)?),
            _ => return Err(WireError("unknown descriptor answer")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_cut_ones_are_refused() {
        let piece = ShellPiece {
            vm: 3,
            kind: PieceKind::Pages,
            offset: 0,
            bytes: vec![1; 100],
        };
        let bytes = pop_wire::to_bytes(&piece);
        assert_eq!(pop_wire::from_bytes::<ShellPiece>(&bytes).unwrap(), piece);
        for cut in 0..bytes.len() {
            assert!(pop_wire::from_bytes::<ShellPiece>(&bytes[..cut]).is_err());
        }
        let wait = FutexWait {
            vm: 1,
            addr: 0x4000_0000,
            expected: 7,
            waiter: 9,
        };
        let bytes = pop_wire::to_bytes(&wait);
        assert_eq!(pop_wire::from_bytes::<FutexWait>(&bytes).unwrap(), wait);
        assert!(pop_wire::from_bytes::<FutexWait>(&bytes[..bytes.len() - 1]).is_err());
        let list = ThreadList(vec![ThreadInfo {
            tid: 2,
            node: 1,
            status: ThreadStatus::Migrating,
        }]);
        assert_eq!(
            pop_wire::from_bytes::<ThreadList>(&pop_wire::to_bytes(&list)).unwrap(),
            list
        );
        for op in [
            DescOp::Get(3),
            DescOp::Insert(Fd::Home(9)),
            DescOp::Remove(4),
            DescOp::Dup(1),
            DescOp::Table,
        ] {
            let r = DescRequest { vm: 5, op };
            let bytes = pop_wire::to_bytes(&r);
            assert_eq!(pop_wire::from_bytes::<DescRequest>(&bytes).unwrap(), r);
            assert!(pop_wire::from_bytes::<DescRequest>(&bytes[..bytes.len() - 1]).is_err());
        }
        for a in [
            DescAnswer::Failed(9),
            DescAnswer::Number(3),
            DescAnswer::Refers(Fd::Stdout),
            DescAnswer::Removed(Fd::Home(7), true),
            DescAnswer::Table(FdTable::default()),
        ] {
            let bytes = pop_wire::to_bytes(&a);
            assert_eq!(pop_wire::from_bytes::<DescAnswer>(&bytes).unwrap(), a);
            assert!(pop_wire::from_bytes::<DescAnswer>(&bytes[..bytes.len() - 1]).is_err());
        }
    }
}
