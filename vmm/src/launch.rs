//! `popvmm launch`: from an image path and a configuration to the guest's exit status.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::boot::ArgsTooLarge;
use crate::config::VmConfig;
use crate::image::{Image, ImageError};
use crate::memory::MapError;
use crate::timings::Timings;
use crate::vm::{Outcome, Vm};

/// Exit status of `popvmm` when it cannot run the guest at all (like `docker run`), so that
/// it differs from the application's own statuses.
pub const EXIT_VMM_ERROR: i32 = 125;

/// Why a guest could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The image is unusable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// `/dev/kvm` cannot be opened.
    #[error("cannot open /dev/kvm: {0}; is KVM available?")]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM call failed while setting up the VM.
    #[error("KVM: {what}: {source}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory cannot be mapped.
    #[error(transparent)]
    Memory(#[from] MapError),
    /// The arguments and environment are too large.
    #[error(transparent)]
    Args(#[from] ArgsTooLarge),
    /// The main thread's vCPU cannot be created.
    #[error("cannot create the first vCPU")]
    Vcpu,
    /// A saved VM state cannot be restored here.
    #[error("the VM's state cannot be restored here: {0}")]
    BadState(pop_wire::WireError),
}

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
