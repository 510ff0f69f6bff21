//! `popvmm launch`: from an image path and a configuration to the guest's exit status.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::VmConfig;
use crate::image::Image;
use crate::outcome::Outcome;
use crate::timings::Timings;
use crate::vm::Vm;

pub use crate::error::LaunchError;
pub use crate::outcome::EXIT_VMM_ERROR;

/// Runs the image at `image_path` with `config` until the guest ends. `process_start` is when
/// the process started (for `--timings`).
pub fn launch(
    image_path: &Path,
    config: &VmConfig,
    process_start: Instant,
) -> Result<Outcome, LaunchError> {
    let timings = Arc::new(Timings::new(process_start));
    let image = timings.load(|| Image::from_file(image_path))?;
    run_image(image, config, timings)
}

/// Runs an already validated image.
pub fn run_image(
    image: Image,
    config: &VmConfig,
    timings: Arc<Timings>,
) -> Result<Outcome, LaunchError> {
    let vm = Vm::new(image, config, timings.clone())?;
    let outcome = vm.run()?;
    if config.timings {
        config
            .stderr
            .write_all_lossy(&format!("{}\n", timings.summary()));
    }
    Ok(outcome)
}
