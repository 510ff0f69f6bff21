//! Guest crash reports: what happened, where (symbolized), the registers and a backtrace
//! walked along the frame pointers. Debug information is only loaded here, after a crash.

mod backtrace;
mod symbolize;

use std::fmt::Write;

pub use backtrace::{MAX_FRAMES, walk_frame_pointers};
pub use symbolize::{SymbolInfo, Symbolizer};

use crate::arch::Crash;
use crate::image::Image;
use crate::memory::GuestMem;

/// Formats the full report of `crash`: headline, register dump and backtrace.
pub fn report(crash: &Crash, mem: &GuestMem, image: &Image) -> String {
    let symbolizer = Symbolizer::new(&image.bytes);
    let mut out = String::new();
    let _ = write!(
        out,
        "popvmm: guest fault: {} at {:#x}",
        crash.what, crash.pc
    );
    if let Some(place) = symbolizer.lookup(crash.pc).first() {
        let _ = write!(out, " in {}", place.function);
        if let Some(location) = &place.location {
            let _ = write!(out, " ({location})");
        }
    }
    if let Some(detail) = &crash.detail {
        let _ = write!(out, ", {detail}");
    }
    out.push('\n');
    out.push_str(&crash.registers);
    out.push_str("backtrace:\n");
    for (i, pc) in walk_frame_pointers(mem, crash.pc, crash.frame_pointer)
        .into_iter()
        .enumerate()
    {
        // A return address points after the call; look up the call itself.
        let probe = if i == 0 { pc } else { pc.saturating_sub(1) };
        let places = symbolizer.lookup(probe);
        let _ = write!(out, "  #{i} {pc:#x}");
        for (depth, place) in places.iter().enumerate() {
            if depth > 0 {
                out.push_str("\n      inlined into");
            }
            let _ = write!(out, " {}", place.function);
            if let Some(location) = &place.location {
                let _ = write!(out, " at {location}");
            }
        }
        out.push('\n');
    }
    out
}
