//! The images this process has (of VMs it launched or that arrived here), by SHA-256 digest,
//! so that a VM moving to a node that already has its image does not send it again (a VM
//! moving back and forth sends it once).

use std::sync::{Arc, Mutex, OnceLock};

use sha2::{Digest, Sha256};

use vmm::image::ImageBytes;

/// Images kept (the most recently used).
const KEPT: usize = 8;

/// A SHA-256 digest.
pub type Sha = [u8; 32];

/// Images by digest, the most recently used first.
type Kept = Mutex<Vec<(Sha, Arc<ImageBytes>)>>;

fn images() -> &'static Kept {
    static IMAGES: OnceLock<Kept> = OnceLock::new();
    IMAGES.get_or_init(Mutex::default)
}

fn keep(digest: Sha, bytes: &Arc<ImageBytes>) {
    let mut images = vmm::sync::lock(images());
    images.retain(|(d, _)| *d != digest);
    images.insert(0, (digest, bytes.clone()));
    images.truncate(KEPT);
}

/// The digest of `bytes` (computed once per image, then remembered with it).
pub fn digest_of(bytes: &Arc<ImageBytes>) -> Sha {
    let known = vmm::sync::lock(images())
        .iter()
        .find(|(_, b)| Arc::ptr_eq(b, bytes))
        .map(|(d, _)| *d);
    known.unwrap_or_else(|| {
        let digest: Sha = Sha256::digest(&bytes[..]).into();
        keep(digest, bytes);
        digest
    })
}

/// Remembers an image that arrived (its digest is computed here, not taken on trust).
pub fn remember(bytes: &Arc<ImageBytes>) {
    digest_of(bytes);
}

/// The image with this digest, if this process has it.
pub fn find(digest: &Sha) -> Option<Arc<ImageBytes>> {
    vmm::sync::lock(images())
        .iter()
        .find(|(d, _)| d == digest)
        .map(|(_, b)| b.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_found_by_their_own_digest() {
        let a = Arc::new(ImageBytes::from(b"an image".to_vec()));
        let d = digest_of(&a);
        let expected: Sha = Sha256::digest(b"an image").into();
        assert_eq!(d, expected);
        assert!(Arc::ptr_eq(&find(&d).unwrap(), &a));
        assert!(find(&[7; 32]).is_none());
    }
}
