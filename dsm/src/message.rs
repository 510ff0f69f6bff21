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
//! ```text
//! Frame   = PageMsg+                (at most MAX_FRAME bytes)
//! PageMsg = vm u64 | page u32 | kind u8 | count u16 | count x 4 KiB (if it carries pages)
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

/// A run read from a frame: the message and, if it carries contents, its pages.
pub type Run<'a> = (PageMsg, Option<&'a [u8]>);

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

    /// Reads a message and, if it carries contents, its pages; rejects anything else (an
    /// unknown kind, an empty or too long run, short pages, trailing bytes).
    pub fn decode(bytes: &[u8]) -> Result<(PageMsg, Option<&[u8]>), WireError> {
        let mut d = Decoder::new(bytes);
        let one = Self::decode_next(&mut d)?;
        d.end()?;
        Ok(one)
    }

    /// Reads a frame: one or more messages back to back, all about the same VM (each
    /// checked as [`PageMsg::decode`] checks one).
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
        Ok(runs)
    }

    /// Reads the message at `d`.
    fn decode_next<'a>(d: &mut Decoder<'a>) -> Result<Run<'a>, WireError> {
        let vm = d.u64()?;
        let page = d.u32()?;
        let msg = match d.u8()? {
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
            Some(d.bytes(count as usize * PAGE_SIZE as usize)?)
        } else {
            None
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

/// Bytes of a message's header (before its pages).
const HEADER: usize = 15;

/// A run gathered page by page straight into one message's bytes: each page's contents are
/// copied once, into the message.
#[derive(Debug)]
pub struct RunBuilder {
    first: PageMsg,
    bytes: Vec<u8>,
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
        RunBuilder { first, bytes }
    }

    /// The run so far.
    pub fn message(&self) -> PageMsg {
        self.first
    }

    /// Adds `msg` about page `page` if it continues the run (the same message, the next
    /// page, room left); `false` (and nothing added) otherwise.
    pub fn push(&mut self, page: u32, msg: Msg, contents: Option<&[u8]>) -> bool {
        let m = &mut self.first;
        if kind(msg) != kind(m.msg) || Some(page) != m.page.checked_add(m.count) {
            return false;
        }
        if m.count >= max_run(msg) {
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

    /// The message's bytes, as [`PageMsg::encode`] writes them.
    pub fn finish(mut self) -> Vec<u8> {
        let mut e = Encoder::with_capacity(2);
        e.u16(self.first.count as u16);
        self.bytes[HEADER - 2..HEADER].copy_from_slice(&e.finish());
        self.bytes
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
            assert_eq!(contents.is_some(), carries_page(msg));
            if let Some(c) = contents {
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
        assert_eq!(contents.unwrap(), &pages[..]);
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
        assert_eq!((runs[0].0, runs[0].1), (stack, Some(&page[..])));
        assert_eq!((runs[1].0, runs[1].1), (tls, None));
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
}
