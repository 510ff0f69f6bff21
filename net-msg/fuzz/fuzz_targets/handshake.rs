//! Plays an arbitrary peer against both sides of the handshake: the bytes are what the peer
//! sends. Neither side may panic, and neither may accept without the shared secret (random
//! bytes cannot carry a valid HMAC).
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use net_msg::Secret;
use net_msg::handshake::{Params, initiate, respond};

/// A stream whose reads come from the fuzzer and whose writes are dropped.
struct Peer<'a>(&'a [u8]);

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let secret = Secret::new(&b"fuzzing secret, 16+ bytes"[..]).unwrap();
    for frame_mac in [true, false] {
        let p = Params {
            secret: &secret,
            local: 1,
            nodes: 3,
            frame_mac,
        };
        assert!(respond(&mut Peer(data), &p, |id, _| id == 2).is_err());
        assert!(initiate(&mut Peer(data), &p, 0).is_err());
    }
});
