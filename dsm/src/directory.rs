//! What this node holds of each page of a region: one state per page, changed only through
//! [`step`], a pure function of the state and an event that also says what to do. The fault
//! path and the push path of post-copy both go through it, so the rules are written once and
//! checked exhaustively by the tests below:
//!
//! * a page is fetched at most once (only a fault on an [`PageState::Absent`] page fetches);
//! * [`PageState::Present`] is final: nothing makes a page absent again (post-copy never
//!   gives a page back; the DSM's invalidations will add their own event);
//! * every fault leaves the page present or being fetched, so no toucher waits forever once
//!   the fetch it waits for ends (it ends in `Arrived` or `Lost`, both giving `Present`).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// What this node has of one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageState {
    /// Not here: another node holds it.
    Absent = 0,
    /// A fetch is on its way.
    Fetching = 1,
    /// Here, in guest memory.
    Present = 2,
}

impl PageState {
    fn from_u8(v: u8) -> PageState {
        match v {
            0 => PageState::Absent,
            1 => PageState::Fetching,
            _ => PageState::Present,
        }
    }
}

/// Something that happens to a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A vCPU (or the VMM) touched it and the kernel reported a fault.
    Fault,
    /// A fetched copy was placed.
    Arrived,
    /// The owner pushed it and it was placed (or found there).
    Pushed,
    /// Its fetch failed; the page was filled with zeros to release the toucher (the VM is
    /// ending with an error).
    Lost,
}

/// What the caller must do after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Fetch the page from its owner, then report [`Event::Arrived`] or [`Event::Lost`].
    Fetch,
    /// Nothing: the page is here, or a fetch is already on its way.
    Nothing,
}

/// The state machine: the next state of a page and what to do.
pub fn step(state: PageState, event: Event) -> (PageState, Action) {
    use {Action::*, Event::*, PageState::*};
    match (state, event) {
        (Absent, Fault) => (Fetching, Fetch),
        (Fetching, Fault) | (Present, Fault) => (state, Nothing),
        (_, Arrived | Pushed | Lost) => (Present, Nothing),
    }
}

/// One [`PageState`] per page of a region, shared by threads, with counts of what happened.
#[derive(Debug)]
pub struct PageDirectory {
    pages: Box<[AtomicU8]>,
    fetched: AtomicU64,
    pushed: AtomicU64,
    faults: AtomicU64,
}

/// Counts of a directory's events (for statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Faults reported.
    pub faults: u64,
    /// Pages fetched on a fault.
    pub fetched: u64,
    /// Pages placed by a push.
    pub pushed: u64,
}

impl PageDirectory {
    /// A directory of `pages` pages, all [`PageState::Absent`].
    pub fn new(pages: usize) -> PageDirectory {
        PageDirectory {
            pages: (0..pages)
                .map(|_| AtomicU8::new(PageState::Absent as u8))
                .collect(),
            fetched: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            faults: AtomicU64::new(0),
        }
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether the directory covers no page.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The state of page `index`, or `None` past the end.
    pub fn state(&self, index: usize) -> Option<PageState> {
        Some(PageState::from_u8(
            self.pages.get(index)?.load(Ordering::Acquire),
        ))
    }

    /// Applies `event` to page `index` (atomically: concurrent events on one page are
    /// serialised) and returns what to do; `None` past the end.
    pub fn apply(&self, index: usize, event: Event) -> Option<Action> {
        let slot = self.pages.get(index)?;
        let mut current = slot.load(Ordering::Acquire);
        loop {
            let (next, action) = step(PageState::from_u8(current), event);
            match slot.compare_exchange_weak(
                current,
                next as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    let counter = match (event, action) {
                        (Event::Fault, _) => Some(&self.faults),
                        (Event::Pushed, _) if PageState::from_u8(current) != PageState::Present => {
                            Some(&self.pushed)
                        }
                        _ => None,
                    };
                    if let Some(c) = counter {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    if action == Action::Fetch {
                        self.fetched.fetch_add(1, Ordering::Relaxed);
                    }
                    return Some(action);
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// How many pages are in each state: (absent, fetching, present).
    pub fn census(&self) -> (usize, usize, usize) {
        let mut n = (0, 0, 0);
        for p in self.pages.iter() {
            match PageState::from_u8(p.load(Ordering::Relaxed)) {
                PageState::Absent => n.0 += 1,
                PageState::Fetching => n.1 += 1,
                PageState::Present => n.2 += 1,
            }
        }
        n
    }

    /// What happened so far.
    pub fn counts(&self) -> Counts {
        Counts {
            faults: self.faults.load(Ordering::Relaxed),
            fetched: self.fetched.load(Ordering::Relaxed),
            pushed: self.pushed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashSet, VecDeque};

    const STATES: [PageState; 3] = [PageState::Absent, PageState::Fetching, PageState::Present];
    const EVENTS: [Event; 4] = [Event::Fault, Event::Arrived, Event::Pushed, Event::Lost];

    #[test]
    fn present_is_final_and_only_an_absent_fault_fetches() {
        for s in STATES {
            for e in EVENTS {
                let (next, action) = step(s, e);
                if s == PageState::Present {
                    assert_eq!(next, PageState::Present, "{s:?} {e:?}");
                }
                assert_eq!(
                    action == Action::Fetch,
                    s == PageState::Absent && e == Event::Fault,
                    "{s:?} {e:?}"
                );
            }
        }
    }

    /// One page, two vCPUs faulting on it, the owner's push and the fetch's answer, in every
    /// order: explores every reachable (state, outstanding fetches, waiting vCPUs) and checks
    /// that a page is fetched at most once, and that no vCPU waits once nothing is pending.
    #[test]
    fn every_interleaving_fetches_once_and_releases_every_toucher() {
        // (state, fetch in flight, fetches started, vCPUs still to fault, vCPUs waiting,
        //  push still to come)
        type World = (PageState, bool, u8, u8, u8, bool);
        let start: World = (PageState::Absent, false, 0, 2, 0, true);
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([start]);
        while let Some(w) = queue.pop_front() {
            if !seen.insert(w) {
                continue;
            }
            let (state, in_flight, fetches, to_fault, waiting, push) = w;
            assert!(fetches <= 1, "fetched twice: {w:?}");
            let mut next = Vec::new();
            if to_fault > 0 && state != PageState::Present {
                // A touch of a missing page faults and waits.
                let (s, a) = step(state, Event::Fault);
                let f = a == Action::Fetch;
                next.push((
                    s,
                    in_flight || f,
                    fetches + f as u8,
                    to_fault - 1,
                    waiting + 1,
                    push,
                ));
            }
            if to_fault > 0 && state == PageState::Present {
                next.push((state, in_flight, fetches, to_fault - 1, waiting, push));
            }
            if in_flight {
                for e in [Event::Arrived, Event::Lost] {
                    let (s, _) = step(state, e);
                    next.push((s, false, fetches, to_fault, 0, push));
                }
            }
            if push {
                let (s, _) = step(state, Event::Pushed);
                next.push((s, in_flight, fetches, to_fault, 0, false));
            }
            if next.is_empty() {
                assert_eq!(waiting, 0, "a vCPU waits forever: {w:?}");
                assert_eq!(state, PageState::Present, "ended absent: {w:?}");
            }
            queue.extend(next);
        }
        assert!(seen.len() > 10);
    }

    #[test]
    fn the_directory_counts_and_serialises() {
        let d = PageDirectory::new(4);
        assert_eq!(d.apply(1, Event::Fault), Some(Action::Fetch));
        assert_eq!(d.apply(1, Event::Fault), Some(Action::Nothing));
        assert_eq!(d.state(1), Some(PageState::Fetching));
        assert_eq!(d.apply(1, Event::Arrived), Some(Action::Nothing));
        assert_eq!(d.apply(2, Event::Pushed), Some(Action::Nothing));
        assert_eq!(d.apply(2, Event::Pushed), Some(Action::Nothing));
        assert_eq!(d.apply(9, Event::Fault), None);
        assert_eq!(d.census(), (2, 0, 2));
        assert_eq!(
            d.counts(),
            Counts {
                faults: 2,
                fetched: 1,
                pushed: 1
            }
        );
        // Many threads faulting on one page: exactly one fetch.
        let d = PageDirectory::new(1);
        let fetches: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (d.apply(0, Event::Fault) == Some(Action::Fetch)) as usize))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(fetches, 1);
    }
}
