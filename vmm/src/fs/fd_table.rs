//! The guest's file descriptor table: stdio at 0..=2, then the lowest free number.

use pop_abi::errno::{EBADF, EMFILE};
use pop_wire::{Decode, Decoder, Encode, Encoder, WireError};

use super::op::STDIN;

/// Most file descriptors the guest may hold at once.
pub const MAX_FDS: usize = 1024;

/// What a guest file descriptor refers to. Descriptors made by `dup` share the handle (and
/// its offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fd {
    /// The guest's standard output (the VM's output path).
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// A handle of the VM's home files (its standard input is handle 0).
    Home(u64),
}

/// File descriptor numbers to what they refer to. It moves with the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdTable {
    slots: Vec<Option<Fd>>,
}

/// A slot: 0 free, 1 stdout, 2 stderr, 3 and a handle.
fn encode_slot(e: &mut Encoder, slot: Option<Fd>) {
    match slot {
        None => e.u8(0),
        Some(Fd::Stdout) => e.u8(1),
        Some(Fd::Stderr) => e.u8(2),
        Some(Fd::Home(handle)) => e.u8(3).u64(handle),
    };
}

fn decode_slot(d: &mut Decoder<'_>) -> Result<Option<Fd>, WireError> {
    Ok(match d.u8()? {
        0 => None,
        1 => Some(Fd::Stdout),
        2 => Some(Fd::Stderr),
        3 => Some(Fd::Home(d.u64()?)),
        _ => return Err(WireError("bad descriptor")),
    })
}

impl Encode for Fd {
    fn encode(&self, e: &mut Encoder) {
        encode_slot(e, Some(*self));
    }
}

impl Decode for Fd {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        decode_slot(d)?.ok_or(WireError("a free slot where a descriptor was expected"))
    }
}

impl Encode for FdTable {
    fn encode(&self, e: &mut Encoder) {
        e.u32(self.slots.len() as u32);
        for slot in &self.slots {
            encode_slot(e, *slot);
        }
    }
}

impl Decode for FdTable {
    /// Refuses a table longer than [`MAX_FDS`] (it comes from the network).
    fn decode(d: &mut Decoder<'_>) -> Result<Self, WireError> {
        let n = d.u32()? as usize;
        if n > MAX_FDS {
            return Err(WireError("descriptor table too long"));
        }
        let mut slots = Vec::with_capacity(n.min(d.rest().len()));
        for _ in 0..n {
            slots.push(decode_slot(d)?);
        }
        Ok(FdTable { slots })
    }
}

impl Default for FdTable {
    fn default() -> Self {
        FdTable {
            slots: vec![Some(Fd::Home(STDIN)), Some(Fd::Stdout), Some(Fd::Stderr)],
        }
    }
}

impl FdTable {
    /// The handle of `fd`.
    pub fn get(&self, fd: i64) -> Result<Fd, i32> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| *self.slots.get(i)?)
            .ok_or(EBADF)
    }

    /// Installs `handle` at the lowest free number from 3 (0..=2 once closed, too).
    pub fn insert(&mut self, handle: Fd) -> Result<i64, i32> {
        if let Some(free) = self.slots.iter().position(Option::is_none) {
            self.slots[free] = Some(handle);
            return Ok(free as i64);
        }
        if self.slots.len() >= MAX_FDS {
            return Err(EMFILE);
        }
        self.slots.push(Some(handle));
        Ok(self.slots.len() as i64 - 1)
    }

    /// Removes `fd`.
    pub fn remove(&mut self, fd: i64) -> Result<Fd, i32> {
        let slot = usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .ok_or(EBADF)?;
        let handle = slot.take().ok_or(EBADF)?;
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        Ok(handle)
    }

    /// Whether any descriptor refers to home handle `handle`.
    pub fn refers_to(&self, handle: u64) -> bool {
        self.slots.contains(&Some(Fd::Home(handle)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Fd {
        Fd::Home(9)
    }

    #[test]
    fn lowest_free_number_and_limit() {
        let mut t = FdTable::default();
        assert_eq!(t.insert(file()), Ok(3));
        assert_eq!(t.insert(file()), Ok(4));
        assert!(t.remove(3).is_ok());
        assert_eq!(t.remove(3).unwrap_err(), EBADF);
        assert_eq!(t.insert(file()), Ok(3));
        assert_eq!(t.get(-1).unwrap_err(), EBADF);
        assert_eq!(t.get(99).unwrap_err(), EBADF);
        for _ in 5..MAX_FDS {
            t.insert(Fd::Stderr).unwrap();
        }
        assert_eq!(t.insert(Fd::Stderr), Err(EMFILE));
        assert_eq!(t.get(1), Ok(Fd::Stdout));
        assert!(t.refers_to(9));
        let bytes = pop_wire::to_bytes(&t);
        assert_eq!(pop_wire::from_bytes::<FdTable>(&bytes).unwrap(), t);
        let mut long = (MAX_FDS as u32 + 1).to_le_bytes().to_vec();
        long.resize(long.len() + MAX_FDS + 1, 0);
        assert!(pop_wire::from_bytes::<FdTable>(&long).is_err());
        assert!(pop_wire::from_bytes::<FdTable>(&[1, 0, 0, 0, 9]).is_err());
    }
}
