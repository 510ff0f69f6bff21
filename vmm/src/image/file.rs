//! The bytes of an image file, mapped rather than read: only the pages that are looked at
//! (headers, loadable segments; debug information only after a crash) are ever faulted in,
//! which matters for multi-megabyte debug builds.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, MmapRegion};

/// An image file's contents.
#[derive(Debug)]
pub enum ImageBytes {
    /// Bytes owned in memory (images built in memory, empty files).
    Owned(Vec<u8>),
    /// A private read-only mapping of the file.
    Mapped(MmapRegion),
}

impl ImageBytes {
    /// Maps the file at `path` read-only.
    pub fn map(path: &Path) -> std::io::Result<ImageBytes> {
        let file = File::open(path)?;
        let metadata = file.metadata()?;
        if metadata.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
        }
        let len = metadata.len();
        if len == 0 {
            return Ok(ImageBytes::Owned(Vec::new()));
        }
        let size =
            usize::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ)
            .with_mmap_flags(libc::MAP_PRIVATE)
            .build()
            .map(ImageBytes::Mapped)
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

impl Deref for ImageBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ImageBytes::Owned(bytes) => bytes,
            // SAFETY: the region is a live, readable private mapping of `size()` bytes that
            // lives as long as `self`. popvmm never writes to it; a concurrent modification of
            // the file by another process is outside the guarantees popvmm gives (as for any
            // executable being run).
            ImageBytes::Mapped(region) => unsafe {
                std::slice::from_raw_parts(region.as_ptr(), region.size())
            },
        }
    }
}

impl From<Vec<u8>> for ImageBytes {
    fn from(bytes: Vec<u8>) -> ImageBytes {
        ImageBytes::Owned(bytes)
    }
}
