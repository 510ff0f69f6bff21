//! Decodes arbitrary bytes as a `VmState` (what `COMMIT` carries): a state or an error, never
//! a panic; a state that decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::vm::state::VmState;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = pop_wire::from_bytes::<VmState>(data) {
        let _ = state.check(128);
        assert_eq!(pop_wire::to_bytes(&state), data);
    }
});
