//! Positioned reads from a disk image, without loading it whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A readable block device: a raw image file, a window of one (a
/// partition), or bytes in memory.
///
/// `read_at` fills the whole buffer or fails; reads past the end are errors,
/// never short reads.
pub trait BlockDevice: Send + Sync {
    /// Size of the device in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from byte `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Reads `len` bytes at `offset` into a new vector. `len` must come from
    /// a bounded source; this checks it against the device size first so
    /// that a corrupt length cannot allocate more than the disk holds.
    fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        check_range(offset, len as u64, self.size())?;
        let mut buf = vec![0u8; len];
        self.read_at(offset, &mut buf)?;
        Ok(buf)
    }
}

/// Checks that `[offset, offset+len)` lies inside a device of `size` bytes.
pub fn check_range(offset: u64, len: u64, size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

/// A raw image file read with `pread`.
#[derive(Debug, Clone)]
pub struct FileDevice {
    file: Arc<File>,
    size: u64,
}

impl FileDevice {
    /// Opens an image read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io { offset: 0, source })?;
        Self::from_file(file)
    }

    /// Wraps an open file; its size is taken now.
    pub fn from_file(file: File) -> Result<Self> {
        let size = file
            .metadata()
            .map_err(|source| Error::Io { offset: 0, source })?
            .len();
        Ok(FileDevice {
            file: Arc::new(file),
            size,
        })
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Io { offset, source })
    }
}

/// A device held in memory (tests, fuzzing, small images).
impl BlockDevice for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

impl BlockDevice for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len() as u64)?;
        // OK to index: the range was checked just above.
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// A window `[start, start+len)` of another device: one partition.
/// Offsets passed to it are relative to the window's start.
pub struct SliceDevice<'a> {
    inner: &'a dyn BlockDevice,
    start: u64,
    len: u64,
}

impl<'a> SliceDevice<'a> {
    /// A window of `inner`; fails if it does not fit inside it.
    pub fn new(inner: &'a dyn BlockDevice, start: u64, len: u64) -> Result<Self> {
        check_range(start, len, inner.size())?;
        Ok(SliceDevice { inner, start, len })
    }

    /// The window's first byte on the underlying device.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl BlockDevice for SliceDevice<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.len)?;
        self.inner.read_at(self.start + offset, buf)
    }
}

/// Another device with some bytes written over it: what the device reads
/// like after a write that has not been applied yet.
pub struct PatchedDevice<'a> {
    inner: &'a dyn BlockDevice,
    offset: u64,
    data: &'a [u8],
}

impl<'a> PatchedDevice<'a> {
    /// `inner` with `data` at byte `offset` (clipped to `inner`'s size).
    pub fn new(inner: &'a dyn BlockDevice, offset: u64, data: &'a [u8]) -> Self {
        PatchedDevice {
            inner,
            offset,
            data,
        }
    }
}

impl BlockDevice for PatchedDevice<'_> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buf)?;
        let end = offset.saturating_add(buf.len() as u64);
        let p_end = self.offset.saturating_add(self.data.len() as u64);
        let lo = offset.max(self.offset);
        let hi = end.min(p_end);
        if lo < hi {
            // Both differences are below the lengths of in-memory slices.
            let (b, d) = ((lo - offset) as usize, (lo - self.offset) as usize);
            let n = (hi - lo) as usize;
            if let (Some(dst), Some(src)) = (buf.get_mut(b..b + n), self.data.get(d..d + n)) {
                dst.copy_from_slice(src);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn patched_device_overlays_the_write() {
        let disk = vec![0u8; 16];
        let p = PatchedDevice::new(&disk, 4, &[1, 2, 3]);
        let mut buf = [9u8; 6];
        p.read_at(2, &mut buf).unwrap();
        assert_eq!(buf, [0, 0, 1, 2, 3, 0]);
        let mut one = [0u8; 1];
        p.read_at(6, &mut one).unwrap();
        assert_eq!(one, [3]);
    }

    use super::*;

    #[test]
    fn slice_device_rejects_reads_past_its_end() {
        let disk: Vec<u8> = (0..=255u8).collect();
        let part = SliceDevice::new(&disk, 16, 32).unwrap();
        let mut buf = [0u8; 4];
        part.read_at(28, &mut buf).unwrap();
        assert_eq!(buf, [44, 45, 46, 47]);
        assert!(matches!(
            part.read_at(30, &mut buf),
            Err(Error::OutOfRange { .. })
        ));
        assert!(SliceDevice::new(&disk, 250, 10).is_err());
    }

    #[test]
    fn read_vec_refuses_lengths_larger_than_the_device() {
        let disk = vec![0u8; 100];
        assert!(disk.read_vec(0, 1 << 40).is_err());
        assert!(disk.read_vec(u64::MAX, 1).is_err());
    }
}
