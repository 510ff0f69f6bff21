//! Decodes arbitrary bytes as the payload of every message type between nodes, and of the
//! answers that have a form of their own: the first two bytes pick the type (as a message's
//! number), the rest is the payload. Each decode gives a message or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop_migrate::msg::{MsgType, check_answer, check_payload};

fuzz_target!(|data: &[u8]| {
    let Some((number, payload)) = data.split_first_chunk::<2>() else {
        return;
    };
    match MsgType::from_number(u16::from_le_bytes(*number)) {
        Some(t) => {
            let _ = check_payload(t, payload);
            let _ = check_answer(t, payload);
        }
        None => {
            // An unknown number: every type must still refuse or take the bytes cleanly.
            for t in MsgType::ALL {
                let _ = check_payload(t, payload);
                let _ = check_answer(t, payload);
            }
        }
    }
});
