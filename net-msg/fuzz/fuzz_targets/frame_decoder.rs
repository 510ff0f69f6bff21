//! Feeds arbitrary bytes to the frame decoder, with and without frame tags: it must return
//! frames or an error, never panic, and never allocate more than one maximum payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net_msg::frame::{FrameMac, HEADER_LEN, Header, MAX_PAYLOAD, read_frame};

fuzz_target!(|data: &[u8]| {
    if data.len() >= HEADER_LEN {
        let h: [u8; HEADER_LEN] = data[..HEADER_LEN].try_into().unwrap();
        if let Ok(header) = Header::decode(&h) {
            assert!(header.len as usize <= MAX_PAYLOAD);
            assert_eq!(header.encode(), h);
        }
    }
    for mac in [None, Some(FrameMac::new([7; 32]))] {
        let mut mac = mac;
        let mut r = data;
        while let Ok(f) = read_frame(&mut r, mac.as_mut()) {
            assert_eq!(f.payload.len(), f.header.len as usize);
        }
    }
});
