//! The coherence protocol of the shared region, as explicit state machines apart from any I/O:
//! a directory-based MSI protocol, home-based (each page's home keeps its state, owner and
//! copy set and serializes the transactions on it). The node that runs a VM's threads and
//! the one that keeps a page's directory talk only through [`Msg`]s; what a message does is a
//! pure function of the state and the message ([`Home::handle`], [`Cache::handle`]), which
//! returns the messages to send. The caller carries them (over net-msg's page class, in order
//! between two nodes) and applies the effects on memory (place a page, write-protect it, drop
//! it). So the protocol is tested alone, against written invariants, by exploring every
//! interleaving of a small cluster (see the tests), before it runs under KVM.
//!
//! Per page and node, a [`Cache`] is Invalid, Shared (read-only copy) or Modified (the only
//! copy, writable). The home's [`Directory`] entry knows the owner (a Modified node) or the
//! sharers, holds the page's contents while no node owns it, and runs one transaction at a
//! time per page; requests that arrive meanwhile wait in order. A transaction:
//!
//! * `GetS` (a read fault): if a node owns the page, the home recalls it to Shared (`Recall`,
//!   answered with `Flush`, the contents); then it sends the contents (`Data`) and adds the
//!   reader to the sharers;
//! * `GetM` (a write fault): the home invalidates every other sharer (`Inv`, answered with
//!   `InvAck`) and recalls the owner to Invalid; then it grants the page (`DataM`, with the
//!   contents; or `Grant`, without, to a writer that holds a read copy already: an upgrade
//!   moves no data), and the writer owns it.
//!
//! The home decides from its own directory only (never from what a node believes), so a
//! request that crossed an invalidation on its way is served correctly: a node that was a
//! sharer when it asked for write access but was invalidated meanwhile gets the contents with
//! its grant.

use std::collections::{BTreeSet, VecDeque};

/// A node's id.
pub type NodeId = u32;

/// What a node holds of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Nothing: a touch faults.
    Invalid,
    /// A read-only copy: a write faults.
    Shared,
    /// The only copy, writable.
    Modified,
}

/// A page's contents as the protocol sees them (a version, in the tests; the real page's
/// bytes travel beside the message).
pub type Contents = u64;

/// A protocol message about one page. `GetS`, `GetM`, `InvAck` and `Flush` go to the page's
/// home ([`Home::handle`]), the others to a node's cache ([`Cache::handle`]), so a node that
/// is both (the home's own threads) tells them apart by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// Node to home: give me a read copy.
    GetS,
    /// Node to home: give me the only, writable copy.
    GetM,
    /// Node to home: give me a read copy, or the page itself if no node holds a read copy
    /// (a sequential scan's: the page then moves, writable, and no copy is left behind to
    /// protect and invalidate).
    GetE,
    /// Home to node: drop your read copy and say so.
    Inv,
    /// Node to home: dropped.
    InvAck,
    /// Home to owner: send the contents back and keep a read copy (`keep`) or none.
    Recall {
        /// Whether the owner keeps a read copy.
        keep: bool,
    },
    /// Owner to home, answering `Recall`: the contents.
    Flush(Contents),
    /// Home to a reader, answering `GetS`: the contents.
    Data(Contents),
    /// Home to a writer: the page is yours, with these contents.
    DataM(Contents),
    /// Home to a writer that holds a read copy: the page is yours, your copy is current.
    Grant,
    /// Owner to home, unasked: take the page back, with these contents; the owner holds
    /// nothing of it now (a thread leaving a node gives back the pages it wrote last, so the
    /// node it goes to gets them from the home without a recall). A `Recall` that crossed
    /// it is answered by it: the owner, holding nothing, ignores that recall.
    PutM(Contents),
}

impl Msg {
    /// Whether the message goes to the page's home (else to a node's cache).
    pub fn to_home(self) -> bool {
        matches!(
            self,
            Msg::GetS | Msg::GetM | Msg::GetE | Msg::InvAck | Msg::Flush(_) | Msg::PutM(_)
        )
    }
}

/// A message with its page and its ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The page (its index in the shared region).
    pub page: u32,
    /// What.
    pub msg: Msg,
}

/// A transaction the home is running on a page.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Txn {
    /// Serving `GetS` from `reader`: waiting for the owner's contents.
    Read { reader: NodeId },
    /// Serving `GetM` from `writer`: waiting for `acks` more answers (invalidations, and the
    /// owner's contents); `upgrade` if the writer holds a current read copy.
    Write {
        writer: NodeId,
        acks: u32,
        upgrade: bool,
        /// A scan's (`GetE`) taking the page.
        scan: bool,
    },
}

/// The home's entry for one page.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Directory {
    /// The node holding the page Modified, if any.
    owner: Option<NodeId>,
    /// Whether the owner took the page with a scan (`GetE`): another scan then gets a read
    /// copy, so that a page several nodes read settles as read copies.
    scan_owned: bool,
    /// The nodes holding it Shared.
    sharers: BTreeSet<NodeId>,
    /// The contents, while no node owns the page.
    contents: Contents,
    /// The transaction in progress.
    busy: Option<Txn>,
    /// Requests waiting for it, in arrival order.
    waiting: VecDeque<(NodeId, Msg)>,
}

/// A protocol error: a message that cannot happen in this state (a bug, or a peer that does
/// not follow the protocol).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("page {page}: {msg:?} from node {from} in state {state}")]
pub struct ProtocolError {
    /// The page.
    pub page: u32,
    /// The sender.
    pub from: NodeId,
    /// The message.
    pub msg: Msg,
    /// What the receiver was in.
    pub state: String,
}

/// The home side: one directory entry per page.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Home {
    /// This node.
    pub id: NodeId,
    pages: Vec<Directory>,
}

impl Home {
    /// The home `id` of `pages` pages, none of which any node holds (their contents `0`).
    pub fn new(id: NodeId, pages: usize) -> Home {
        Self::with_owner(id, pages, None)
    }

    /// The home `id` of `pages` pages, all of which it holds Modified itself: a VM that ran on
    /// one node until its threads spread (that node's caches start with [`Cache::owned`]).
    pub fn owning(id: NodeId, pages: usize) -> Home {
        Self::with_owner(id, pages, Some(id))
    }

    fn with_owner(id: NodeId, pages: usize, owner: Option<NodeId>) -> Home {
        let entry = Directory {
            owner,
            scan_owned: false,
            sharers: BTreeSet::new(),
            contents: 0,
            busy: None,
            waiting: VecDeque::new(),
        };
        Home {
            id,
            pages: vec![entry; pages],
        }
    }

    /// Handles `msg` from `from` about `page`; returns what to send.
    pub fn handle(
        &mut self,
        from: NodeId,
        page: u32,
        msg: Msg,
    ) -> Result<Vec<Envelope>, ProtocolError> {
        let home = self.id;
        let entry = self.pages.get_mut(page as usize).ok_or(ProtocolError {
            page,
            from,
            msg,
            state: "no such page".into(),
        })?;
        let bad = |entry: &Directory| ProtocolError {
            page,
            from,
            msg,
            state: format!("{:?}", entry.busy),
        };
        let mut out = Vec::new();
        let send = |out: &mut Vec<Envelope>, to, msg| {
            out.push(Envelope {
                from: home,
                to,
                page,
                msg,
            })
        };
        match msg {
            Msg::GetS | Msg::GetM | Msg::GetE => {
                entry.waiting.push_back((from, msg));
            }
            Msg::InvAck => match &mut entry.busy {
                Some(Txn::Write { acks, .. }) if *acks > 0 && !entry.sharers.contains(&from) => {
                    *acks -= 1;
                }
                _ => return Err(bad(entry)),
            },
            // The owner's contents: recalled (`Flush`), or given back unasked (`PutM`: the
            // owner holds nothing now; a recall on its way to it is answered by this).
            Msg::Flush(contents) | Msg::PutM(contents) if entry.owner == Some(from) => {
                let given_back = matches!(msg, Msg::PutM(_));
                match entry.busy.clone() {
                    None if given_back => entry.scan_owned = false,
                    Some(Txn::Read { reader }) => {
                        if !given_back {
                            entry.sharers.insert(from);
                        }
                        entry.sharers.insert(reader);
                        entry.busy = None;
                        send(&mut out, reader, Msg::Data(contents));
                    }
                    Some(Txn::Write {
                        writer,
                        acks,
                        upgrade,
                        scan,
                    }) if acks > 0 => {
                        entry.busy = Some(Txn::Write {
                            writer,
                            acks: acks - 1,
                            upgrade,
                            scan,
                        });
                    }
                    _ => return Err(bad(entry)),
                }
                entry.contents = contents;
                entry.owner = None;
            }
            Msg::Flush(_) | Msg::PutM(_) => return Err(bad(entry)),
            Msg::Inv | Msg::Recall { .. } | Msg::Data(_) | Msg::DataM(_) | Msg::Grant => {
                return Err(bad(entry));
            }
        }
        // A write transaction with every answer in: grant.
        if let Some(Txn::Write {
            writer,
            acks: 0,
            upgrade,
            scan,
        }) = entry.busy
        {
            entry.owner = Some(writer);
            entry.scan_owned = scan;
            entry.busy = None;
            send(&mut out, writer, grant(upgrade, entry.contents));
        }
        // Start the next waiting request, if the page is free.
        while entry.busy.is_none() {
            let Some((node, request)) = entry.waiting.pop_front() else {
                break;
            };
            if entry.owner == Some(node) {
                // The page was pushed to its asker (`Home::push`) while the request was on
                // its way: the push answered it.
                continue;
            }
            // A scan's request takes the page if no node holds a read copy of it.
            let read = match request {
                Msg::GetS => true,
                Msg::GetE => !entry.sharers.is_empty() || entry.scan_owned,
                _ => false,
            };
            if read {
                match entry.owner {
                    Some(owner) => {
                        entry.busy = Some(Txn::Read { reader: node });
                        entry.scan_owned = false;
                        send(&mut out, owner, Msg::Recall { keep: true });
                    }
                    None => {
                        entry.sharers.insert(node);
                        send(&mut out, node, Msg::Data(entry.contents));
                    }
                }
            } else {
                // No one can drop the writer's read copy before the grant: only this
                // transaction could invalidate it.
                let upgrade = entry.sharers.contains(&node);
                let others: Vec<NodeId> = entry
                    .sharers
                    .iter()
                    .copied()
                    .filter(|&s| s != node)
                    .collect();
                let mut acks = others.len() as u32;
                for s in others {
                    send(&mut out, s, Msg::Inv);
                }
                entry.sharers.clear();
                if let Some(owner) = entry.owner {
                    acks += 1;
                    send(&mut out, owner, Msg::Recall { keep: false });
                }
                let scan = request == Msg::GetE;
                if acks == 0 {
                    entry.owner = Some(node);
                    entry.scan_owned = scan;
                    send(&mut out, node, grant(upgrade, entry.contents));
                } else {
                    entry.busy = Some(Txn::Write {
                        writer: node,
                        acks,
                        upgrade,
                        scan,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Hands `page` to node `to` unasked, as if it had asked to write it (`DataM`, or
    /// `Grant` to a node holding a read copy; other copies are invalidated or recalled
    /// first): what a thread going from here to `to` touches first is there when it
    /// arrives. Only a hint: nothing happens if `to` owns the page already, or a transaction
    /// runs or waits on it. A request `to` made meanwhile is answered by the push.
    pub fn push(&mut self, page: u32, to: NodeId) -> Result<Vec<Envelope>, ProtocolError> {
        let Some(entry) = self.pages.get(page as usize) else {
            return Ok(Vec::new());
        };
        if entry.owner == Some(to) || entry.busy.is_some() || !entry.waiting.is_empty() {
            return Ok(Vec::new());
        }
        self.handle(to, page, Msg::GetM)
    }

    /// The number of pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether there are no pages.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The node holding `page` Modified, and the nodes holding it Shared (a node that ends
    /// has these pages only it held).
    pub fn holders(&self, page: u32) -> Option<(Option<NodeId>, &BTreeSet<NodeId>)> {
        self.pages.get(page as usize).map(|e| (e.owner, &e.sharers))
    }

    /// Whether no transaction runs or waits on any page.
    pub fn is_idle(&self) -> bool {
        self.pages
            .iter()
            .all(|e| e.busy.is_none() && e.waiting.is_empty())
    }
}

/// The grant of a write transaction: without data to a writer whose read copy is current.
fn grant(upgrade: bool, contents: Contents) -> Msg {
    if upgrade {
        Msg::Grant
    } else {
        Msg::DataM(contents)
    }
}

/// What a node does for one page: its state, its copy of the contents, and the fault it
/// waits on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cache {
    /// This node.
    pub id: NodeId,
    /// The page's home.
    pub home: NodeId,
    /// The page.
    pub page: u32,
    /// What this node holds.
    pub state: State,
    /// The contents of its copy (meaningful when not Invalid).
    pub contents: Contents,
    /// The access it faulted on and waits for: `Some(false)` a read, `Some(true)` a write.
    pub waiting: Option<bool>,
    /// Whether the read it waits for was asked with `GetE` (so the page itself may come).
    pub may_own: bool,
    /// Whether it gave the page back (`PutM`) and has not held it since: a `Recall` that
    /// finds it holding nothing then crossed that `PutM`, which answers it.
    pub gave_back: bool,
}

impl Cache {
    /// A node `id` holding nothing of `page`, whose home is `home`.
    pub fn new(id: NodeId, home: NodeId, page: u32) -> Cache {
        Cache {
            id,
            home,
            page,
            state: State::Invalid,
            contents: 0,
            waiting: None,
            may_own: false,
            gave_back: false,
        }
    }

    /// The home node's own cache of `page` in a [`Home::owning`] cluster: Modified.
    pub fn owned(id: NodeId, page: u32) -> Cache {
        Cache {
            state: State::Modified,
            ..Cache::new(id, id, page)
        }
    }

    /// Whether an access (a write if `write`) can go ahead now, without a fault.
    pub fn allows(&self, write: bool) -> bool {
        match self.state {
            State::Modified => true,
            State::Shared => !write,
            State::Invalid => false,
        }
    }

    /// A fault on an access (a write if `write`) that [`Cache::allows`] refused: the request
    /// to send (none if one is on its way already: concurrent faults on a page coalesce).
    pub fn fault(&mut self, write: bool) -> Option<Envelope> {
        if let Some(w) = self.waiting {
            // Already asked: a read waits for any answer; a write behind a read asks again
            // once the read is served (see `handle`).
            self.waiting = Some(w || write);
            return None;
        }
        self.waiting = Some(write);
        Some(self.envelope(if write { Msg::GetM } else { Msg::GetS }))
    }

    /// A read fault of a sequential scan: as [`Cache::fault`] for a read, but the request
    /// (`GetE`) takes the page itself if no node holds a read copy of it.
    pub fn fault_scan(&mut self) -> Option<Envelope> {
        let request = self.fault(false)?;
        self.may_own = true;
        Some(Envelope {
            msg: Msg::GetE,
            ..request
        })
    }

    /// Gives the page back to its home if this node holds it Modified (and is not its
    /// home): the `PutM` to send; nothing otherwise. The node holds nothing of it after.
    pub fn give_back(&mut self) -> Option<Envelope> {
        if self.state != State::Modified || self.id == self.home {
            return None;
        }
        self.state = State::Invalid;
        self.gave_back = true;
        Some(self.envelope(Msg::PutM(self.contents)))
    }

    fn envelope(&self, msg: Msg) -> Envelope {
        Envelope {
            from: self.id,
            to: self.home,
            page: self.page,
            msg,
        }
    }

    /// Handles `msg` from the home; returns what to send.
    pub fn handle(&mut self, msg: Msg) -> Result<Vec<Envelope>, ProtocolError> {
        let bad = |c: &Cache| ProtocolError {
            page: c.page,
            from: c.home,
            msg,
            state: format!("{:?}, waiting {:?}", c.state, c.waiting),
        };
        let mut out = Vec::new();
        match msg {
            Msg::Inv => {
                if self.state != State::Shared {
                    return Err(bad(self));
                }
                self.state = State::Invalid;
                out.push(self.envelope(Msg::InvAck));
            }
            Msg::Recall { .. } if self.state != State::Modified && self.gave_back => {
                // Crossed the `PutM` that gave the page back, which answers it.
            }
            Msg::Recall { keep } => {
                if self.state != State::Modified {
                    return Err(bad(self));
                }
                self.state = if keep { State::Shared } else { State::Invalid };
                out.push(self.envelope(Msg::Flush(self.contents)));
            }
            // A read's answer. Also, when a push answered the read already (the home sent
            // the page meanwhile, unasked), the answer to that read arriving after all.
            Msg::Data(contents) => {
                if self.state == State::Modified {
                    return Err(bad(self));
                }
                let asked = self.state == State::Invalid;
                self.state = State::Shared;
                self.contents = contents;
                self.may_own = false;
                self.gave_back = false;
                // A write that came while the read was on its way asks for the page now
                // (from a read copy, it asked already).
                if self.waiting == Some(true) && asked {
                    out.push(self.envelope(Msg::GetM));
                } else if self.waiting != Some(true) {
                    self.waiting = None;
                }
            }
            // A write's answer, a scan's that took the page, or a push (`Home::push`): the
            // page is this node's, whatever it waited for.
            Msg::DataM(contents) => {
                if self.state == State::Modified {
                    return Err(bad(self));
                }
                self.state = State::Modified;
                self.contents = contents;
                self.waiting = None;
                self.may_own = false;
                self.gave_back = false;
            }
            // An upgrade's answer, or a push to a node holding a read copy.
            Msg::Grant => {
                if self.state != State::Shared {
                    return Err(bad(self));
                }
                self.may_own = false;
                self.state = State::Modified;
                self.waiting = None;
            }
            Msg::GetS | Msg::GetM | Msg::GetE | Msg::InvAck | Msg::Flush(_) | Msg::PutM(_) => {
                return Err(bad(self));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
