//! Every message type between nodes, listed once: each service owns one range of numbers
//! (zero is never a message), and each message has a typed payload with a bounded wire form
//! ([`pop_wire`]). The `popvmm` router hands a message to the service of its range.
//!
//! | range | service | messages |
//! |---|---|---|
//! | 1-9 | node | `PING` |
//! | 10-29 | whole-VM migration ([`crate::vm`]) | `BEGIN`, `COMMIT`, `GO`, `ABORT`, `FETCH`, `DONE` |
//! | 30-39 | home ([`crate::home`]) | `OUTPUT`, `EXIT`, `LOCATION`, `FILE` |
//! | 40-49 | registry ([`crate::registry`]) | `LIST` |
//! | 50-59 | relay ([`crate::relay`]) | `MIGRATE`, `PROGRESS` |
//! | 60-79 | the DSM ([`crate::dsm`]) | `PAGE` |
//! | 80-99 | threads of a VM spanning nodes ([`crate::thread`]) | `SHELL`, `ARRIVE`, `FUTEX_WAIT`, `FUTEX_WAKE`, `FUTEX_CANCEL`, `THREAD_EXITED`, `JOIN`, `SPAN_EXIT`, `SPAN_END`, `SPAWN`, `MOVE_THREAD`, `THREADS`, `THREAD_AT` |
//! | 100-119 | reserved: the scheduler | |

use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};
use vmm::fs::op::FileOp;

use crate::report::{Step, Summary};
pub use crate::thread::wire::{
    Answer, Arrive, DescAnswer, DescOp, DescRequest, FutexCancel, FutexWait, FutexWake, Join,
    MoveThread, ShellPiece, ShellSetup, SpanExit, Spawn, ThreadAt, ThreadExited, ThreadInfo,
    ThreadList, ThreadStatus,
};
use vmm::vm::state::{StateHeader, VmState};

/// A message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MsgType {
    /// Request, answered with its own payload (`popvmm ping`).
    Ping = 1,
    /// Request ([`Begin`]): a VM is about to arrive. Answer: [`BeginReply`], or an error.
    Begin = 10,
    /// Request ([`Commit`]): the stopped VM's state; the destination builds the VM.
    Commit = 11,
    /// Request ([`VmRef`]): start the prepared VM (the switch-over).
    Go = 12,
    /// One-way ([`VmRef`]): forget an arriving VM.
    Abort = 13,
    /// Request, page class ([`Fetch`]): one page of a post-copy VM, from its source.
    Fetch = 14,
    /// Request ([`VmRef`]): every page of a post-copy VM was pushed (and the page stream
    /// synced); the destination stops catching faults.
    Done = 15,
    /// One-way, to the home node ([`Output`]): guest output.
    Output = 30,
    /// One-way, to the home node ([`Exit`]): the application ended.
    Exit = 31,
    /// One-way, to the home node ([`Location`]): the VM now runs on the sending node.
    Location = 32,
    /// Request, to the home node ([`FileRequest`]): a file operation of a VM away from home.
    File = 33,
    /// Request: the VMs running on a node. Answer: [`VmList`].
    List = 40,
    /// Request ([`MigrateRequest`]): move a VM running on the receiving node (a relayed
    /// `popvmm migrate`). Answer: [`MigrateAnswer`].
    Migrate = 50,
    /// One-way ([`Progress`]): progress of a relayed migration, to the node that relayed it.
    Progress = 51,
    /// Request ([`CancelRequest`]): stop the whole-VM migration of a VM running on the
    /// receiving node before its switch-over (a relayed `popvmm migrate --cancel`). Answer:
    /// empty, or an error.
    Cancel = 52,
    /// One-way, page class ([`pop_dsm::message::PageMsg`], with a page for those that carry
    /// one): the coherence protocol of a VM whose threads span nodes.
    Page = 60,
    /// Request ([`ShellPiece`]): a piece of a VM's image or private pages, before its first thread arrives.
    Shell = 80,
    /// Request ([`Arrive`]): a thread of a VM arrives (with the shell to make first, if the node has none). Answer: empty once it runs here, or an error (it runs on at the sender).
    Arrive = 81,
    /// Request, to the VM's origin ([`FutexWait`]). Answer: [`Answer`].
    FutexWait = 82,
    /// Request, to the VM's origin ([`FutexWake`]). Answer: [`Answer`].
    FutexWake = 83,
    /// Request, to the VM's origin ([`FutexCancel`]). Answer: [`Answer`].
    FutexCancel = 84,
    /// Request, to the VM's origin ([`ThreadExited`]).
    ThreadExited = 85,
    /// Request, to the VM's origin ([`Join`]). Answer: [`Answer`].
    Join = 86,
    /// One-way, to the VM's origin ([`SpanExit`]): the application exited.
    SpanExit = 87,
    /// One-way, from the VM's origin ([`VmRef`]): the VM ended; drop its shell.
    SpanEnd = 88,
    /// Request, to the VM's origin ([`Spawn`]). Answer: [`Answer`].
    Spawn = 89,
    /// Request ([`MoveThread`]): move one thread, from outside. Answer: empty, or an error.
    MoveThread = 90,
    /// Request, to the VM's origin ([`VmRef`]). Answer: [`ThreadList`].
    Threads = 91,
    /// One-way, to the VM's origin ([`ThreadAt`]): where a thread runs now.
    ThreadAt = 92,
    /// Request, to the VM's origin ([`DescRequest`]): an operation on its descriptor table.
    /// Answer: [`DescAnswer`].
    Desc = 93,
}

/// The services, by range of message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// The node itself (`PING`).
    Node,
    /// Whole-VM migration: arrivals and post-copy.
    Vm,
    /// The home of VMs launched here: output, exit, location, files.
    Home,
    /// The VMs running here.
    Registry,
    /// Relayed `popvmm migrate`.
    Relay,
    /// The DSM: page coherence of VMs whose threads span nodes.
    Dsm,
    /// Threads of VMs spanning nodes: shells, arrivals, futexes, joins, exits.
    Thread,
}

impl MsgType {
    /// Every message type.
    pub const ALL: [MsgType; 30] = [
        MsgType::Ping,
        MsgType::Begin,
        MsgType::Commit,
        MsgType::Go,
        MsgType::Abort,
        MsgType::Fetch,
        MsgType::Done,
        MsgType::Output,
        MsgType::Exit,
        MsgType::Location,
        MsgType::File,
        MsgType::List,
        MsgType::Migrate,
        MsgType::Progress,
        MsgType::Cancel,
        MsgType::Page,
        MsgType::Shell,
        MsgType::Arrive,
        MsgType::FutexWait,
        MsgType::FutexWake,
        MsgType::FutexCancel,
        MsgType::ThreadExited,
        MsgType::Join,
        MsgType::SpanExit,
        MsgType::SpanEnd,
        MsgType::Spawn,
        MsgType::MoveThread,
        MsgType::Threads,
        MsgType::ThreadAt,
        MsgType::Desc,
    ];

    /// Its name in the protocol's descriptions and in errors (`BEGIN`, `FETCH`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Ping => "PING",
            MsgType::Begin => "BEGIN",
            MsgType::Commit => "COMMIT",
            MsgType::Go => "GO",
            MsgType::Abort => "ABORT",
            MsgType::Fetch => "FETCH",
            MsgType::Done => "DONE",
            MsgType::Output => "OUTPUT",
            MsgType::Exit => "EXIT",
            MsgType::Location => "LOCATION",
            MsgType::File => "FILE",
            MsgType::List => "LIST",
            MsgType::Migrate => "MIGRATE",
            MsgType::Progress => "PROGRESS",
            MsgType::Cancel => "CANCEL",
            MsgType::Page => "PAGE",
            MsgType::Shell => "SHELL",
            MsgType::Arrive => "ARRIVE",
            MsgType::FutexWait => "FUTEX_WAIT",
            MsgType::FutexWake => "FUTEX_WAKE",
            MsgType::FutexCancel => "FUTEX_CANCEL",
            MsgType::ThreadExited => "THREAD_EXITED",
            MsgType::Join => "JOIN",
            MsgType::SpanExit => "SPAN_EXIT",
            MsgType::SpanEnd => "SPAN_END",
            MsgType::Spawn => "SPAWN",
            MsgType::MoveThread => "MOVE_THREAD",
            MsgType::Threads => "THREADS",
            MsgType::ThreadAt => "THREAD_AT",
            MsgType::Desc => "DESC",
        }
    }

    /// Its number on the wire.
    pub fn number(self) -> u16 {
        self as u16
    }

    /// The message type numbered `n`, if there is one.
    pub fn from_number(n: u16) -> Option<MsgType> {
        MsgType::ALL.into_iter().find(|t| t.number() == n)
    }

    /// The service that handles it.
    pub fn service(self) -> Service {
        match self.number() {
            1..=9 => Service::Node,
            10..=29 => Service::Vm,
            30..=39 => Service::Home,
            40..=49 => Service::Registry,
            50..=59 => Service::Relay,
            60..=79 => Service::Dsm,
            _ => Service::Thread,
        }
    }
}

/// Most bytes of a VM name.
const MAX_NAME: usize = 4096;
/// Most bytes of an error text carried in a message.
pub const MAX_ERROR: usize = 4096;
/// Most bytes of guest output per `OUTPUT`.
pub const MAX_OUTPUT: usize = 128 * 1024;
/// Most VMs in a `LIST` answer.
const MAX_LISTED: usize = 4096;

/// A message about one VM and nothing else (`GO`, `ABORT`, `DONE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmRef {
    /// The VM.
    pub vm: u64,
}

impl Encode for VmRef {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm);
    }
}

impl Decode for VmRef {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(VmRef { vm: d.u64()? })
    }
}

/// `BEGIN`: what the destination needs to know before memory arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    /// Version, ISA and id of the VM (the destination refuses another ISA at once).
    pub header: StateHeader,
    /// VM name (the image's).
    pub name: String,
    /// Home node (output and exit status go there).
    pub home: u32,
    /// Private region size.
    pub private_size: u64,
    /// Shared region size.
    pub shared_size: u64,
    /// Most vCPUs.
    pub max_threads: u32,
    /// Bytes of the image file.
    pub image_len: u64,
    /// Post-copy: the shared region's pages come after the VM started, on demand.
    pub postcopy: bool,
    /// SHA-256 of the image: a node that has it says so and is not sent it.
    pub image_sha256: [u8; 32],
}

impl Encode for Begin {
    fn encode(&self, e: &mut Encoder) {
        self.header.encode(e);
        e.string(&self.name)
            .u32(self.home)
            .u64(self.private_size)
            .u64(self.shared_size)
            .u32(self.max_threads)
            .u64(self.image_len);
        self.postcopy.encode(e);
        e.bytes(&self.image_sha256);
    }
}

impl Decode for Begin {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(Begin {
            header: StateHeader::decode(d)?,
            name: d.string(MAX_NAME)?,
            home: d.u32()?,
            private_size: d.u64()?,
            shared_size: d.u64()?,
            max_threads: d.u32()?,
            image_len: d.u64()?,
            postcopy: bool::decode(d)?,
            image_sha256: d.bytes(32)?.try_into().expect("32 bytes"),
        })
    }
}

/// `BEGIN`'s answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BeginReply {
    /// The VM's memory is memory a VM that left reused (no zeroing by the kernel).
    pub reused_memory: bool,
    /// The destination has the image: it is not sent.
    pub have_image: bool,
}

impl Encode for BeginReply {
    fn encode(&self, e: &mut Encoder) {
        self.reused_memory.encode(e);
        self.have_image.encode(e);
    }
}

impl Decode for BeginReply {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(BeginReply {
            reused_memory: bool::decode(d)?,
            have_image: bool::decode(d)?,
        })
    }
}

/// `COMMIT`: the stopped VM's whole state (its header names the VM).
#[derive(Clone, Debug)]
pub struct Commit {
    /// The state.
    pub state: VmState,
}

impl Encode for Commit {
    fn encode(&self, e: &mut Encoder) {
        self.state.encode(e);
    }
}

impl Decode for Commit {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(Commit {
            state: VmState::decode(d)?,
        })
    }
}

/// `FETCH`: the page at a guest address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    /// The VM.
    pub vm: u64,
    /// A guest address in the page.
    pub addr: u64,
}

impl Encode for Fetch {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm).u64(self.addr);
    }
}

impl Decode for Fetch {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(Fetch {
            vm: d.u64()?,
            addr: d.u64()?,
        })
    }
}

/// Which output stream of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// `OUTPUT`: bytes the guest wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The VM.
    pub vm: u64,
    /// Where it wrote.
    pub stream: Stream,
    /// What it wrote (at most [`MAX_OUTPUT`] bytes).
    pub bytes: Vec<u8>,
}

impl Encode for Output {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm).u8(match self.stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        });
        e.blob(&self.bytes);
    }
}

impl Decode for Output {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let vm = d.u64()?;
        let stream = match d.u8()? {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            _ => return Err(WireError("bad output stream")),
        };
        Ok(Output {
            vm,
            stream,
            bytes: d.blob(MAX_OUTPUT)?.to_vec(),
        })
    }
}

/// `EXIT`: how the application ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The VM.
    pub vm: u64,
    /// Exit status for `popvmm launch`.
    pub status: i32,
    /// The VMM's error, if it failed.
    pub error: Option<String>,
}

impl Encode for Exit {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm).u32(self.status as u32);
        match &self.error {
            Some(text) => e.u8(1).string(truncated(text, MAX_ERROR)),
            None => e.u8(0),
        };
    }
}

impl Decode for Exit {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let vm = d.u64()?;
        let status = d.u32()? as i32;
        let error = match d.u8()? {
            0 => None,
            1 => Some(d.string(MAX_ERROR)?),
            _ => return Err(WireError("bad error flag")),
        };
        Ok(Exit { vm, status, error })
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `LOCATION`: where a VM runs now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// The VM.
    pub vm: u64,
    /// The node it runs on.
    pub node: u32,
}

impl Encode for Location {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm).u32(self.node);
    }
}

impl Decode for Location {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(Location {
            vm: d.u64()?,
            node: d.u32()?,
        })
    }
}

/// `FILE`: a file operation of a VM away from home.
#[derive(Clone, Debug)]
pub struct FileRequest {
    /// The VM.
    pub vm: u64,
    /// The operation.
    pub op: FileOp,
}

impl Encode for FileRequest {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.vm);
        self.op.encode(e);
    }
}

impl Decode for FileRequest {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(FileRequest {
            vm: d.u64()?,
            op: FileOp::decode(d)?,
        })
    }
}

/// What a VM is doing, as `popvmm ps` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VmStatus {
    /// Running here.
    Running = 1,
    /// Being copied to another node (pre-copy) while it runs.
    Migrating = 2,
    /// Stopped here: it runs on another node now.
    Moved = 3,
    /// Running here while its pages still arrive from its source (post-copy).
    Postcopy = 4,
    /// Running elsewhere; this node still serves the pages it has not pushed yet.
    PostcopySource = 5,
}

impl VmStatus {
    /// Every status.
    const ALL: [VmStatus; 5] = [
        VmStatus::Running,
        VmStatus::Migrating,
        VmStatus::Moved,
        VmStatus::Postcopy,
        VmStatus::PostcopySource,
    ];

    /// The status numbered `n` on the wire.
    pub fn from_u8(n: u8) -> Option<VmStatus> {
        VmStatus::ALL.into_iter().find(|s| *s as u8 == n)
    }

    /// Its name in `ps`.
    pub fn name(self) -> &'static str {
        match self {
            VmStatus::Running => "running",
            VmStatus::Migrating => "migrating",
            VmStatus::Moved => "moved",
            VmStatus::Postcopy => "postcopy",
            VmStatus::PostcopySource => "postcopy-source",
        }
    }
}

/// What `ps` shows of a VM: one entry of a `LIST` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmInfo {
    /// Cluster-wide id.
    pub id: u64,
    /// Name (the image's).
    pub name: String,
    /// The node it runs on.
    pub node: u32,
    /// Its home node.
    pub home: u32,
    /// Threads running.
    pub threads: u32,
    /// Shared memory size in bytes.
    pub memory: u64,
    /// Its state.
    pub state: VmStatus,
}

impl Encode for VmInfo {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.id)
            .string(&self.name)
            .u32(self.node)
            .u32(self.home)
            .u32(self.threads)
            .u64(self.memory)
            .u8(self.state as u8);
    }
}

impl Decode for VmInfo {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(VmInfo {
            id: d.u64()?,
            name: d.string(MAX_NAME)?,
            node: d.u32()?,
            home: d.u32()?,
            threads: d.u32()?,
            memory: d.u64()?,
            state: VmStatus::from_u8(d.u8()?).ok_or(WireError("bad VM state"))?,
        })
    }
}

/// `LIST`'s answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmList(pub Vec<VmInfo>);

impl Encode for VmList {
    fn encode(&self, e: &mut Encoder) {
        e.seq(&self.0);
    }
}

impl Decode for VmList {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(VmList(d.seq(MAX_LISTED)?))
    }
}

/// `MIGRATE`: what to move, and the token its progress is sent back with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateRequest {
    /// Names this migration's `PROGRESS` at the relaying node.
    pub token: u64,
    /// The VM, as the user named it.
    pub vm: String,
    /// Where to.
    pub to: u32,
    /// How.
    pub mode: crate::Mode,
    /// Longest acceptable stop, in milliseconds.
    pub downtime_ms: u64,
}

impl Encode for MigrateRequest {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.token).string(&self.vm).u32(self.to);
        self.mode.encode(e);
        e.u64(self.downtime_ms);
    }
}

impl Decode for MigrateRequest {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(MigrateRequest {
            token: d.u64()?,
            vm: d.string(MAX_NAME)?,
            to: d.u32()?,
            mode: crate::Mode::decode(d)?,
            downtime_ms: d.u64()?,
        })
    }
}

/// `CANCEL`: the VM whose migration is to stop, as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelRequest {
    /// The VM (id or name).
    pub vm: String,
}

impl Encode for CancelRequest {
    fn encode(&self, e: &mut Encoder) {
        e.string(&self.vm);
    }
}

impl Decode for CancelRequest {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(CancelRequest {
            vm: d.string(MAX_NAME)?,
        })
    }
}

/// The answer to `MIGRATE`: the summary, or why it failed (by kind).
#[derive(Clone, Debug, PartialEq)]
pub enum MigrateAnswer {
    /// The migration's summary.
    Done(Summary),
    /// It failed: [`crate::Error::kind`] and the reason.
    Failed(u8, String),
}

impl Encode for MigrateAnswer {
    fn encode(&self, e: &mut Encoder) {
        match self {
            MigrateAnswer::Done(summary) => {
                e.u8(0);
                summary.encode(e);
                e
            }
            MigrateAnswer::Failed(kind, text) => {
                e.u8(1).u8(*kind).string(truncated(text, MAX_ERROR))
            }
        };
    }
}

impl Decode for MigrateAnswer {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        match d.u8()? {
            0 => Ok(MigrateAnswer::Done(Summary::decode(d)?)),
            1 => Ok(MigrateAnswer::Failed(d.u8()?, d.string(MAX_ERROR)?)),
            _ => Err(WireError("bad migration answer")),
        }
    }
}

/// `PROGRESS`: one step of a relayed migration.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The migration's token (see [`MigrateRequest`]).
    pub token: u64,
    /// The step.
    pub step: Step,
}

impl Encode for Progress {
    fn encode(&self, e: &mut Encoder) {
        e.u64(self.token);
        self.step.encode(e);
    }
}

impl Decode for Progress {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        Ok(Progress {
            token: d.u64()?,
            step: Step::decode(d)?,
        })
    }
}

/// Decodes `payload` as the request or one-way message of type `t` (the fuzz target runs
/// every type through this and [`check_answer`]): `Ok` if it is well-formed. `PING` carries
/// any bytes; `LIST` carries nothing.
pub fn check_payload(t: MsgType, payload: &[u8]) -> Result<(), WireError> {
    use pop_wire::from_bytes;
    match t {
        MsgType::Ping => Ok(()),
        MsgType::List => Decoder::new(payload).end(),
        MsgType::Begin => from_bytes::<Begin>(payload).map(drop),
        MsgType::Commit => from_bytes::<Commit>(payload).map(drop),
        MsgType::Go | MsgType::Abort | MsgType::Done => from_bytes::<VmRef>(payload).map(drop),
        MsgType::Fetch => from_bytes::<Fetch>(payload).map(drop),
        MsgType::Output => from_bytes::<Output>(payload).map(drop),
        MsgType::Exit => from_bytes::<Exit>(payload).map(drop),
        MsgType::Location => from_bytes::<Location>(payload).map(drop),
        MsgType::File => from_bytes::<FileRequest>(payload).map(drop),
        MsgType::Migrate => from_bytes::<MigrateRequest>(payload).map(drop),
        MsgType::Progress => from_bytes::<Progress>(payload).map(drop),
        MsgType::Cancel => from_bytes::<CancelRequest>(payload).map(drop),
        MsgType::Page => pop_dsm::message::PageMsg::decode_frame(payload).map(drop),
        MsgType::Shell => from_bytes::<ShellPiece>(payload).map(drop),
        MsgType::Arrive => from_bytes::<Arrive>(payload).map(drop),
        MsgType::FutexWait => from_bytes::<FutexWait>(payload).map(drop),
        MsgType::FutexWake => from_bytes::<FutexWake>(payload).map(drop),
        MsgType::FutexCancel => from_bytes::<FutexCancel>(payload).map(drop),
        MsgType::ThreadExited => from_bytes::<ThreadExited>(payload).map(drop),
        MsgType::Join => from_bytes::<Join>(payload).map(drop),
        MsgType::SpanExit => from_bytes::<SpanExit>(payload).map(drop),
        MsgType::SpanEnd | MsgType::Threads => from_bytes::<VmRef>(payload).map(drop),
        MsgType::Spawn => from_bytes::<Spawn>(payload).map(drop),
        MsgType::MoveThread => from_bytes::<MoveThread>(payload).map(drop),
        MsgType::ThreadAt => from_bytes::<ThreadAt>(payload).map(drop),
        MsgType::Desc => from_bytes::<DescRequest>(payload).map(drop),
    }
}

/// Decodes `payload` as the answer to a request of type `t`, for the types whose answer has
/// a form of its own (`BEGIN`, `LIST`, `MIGRATE`); the others' answers are empty, a page
/// (`FETCH`), the ping's bytes, or a file reply (`vmm::fs::op::decode_reply`).
pub fn check_answer(t: MsgType, payload: &[u8]) -> Result<(), WireError> {
    use pop_wire::from_bytes;
    match t {
        MsgType::Begin => from_bytes::<BeginReply>(payload).map(drop),
        MsgType::List => from_bytes::<VmList>(payload).map(drop),
        MsgType::Migrate => from_bytes::<MigrateAnswer>(payload).map(drop),
        MsgType::File => vmm::fs::op::decode_reply(payload).map(drop),
        MsgType::FutexWait
        | MsgType::FutexWake
        | MsgType::FutexCancel
        | MsgType::Join
        | MsgType::Spawn => from_bytes::<Answer>(payload).map(drop),
        MsgType::Threads => from_bytes::<ThreadList>(payload).map(drop),
        MsgType::Desc => from_bytes::<DescAnswer>(payload).map(drop),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_unique_nonzero_and_in_their_service_range() {
        let mut seen = std::collections::HashSet::new();
        for t in MsgType::ALL {
            assert_ne!(t.number(), 0);
            assert!(seen.insert(t.number()), "{t:?} numbered twice");
            assert_eq!(MsgType::from_number(t.number()), Some(t));
        }
        assert_eq!(MsgType::from_number(0), None);
        assert_eq!(MsgType::from_number(9999), None);
        assert_eq!(MsgType::Ping.service(), Service::Node);
        assert_eq!(MsgType::Done.service(), Service::Vm);
        assert_eq!(MsgType::File.service(), Service::Home);
        assert_eq!(MsgType::List.service(), Service::Registry);
        assert_eq!(MsgType::Progress.service(), Service::Relay);
        assert_eq!(MsgType::Page.service(), Service::Dsm);
        assert_eq!(MsgType::Threads.service(), Service::Thread);
    }

    #[test]
    fn payloads_round_trip_and_cut_ones_are_refused() {
        let begin = Begin {
            header: StateHeader::native(7),
            name: "hello".into(),
            home: 2,
            private_size: 4 << 20,
            shared_size: 256 << 20,
            max_threads: 64,
            image_len: 12345,
            postcopy: true,
            image_sha256: [9; 32],
        };
        let exit = Exit {
            vm: 7,
            status: -3,
            error: Some("é".repeat(MAX_ERROR)),
        };
        let request = MigrateRequest {
            token: 1,
            vm: "hello".into(),
            to: 3,
            mode: crate::Mode::Postcopy,
            downtime_ms: 5,
        };
        let cases: Vec<(MsgType, Vec<u8>)> = vec![
            (MsgType::Begin, pop_wire::to_bytes(&begin)),
            (MsgType::Exit, pop_wire::to_bytes(&exit)),
            (MsgType::Migrate, pop_wire::to_bytes(&request)),
            (
                MsgType::Cancel,
                pop_wire::to_bytes(&CancelRequest { vm: "hello".into() }),
            ),
            (
                MsgType::Fetch,
                pop_wire::to_bytes(&Fetch { vm: 1, addr: 2 }),
            ),
            (
                MsgType::Location,
                pop_wire::to_bytes(&Location { vm: 1, node: 2 }),
            ),
        ];
        for (t, bytes) in &cases {
            assert!(check_payload(*t, bytes).is_ok(), "{t:?}");
            for cut in 0..bytes.len() {
                assert!(
                    check_payload(*t, &bytes[..cut]).is_err(),
                    "{t:?} cut at {cut}"
                );
            }
        }
        assert_eq!(pop_wire::from_bytes::<Begin>(&cases[0].1).unwrap(), begin);
        let back: Exit = pop_wire::from_bytes(&cases[1].1).unwrap();
        assert!(back.error.unwrap().len() <= MAX_ERROR);
        assert_eq!(
            pop_wire::from_bytes::<MigrateRequest>(&cases[2].1).unwrap(),
            request
        );
        for answer in [
            MigrateAnswer::Done(crate::report::Summary {
                from: 0,
                to: 1,
                mode: crate::Mode::Postcopy,
                rounds: 1,
                total_ms: 1.0,
                downtime_ms: 0.5,
                bytes: 9,
                last_pages: 2,
                vcpus: None,
                resent_pages: None,
                reused_memory: false,
                had_image: true,
                phases: Vec::new(),
            }),
            MigrateAnswer::Failed(3, "refused".into()),
        ] {
            let bytes = pop_wire::to_bytes(&answer);
            assert!(check_answer(MsgType::Migrate, &bytes).is_ok());
            assert!(check_answer(MsgType::Migrate, &bytes[..bytes.len() - 1]).is_err());
            assert_eq!(
                pop_wire::from_bytes::<MigrateAnswer>(&bytes).unwrap(),
                answer
            );
        }
        let reply = pop_wire::to_bytes(&BeginReply {
            reused_memory: true,
            have_image: false,
        });
        assert!(check_answer(MsgType::Begin, &reply).is_ok());
        assert!(check_answer(MsgType::Begin, &[2, 0]).is_err());
        assert!(check_payload(MsgType::List, &[]).is_ok());
        assert!(check_payload(MsgType::List, &[1]).is_err());
    }
}
