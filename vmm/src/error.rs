//! Why a VM cannot be made, started or restored.

use crate::boot::ArgsTooLarge;
use crate::image::ImageError;
use crate::memory::MapError;

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
    /// The guest's scratch `/tmp` cannot be made on the host.
    #[error("cannot make the guest's /tmp: {0}")]
    Scratch(#[source] std::io::Error),
    /// A saved VM state cannot be restored here.
    #[error("the VM's state cannot be restored here: {0}")]
    BadState(pop_wire::WireError),
}
