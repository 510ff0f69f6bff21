//! The coherence protocol's messages on the wire: one [`PageMsg`] per protocol message, the
//! page's 4 KiB after it when the message carries contents (`Flush`, `Data`, `DataM`). The
//! model's contents values (see [`crate::protocol::Contents`]) do not travel: the real bytes
//! do, and decode as `0`.

use pop_wire::{Decoder, Encoder, WireError};

use crate::PAGE_SIZE;
use crate::protocol::Msg;

/// A protocol message about one page of one VM's shared region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageMsg {
    /// The VM (its cluster-wide id): a node may hold several VMs' regions.
    pub vm: u64,
    /// The page's index in the shared region.
    pub page: u32,
    /// What.
    pub msg: Msg,
}

/// Whether `msg` carries the page's contents.
pub fn carries_page(msg: Msg) -> bool {
    matches!(msg, Msg::Flush(_) | Msg::Data(_) | Msg::DataM(_))
}

impl PageMsg {
    /// The bytes of the message, with `page` (4 KiB) after the header when the message
    /// carries contents (`page` is ignored otherwise).
    pub fn encode(&self, page: Option<&[u8]>) -> Vec<u8> {
        let with_page = carries_page(self.msg);
        let mut e = Encoder::with_capacity(16 + if with_page { PAGE_SIZE as usize } else { 0 });
        e.u64(self.vm).u32(self.page).u8(kind(self.msg));
        if with_page {
            let zeros = [0u8; PAGE_SIZE as usize];
            let bytes = page.filter(|p| p.len() == PAGE_SIZE as usize);
            e.bytes(bytes.unwrap_or(&zeros));
        }
        e.finish()
    }

    /// Reads a message and, if it carries contents, its page; rejects anything else (an
    /// unknown kind, a short page, trailing bytes).
    pub fn decode(bytes: &[u8]) -> Result<(PageMsg, Option<&[u8]>), WireError> {
        let mut d = Decoder::new(bytes);
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
            _ => return Err(WireError("unknown page message")),
        };
        let contents = if carries_page(msg) {
            Some(d.bytes(PAGE_SIZE as usize)?)
        } else {
            None
        };
        d.end()?;
        Ok((PageMsg { vm, page, msg }, contents))
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
        ] {
            let m = PageMsg {
                vm: 7,
                page: 3,
                msg,
            };
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
        let mut bad = PageMsg {
            vm: 1,
            page: 0,
            msg: Msg::GetS,
        }
        .encode(None);
        bad[12] = 99;
        assert!(PageMsg::decode(&bad).is_err());
        assert!(PageMsg::decode(&[]).is_err());
    }
}
