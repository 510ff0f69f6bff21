//! The coherence protocol's messages on the wire. One [`PageMsg`] carries one protocol
//! message for each page of a *run* (`count` consecutive pages from `page`, all the same
//! message: 128 read requests of a sequential scan, the 60 pages that answer them), the
//! pages' 4 KiB each after the header when the message carries contents (`Flush`, `PutM`, `Data`,
//! `DataM`). A run is only a way of carrying: the receiver acts on it page by page, exactly
//! as on `count` messages sent one after another. The model's contents values (see
//! [`crate::protocol::Contents`]) do not travel: the real bytes do, and decode as `0`.
//!
//! One frame (one message on the mesh) carries one or more runs back to back, all of one VM:
//! what one batch of work sends a peer goes out as one frame while it fits, so answering a
//! request for a thread's stack and its thread-locals costs one message, not two.
//!
//! A `DataM` run of a whole huge page (512 pages, the answer to a scan's request) may instead
//! be *streamed*: its frame carries the run's header alone (kind 13) and its 2 MiB go, with
//! that header as the record's head, as the next record of the sender's page stream to the
//! receiver (a bulk stream of the VM's, see [`crate::coherent::Link`]). The receiver reads
//! the record before it acts on the run, straight into memory it then moves into the region
//! whole; records come in the order of the frames that announce them. A streamed run is
//! alone in its frame.
//!
//! ```text
//! Frame   = PageMsg+ | Streamed     (at most MAX_FRAME bytes)
//! PageMsg = vm u64 | page u32 | kind u8 | count u16 | count x 4 KiB (if it carries pages)
//! Streamed = vm u64 | page u32 | 13 u8 | 512 u16  (the pages: the next page-stream record)
//! ```

use pop_wire::{Decoder, Encoder, WireError};

use crate::PAGE_SIZE;
use crate::protocol::Msg;

/// Most pages one message names.
pub const MAX_RUN: u32 = 1024;
/// Most pages one message carries the contents of (240 KiB: a message stays inside a
/// 256 KiB frame).
pub const MAX_DATA_RUN: u32 = 60;

/// Most bytes of one frame of runs (a mesh message's payload).
pub const MAX_FRAME: usize = 256 * 1024;
/// Pages of a streamed run: one huge page.
pub const STREAMED_RUN: u32 = 512;
/// Bytes of a message's header (before its pages): also a streamed run's record head.
pub const HEADER: usize = 15;
/// The kind byte of a streamed run.
const STREAMED: u8 = 13;

/// A run read from a frame: the message and where its pages' contents are.
pub type Run<'a> = (PageMsg, Contents<'a>);

/// Where a run's page contents are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contents<'a> {
    /// It carries none (a request, an acknowledgement, a grant).
    None,
    /// In the frame, after the run's header (`count` x 4 KiB).
    Inline(&'a [u8]),
    /// In the sender's next page-stream record (a `DataM` of [`STREAMED_RUN`] pages).
    Streamed,
}

impl<'a> Contents<'a> {
    /// The pages, if the frame carries them.
    pub fn inline(self) -> Option<&'a [u8]> {
        match self {
            Contents::Inline(c) => Some(c),
            Contents::None | Contents::Streamed => None,
        }
    }
}

/// A protocol message about each page of a run of one VM's shared region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMsg {
    /// The VM (its cluster-wide id): a node may hold several VMs' regions.
    pub vm: u64,
    /// The index of the run's first page in the shared region.
    pub page: u32,
    /// How many pages the run has (at least 1; at most [`MAX_RUN`], or [`MAX_DATA_RUN`] for
    /// a message that carries contents).
    pub count: u32,
    /// What, for each of them.
    pub msg: Msg,
}

/// Whether `msg` carries the page's contents.
pub fn carries_page(msg: Msg) -> bool {
    matches!(
        msg,
        Msg::Flush(_) | Msg::Data(_) | Msg::DataM(_) | Msg::PutM(_)
    )
}

/// The most pages a run of `msg` may have.
pub fn max_run(msg: Msg) -> u32 {
    if carries_page(msg) {
        MAX_DATA_RUN
    } else {
        MAX_RUN
    }
}

impl PageMsg {
    /// A message about page `page` alone.
    pub fn one(vm: u64, page: u32, msg: Msg) -> PageMsg {
        PageMsg {
            vm,
            page,
            count: 1,
            msg,
        }
    }

    /// The bytes of the message, with `pages` (`count` x 4 KiB, in page order) after the
    /// header when the message carries contents (ignored otherwise; zeros if it is not that
    /// long).
    pub fn encode(&self, pages: Option<&[u8]>) -> Vec<u8> {
        let with_pages = carries_page(self.msg);
        let len = self.count as usize * PAGE_SIZE as usize;
        let mut e = Encoder::with_capacity(16 + if with_pages { len } else { 0 });
        e.u64(self.vm)
            .u32(self.page)
            .u8(kind(self.msg))
            .u16(self.count as u16);
        if with_pages {
            match pages.filter(|p| p.len() == len) {
                Some(bytes) => e.bytes(bytes),
                None => e.bytes(&vec![0u8; len]),
            };
        }
        e.finish()
    }

    /// The header of a streamed run of `DataM` (the frame that announces it, and the head
    /// of the page-stream record that carries its pages).
    pub fn streamed(vm: u64, page: u32) -> [u8; HEADER] {
        let mut e = Encoder::with_capacity(HEADER);
        e.u64(vm).u32(page).u8(STREAMED).u16(STREAMED_RUN as u16);
        e.finish().try_into().expect("a run header")
    }

    /// Reads a message and, if it carries contents, its pages; rejects anything else (an
    /// unknown kind, an empty or too long run, short pages, trailing bytes).
    pub fn decode(bytes: &[u8]) -> Result<Run<'_>, WireError> {
        let mut d = Decoder::new(bytes);
        let one = Self::decode_next(&mut d)?;
        d.end()?;
        Ok(one)
    }

    /// Reads a frame: one or more messages back to back, all about the same VM (each
    /// checked as [`PageMsg::decode`] checks one), or one streamed run alone.
    pub fn decode_frame(bytes: &[u8]) -> Result<Vec<Run<'_>>, WireError> {
        if bytes.len() > MAX_FRAME {
            return Err(WireError("a frame of page runs too long"));
        }
        let mut d = Decoder::new(bytes);
        let mut runs = vec![Self::decode_next(&mut d)?];
        while !d.rest().is_empty() {
            let next = Self::decode_next(&mut d)?;
            if next.0.vm != runs[0].0.vm {
                return Err(WireError("page runs of two VMs in one frame"));
            }
            runs.push(next);
        }
        if runs.len() > 1 && runs.iter().any(|r| r.1 == Contents::Streamed) {
            return Err(WireError("a streamed page run not alone in its frame"));
        }
        Ok(runs)
    }

    /// Reads the message at `d`.
    fn decode_next<'a>(d: &mut Decoder<'a>) -> Result<Run<'a>, WireError> {
        let vm = d.u64()?;
        let page = d.u32()?;
        let kind = d.u8()?;
        if kind == STREAMED {
            if d.u16()? as u32 != STREAMED_RUN {
                return Err(WireError("a streamed page run that is not one huge page"));
            }
            if page.checked_add(STREAMED_RUN).is_none() {
                return Err(WireError("a page run past the last page"));
            }
            let msg = PageMsg {
                vm,
                page,
                count: STREAMED_RUN,
                msg: Msg::DataM(0),
            };
            return Ok((msg, Contents::Streamed));
        }
        let msg = match kind {
            1 => Msg::GetS,
            2 => Msg::GetM,
            3 => Msg::Inv,
            4 => Msg::InvAck,
            5 => Msg::Recall { keep: true },
            6 => Msg::Recall { keep: false },
            7 => Msg::Flush(0),
            8 => Msg::Data(0),
            9 => Msg::DataM(0),
            10 => Msg::Grant,
            11 => Msg::GetE,
            12 => Msg::PutM(0),
            _ => return Err(WireError("unknown page message")),
        };
        let count = d.u16()? as u32;
        if count == 0 || count > max_run(msg) {
            return Err(WireError("a page run of a bad length"));
        }
        if page.checked_add(count).is_none() {
            return Err(WireError("a page run past the last page"));
        }
        let contents = if carries_page(msg) {
            Contents::Inline(d.bytes(count as usize * PAGE_SIZE as usize)?)
        } else {
            Contents::None
        };
        Ok((
            PageMsg {
                vm,
                page,
                count,
                msg,
            },
            contents,
        ))
    }
}

/// A run gathered page by page straight into one message's bytes: each page's contents are
/// copied once, into the message.
#[derive(Debug)]
pub struct RunBuilder {
    first: PageMsg,
    bytes: Vec<u8>,
    /// Most pages it takes.
    limit: u32,
}

impl RunBuilder {
    /// A run of one message, `msg` about page `page`, with the page's contents if it
    /// carries them (zeros if `contents` is not a page).
    pub fn new(vm: u64, page: u32, msg: Msg, contents: Option<&[u8]>) -> RunBuilder {
        let first = PageMsg::one(vm, page, msg);
        let mut bytes = first.encode(contents);
        if carries_page(msg) {
            bytes.reserve(PAGE_SIZE as usize * 7);
        }
        RunBuilder {
            first,
            bytes,
            limit: max_run(msg),
        }
    }

    /// A run of `DataM` from page `page` (the first of a huge page) that may grow to a
    /// whole huge page ([`STREAMED_RUN`] pages, to be streamed), gathered in `buffer` (its
    /// allocation reused; its contents dropped).
    pub fn whole(vm: u64, page: u32, contents: Option<&[u8]>, mut buffer: Vec<u8>) -> RunBuilder {
        let first = PageMsg::one(vm, page, Msg::DataM(0));
        buffer.clear();
        buffer.reserve(HEADER + STREAMED_RUN as usize * PAGE_SIZE as usize);
        buffer.extend_from_slice(&first.encode(contents));
        RunBuilder {
            first,
            bytes: buffer,
            limit: STREAMED_RUN,
        }
    }

    /// The run so far.
    pub fn message(&self) -> PageMsg {
        self.first
    }

    /// Whether it was made by [`RunBuilder::whole`].
    pub fn is_whole(&self) -> bool {
        self.limit == STREAMED_RUN
    }

    /// Puts `contents` (4 KiB) in as page `page`'s, which the run has (pushed without
    /// them); nothing for a page it does not have.
    pub fn fill(&mut self, page: u32, contents: &[u8]) {
        let m = self.first;
        if carries_page(m.msg) && page >= m.page && page < m.page + m.count {
            let at = HEADER + (page - m.page) as usize * PAGE_SIZE as usize;
            self.bytes[at..at + PAGE_SIZE as usize].copy_from_slice(contents);
        }
    }

    /// Adds `msg` about page `page` if it continues the run (the same message, the next
    /// page, room left); `false` (and nothing added) otherwise.
    pub fn push(&mut self, page: u32, msg: Msg, contents: Option<&[u8]>) -> bool {
        let m = &mut self.first;
        if kind(msg) != kind(m.msg) || Some(page) != m.page.checked_add(m.count) {
            return false;
        }
        if m.count >= self.limit {
            return false;
        }
        m.count += 1;
        if carries_page(msg) {
            match contents.filter(|c| c.len() == PAGE_SIZE as usize) {
                Some(c) => self.bytes.extend_from_slice(c),
                None => self.bytes.resize(self.bytes.len() + PAGE_SIZE as usize, 0),
            }
        }
        true
    }

    /// The message's bytes, as [`PageMsg::encode`] writes them (one message: the caller
    /// of a [`RunBuilder::whole`] run that did not grow whole uses [`RunBuilder::split`]).
    pub fn finish(mut self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(2);
        e.u16(self.first.count as u16);
        self.bytes[HEADER - 2..HEADER].copy_from_slice(&e.finish());
        self.bytes
    }

    /// The run as messages of at most [`max_run`] pages each, in order (one if it is not
    /// longer), and the buffer it was gathered in.
    pub fn split(self) -> (Vec<Vec<u8>>, Vec<u8>) {
        let m = self.first;
        let per = max_run(m.msg);
        if m.count <= per {
            let whole = self.limit > per;
            let mut bytes = self.finish();
            if !whole {
                return (vec![bytes], Vec::new());
            }
            // The message copied out of the large buffer, which is kept for the next.
            let message = bytes.clone();
            bytes.clear();
            return (vec![message], bytes);
        }
        let page = PAGE_SIZE as usize;
        let runs = self.bytes[HEADER..]
            .chunks(per as usize * page)
            .enumerate()
            .map(|(i, pages)| {
                PageMsg {
                    page: m.page + i as u32 * per,
                    count: (pages.len() / page) as u32,
                    ..m
                }
                .encode(Some(pages))
            })
            .collect();
        (runs, self.bytes)
    }
}

fn kind(msg: Msg) -> u8 {
    match msg {
        Msg::GetS => 1,
        Msg::GetM => 2,
        Msg::Inv => 3,
        Msg::InvAck => 4,
        Msg::Recall { keep: true } => 5,
        Msg::Recall { keep: false } => 6,
        Msg::Flush(_) => 7,
        Msg::Data(_) => 8,
        Msg::DataM(_) => 9,
        Msg::Grant => 10,
        Msg::GetE => 11,
        Msg::PutM(_) => 12,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_garbage_is_refused() {
        let page = vec![0xa5u8; PAGE_SIZE as usize];
        for msg in [
            Msg::GetS,
            Msg::GetM,
            Msg::Inv,
            Msg::InvAck,
            Msg::Recall { keep: true },
            Msg::Recall { keep: false },
            Msg::Flush(0),
            Msg::Data(0),
            Msg::DataM(0),
            Msg::Grant,
            Msg::GetE,
            Msg::PutM(0),
        ] {
            let m = PageMsg::one(7, 3, msg);
            let bytes = m.encode(Some(&page));
            let (back, contents) = PageMsg::decode(&bytes).unwrap();
            assert_eq!(back, m);
            assert_eq!(contents.inline().is_some(), carries_page(msg));
            if let Some(c) = contents.inline() {
                assert_eq!(c, &page[..]);
            }
            // Cut short, or with a byte more: refused.
            assert!(PageMsg::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(PageMsg::decode(&longer).is_err());
        }
        let mut bad = PageMsg::one(1, 0, Msg::GetS).encode(None);
        bad[12] = 99;
        assert!(PageMsg::decode(&bad).is_err());
        assert!(PageMsg::decode(&[]).is_err());
    }

    #[test]
    fn runs_carry_their_pages_in_order_and_bad_lengths_are_refused() {
        let pages: Vec<u8> = (0..MAX_DATA_RUN as usize * PAGE_SIZE as usize)
            .map(|i| (i / PAGE_SIZE as usize) as u8)
            .collect();
        let m = PageMsg {
            vm: 2,
            page: 100,
            count: MAX_DATA_RUN,
            msg: Msg::Data(0),
        };
        let bytes = m.encode(Some(&pages));
        assert!(bytes.len() <= 256 << 10);
        let (back, contents) = PageMsg::decode(&bytes).unwrap();
        assert_eq!(back, m);
        assert_eq!(contents.inline().unwrap(), &pages[..]);
        let requests = PageMsg {
            count: MAX_RUN,
            msg: Msg::GetS,
            ..m
        };
        assert_eq!(PageMsg::decode(&requests.encode(None)).unwrap().0, requests);
        for (count, msg) in [
            (0, Msg::GetS),
            (MAX_RUN + 1, Msg::GetS),
            (MAX_DATA_RUN + 1, Msg::Data(0)),
        ] {
            let m = PageMsg { count, msg, ..m };
            assert!(PageMsg::decode(&m.encode(None)).is_err(), "{m:?}");
        }
        let past = PageMsg {
            page: u32::MAX,
            count: 2,
            msg: Msg::Inv,
            ..m
        };
        assert!(PageMsg::decode(&past.encode(None)).is_err());
    }

    #[test]
    fn a_frame_carries_runs_in_order_and_refuses_mixed_vms_or_a_cut() {
        let page = vec![7u8; PAGE_SIZE as usize];
        let stack = PageMsg {
            vm: 5,
            page: 1000,
            count: 1,
            msg: Msg::DataM(0),
        };
        let tls = PageMsg::one(5, 0, Msg::GetM);
        let mut frame = stack.encode(Some(&page));
        frame.extend(tls.encode(None));
        let runs = PageMsg::decode_frame(&frame).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].0, runs[0].1), (stack, Contents::Inline(&page[..])));
        assert_eq!((runs[1].0, runs[1].1), (tls, Contents::None));
        // One message alone is a frame too; a frame is not one message.
        assert_eq!(PageMsg::decode_frame(&tls.encode(None)).unwrap().len(), 1);
        assert!(PageMsg::decode(&frame).is_err());
        for cut in [0, 1, frame.len() - 1] {
            assert!(
                PageMsg::decode_frame(&frame[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut mixed = frame.clone();
        mixed.extend(PageMsg::one(6, 0, Msg::GetS).encode(None));
        assert!(PageMsg::decode_frame(&mixed).is_err());
        assert!(PageMsg::decode_frame(&vec![0u8; MAX_FRAME + 1]).is_err());
    }

    #[test]
    fn a_built_run_is_what_encode_writes() {
        let page = |i: u8| vec![i; PAGE_SIZE as usize];
        let mut run = RunBuilder::new(3, 10, Msg::Data(0), Some(&page(0)));
        for i in 1..MAX_DATA_RUN {
            assert!(run.push(10 + i, Msg::Data(0), Some(&page(i as u8))));
        }
        // Full, not the next page, or another message: not added.
        assert!(!run.push(10 + MAX_DATA_RUN, Msg::Data(0), None));
        let m = run.message();
        assert_eq!(m.count, MAX_DATA_RUN);
        let all: Vec<u8> = (0..MAX_DATA_RUN as u8).flat_map(page).collect();
        assert_eq!(run.finish(), m.encode(Some(&all)));
        let mut run = RunBuilder::new(3, 10, Msg::Inv, None);
        assert!(!run.push(12, Msg::Inv, None));
        assert!(!run.push(11, Msg::InvAck, None));
        assert!(run.push(11, Msg::Inv, None));
        assert!(!run.push(12, Msg::Recall { keep: true }, None));
        assert_eq!(
            run.finish(),
            PageMsg {
                vm: 3,
                page: 10,
                count: 2,
                msg: Msg::Inv
            }
            .encode(None)
        );
    }

    #[test]
    fn a_streamed_run_is_one_huge_page_alone_in_its_frame() {
        let head = PageMsg::streamed(9, 1024);
        let runs = PageMsg::decode_frame(&head).unwrap();
        assert_eq!(
            runs,
            vec![(
                PageMsg {
                    vm: 9,
                    page: 1024,
                    count: STREAMED_RUN,
                    msg: Msg::DataM(0)
                },
                Contents::Streamed
            )]
        );
        // With another run in its frame, of another length, or cut: refused.
        let mut two = head.to_vec();
        two.extend(PageMsg::one(9, 0, Msg::GetS).encode(None));
        assert!(PageMsg::decode_frame(&two).is_err());
        let mut short = head;
        short[13] = 1;
        assert!(PageMsg::decode_frame(&short).is_err());
        assert!(PageMsg::decode_frame(&head[..HEADER - 1]).is_err());
        let past = PageMsg::streamed(9, u32::MAX - 3);
        assert!(PageMsg::decode_frame(&past).is_err());
    }

    #[test]
    fn a_whole_run_grows_to_a_huge_page_or_splits_into_messages() {
        let page = |i: u32| vec![i as u8; PAGE_SIZE as usize];
        let mut run = RunBuilder::whole(3, 512, Some(&page(0)), vec![1; 10]);
        for i in 1..STREAMED_RUN {
            assert!(run.push(512 + i, Msg::DataM(0), Some(&page(i))));
        }
        assert!(!run.push(512 + STREAMED_RUN, Msg::DataM(0), None));
        assert_eq!(run.message().count, STREAMED_RUN);
        let bytes = run.finish();
        let all: Vec<u8> = (0..STREAMED_RUN).flat_map(page).collect();
        assert_eq!(&bytes[HEADER..], &all[..]);
        // Cut short at 130 pages: three messages of at most 60 pages, every page in order.
        let mut run = RunBuilder::whole(3, 512, Some(&page(0)), bytes);
        for i in 1..130 {
            assert!(run.push(512 + i, Msg::DataM(0), Some(&page(i))));
        }
        let (runs, buffer) = run.split();
        assert!(buffer.capacity() >= STREAMED_RUN as usize * PAGE_SIZE as usize);
        let mut next = 512;
        for r in &runs {
            let (m, c) = PageMsg::decode(r).unwrap();
            assert_eq!((m.page, m.msg), (next, Msg::DataM(0)));
            assert!(m.count <= MAX_DATA_RUN);
            for (i, p) in c.inline().unwrap().chunks(PAGE_SIZE as usize).enumerate() {
                assert_eq!(p, &page(m.page - 512 + i as u32)[..]);
            }
            next += m.count;
        }
        assert_eq!((runs.len(), next), (3, 512 + 130));
    }
}
