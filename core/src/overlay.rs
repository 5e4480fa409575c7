//! A read-only base device with a guest's writes kept in memory on top:
//! the disk as a trace (or a live write stream) leaves it, without ever
//! writing to the base image.
//!
//! Writes are held in 4 KiB pages. A page is copied from the base the first
//! time a write touches it, so memory grows with the number of distinct
//! pages written, not with the number of writes.
//!
//! ```
//! use gammaray_core::overlay::OverlayDevice;
//! use gammaray_core::{BlockDevice, DiskWrite};
//! let base = vec![1u8; 8192];
//! let mut ov = OverlayDevice::new(Box::new(base));
//! ov.apply(&DiskWrite::write(0, 4094, vec![9u8; 4].into()));
//! let mut buf = [0u8; 6];
//! ov.read_at(4093, &mut buf).unwrap();
//! assert_eq!(buf, [1, 9, 9, 9, 9, 1]);
//! assert_eq!(ov.bytes_held(), 8192);
//! ```

use std::collections::HashMap;

use crate::device::{check_range, BlockDevice};
use crate::error::{Error, Result};
use crate::write::{DiskWrite, WriteFlags};

/// Size of one page of held writes.
pub const PAGE_SIZE: u64 = 4096;

/// Counts of what [`OverlayDevice::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayStats {
    /// Plain writes applied (wholly or in part).
    pub writes: u64,
    /// Bytes of plain writes applied.
    pub bytes: u64,
    /// Write-zeroes requests applied.
    pub zeroes: u64,
    /// Discards seen (not applied, see [`OverlayDevice::apply`]).
    pub discards: u64,
    /// Flushes seen (no effect on contents).
    pub flushes: u64,
    /// Marks seen (no effect on contents).
    pub marks: u64,
    /// Requests that reached past the end of the device and were clipped
    /// (or dropped, when wholly outside).
    pub clipped: u64,
    /// Bytes lost to such clipping.
    pub clipped_bytes: u64,
    /// Plain writes whose data length disagreed with their `len` (only the
    /// shorter of the two is applied).
    pub malformed: u64,
}

/// A base [`BlockDevice`] that is only read, plus writes applied over it in
/// memory. Implements [`BlockDevice`]: reads see the writes.
pub struct OverlayDevice {
    base: Box<dyn BlockDevice>,
    size: u64,
    pages: HashMap<u64, Box<[u8]>>,
    /// With [`OverlayDevice::with_scratch`]: a full copy of the base that
    /// takes the writes instead of `pages`.
    scratch: Option<std::fs::File>,
    stats: OverlayStats,
}

impl std::fmt::Debug for OverlayDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayDevice")
            .field("size", &self.size)
            .field("pages", &self.pages.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl OverlayDevice {
    /// An overlay with no writes yet over `base` (which is never written).
    pub fn new(base: Box<dyn BlockDevice>) -> Self {
        let size = base.size();
        OverlayDevice {
            base,
            size,
            pages: HashMap::new(),
            scratch: None,
            stats: OverlayStats::default(),
        }
    }

    /// Like [`OverlayDevice::new`], but the writes go to `path`, a sparse
    /// copy of `base` made here, instead of memory: replaying a trace larger
    /// than memory, or measuring the memory of what follows the trace.
    /// `base` is still never written.
    pub fn with_scratch(base: Box<dyn BlockDevice>, path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let size = base.size();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| Error::Io { offset: 0, source })?;
        file.set_len(size).map_err(|source| Error::Io {
            offset: size,
            source,
        })?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        while pos < size {
            let n = (size - pos).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            base.read_at(pos, chunk)?;
            if chunk.iter().any(|&b| b != 0) {
                file.write_all_at(chunk, pos).map_err(|source| Error::Io {
                    offset: pos,
                    source,
                })?;
            }
            pos += n as u64;
        }
        let mut dev = OverlayDevice::new(base);
        dev.scratch = Some(file);
        Ok(dev)
    }

    /// The device underneath.
    pub fn base(&self) -> &dyn BlockDevice {
        self.base.as_ref()
    }

    /// Bytes of page memory held for written data.
    pub fn bytes_held(&self) -> u64 {
        self.pages.len() as u64 * PAGE_SIZE
    }

    /// What [`apply`](Self::apply) has done so far.
    pub fn stats(&self) -> OverlayStats {
        self.stats
    }

    /// Applies one request, exactly as the testbed's trace applier does so
    /// that a replay gives the disk the guest left behind:
    ///
    /// - plain writes put their bytes at `offset`;
    /// - write-zeroes (`WriteFlags::ZEROES`) zero `len` bytes at `offset`;
    /// - discards change nothing (QEMU's default `discard=ignore` leaves the
    ///   image alone, and the testbed's replay skips them too);
    /// - flushes and marks change nothing.
    ///
    /// Parts beyond the end of the device are dropped and counted in
    /// [`OverlayStats::clipped`]; nothing here panics.
    pub fn apply(&mut self, w: &DiskWrite) {
        if w.flags.contains(WriteFlags::FLUSH) {
            self.stats.flushes += 1;
        }
        if w.flags.contains(WriteFlags::MARK) {
            self.stats.marks += 1;
            return;
        }
        if w.flags.contains(WriteFlags::DISCARD) {
            self.stats.discards += 1;
            return;
        }
        if w.flags.contains(WriteFlags::ZEROES) {
            if w.len == 0 {
                return;
            }
            let n = self.clip(w.offset, w.len);
            if n > 0 {
                self.stats.zeroes += 1;
                self.fill(w.offset, n, None);
            }
            return;
        }
        if w.data.is_empty() {
            return;
        }
        let data_len = w.data.len() as u64;
        let len = if data_len == w.len {
            data_len
        } else {
            self.stats.malformed += 1;
            data_len.min(w.len)
        };
        let n = self.clip(w.offset, len);
        if n > 0 {
            self.stats.writes += 1;
            self.stats.bytes += n;
            // OK to index: n <= len <= data.len().
            let data = &w.data[..n as usize];
            self.fill(w.offset, n, Some(data));
        }
    }

    /// How many of `len` bytes at `offset` lie inside the device; counts
    /// the rest as clipped.
    fn clip(&mut self, offset: u64, len: u64) -> u64 {
        let inside = self.size.saturating_sub(offset).min(len);
        if inside < len {
            self.stats.clipped += 1;
            self.stats.clipped_bytes = self.stats.clipped_bytes.saturating_add(len - inside);
        }
        inside
    }

    /// Writes `n` bytes at `offset` (inside the device): `data`, or zeroes.
    fn fill(&mut self, offset: u64, n: u64, data: Option<&[u8]>) {
        if let Some(file) = &self.scratch {
            use std::os::unix::fs::FileExt;
            let r = match data {
                Some(d) => file.write_all_at(&d[..n as usize], offset),
                None => {
                    let zeros = vec![0u8; n.min(1 << 20) as usize];
                    let mut done = 0u64;
                    let mut r = Ok(());
                    while done < n && r.is_ok() {
                        let k = (n - done).min(zeros.len() as u64);
                        r = file.write_all_at(&zeros[..k as usize], offset + done);
                        done += k;
                    }
                    r
                }
            };
            if let Err(e) = r {
                tracing::warn!("overlay scratch: writing {n} bytes at {offset}: {e}");
                self.stats.malformed += 1;
            }
            return;
        }
        let mut done = 0u64;
        while done < n {
            let pos = offset + done;
            let page_no = pos / PAGE_SIZE;
            let in_page = pos % PAGE_SIZE;
            let chunk = (PAGE_SIZE - in_page).min(n - done);
            let Some(page) = self.page_mut(page_no) else {
                return;
            };
            // All casts are below PAGE_SIZE or n, which fit in memory.
            let dst = &mut page[in_page as usize..(in_page + chunk) as usize];
            match data {
                Some(d) => dst.copy_from_slice(&d[done as usize..(done + chunk) as usize]),
                None => dst.fill(0),
            }
            done += chunk;
        }
    }

    /// The held page `page_no`, copied from the base on first use. The last
    /// page of a device whose size is not a page multiple is shorter.
    fn page_mut(&mut self, page_no: u64) -> Option<&mut Box<[u8]>> {
        if !self.pages.contains_key(&page_no) {
            let start = page_no.checked_mul(PAGE_SIZE)?;
            let len = PAGE_SIZE.min(self.size.checked_sub(start)?);
            let mut buf = vec![0u8; len as usize].into_boxed_slice();
            if let Err(e) = self.base.read_at(start, &mut buf) {
                // The base could not be read here: start from zeroes rather
                // than losing the write.
                tracing::warn!("overlay: reading base page at byte {start}: {e}");
                buf.fill(0);
            }
            self.pages.insert(page_no, buf);
        }
        self.pages.get_mut(&page_no)
    }
}

impl BlockDevice for OverlayDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(offset, buf.len() as u64, self.size)?;
        if let Some(file) = &self.scratch {
            use std::os::unix::fs::FileExt;
            return file
                .read_exact_at(buf, offset)
                .map_err(|source| Error::Io { offset, source });
        }
        if self.pages.is_empty() {
            return self.base.read_at(offset, buf);
        }
        let n = buf.len() as u64;
        let mut done = 0u64;
        // Runs of pages not held are read from the base in one call.
        let mut base_run: Option<u64> = None;
        while done < n {
            let pos = offset + done;
            let page_no = pos / PAGE_SIZE;
            let in_page = pos % PAGE_SIZE;
            let chunk = (PAGE_SIZE - in_page).min(n - done);
            match self.pages.get(&page_no) {
                Some(page) => {
                    if let Some(from) = base_run.take() {
                        self.base
                            .read_at(offset + from, &mut buf[from as usize..done as usize])?;
                    }
                    let src = page
                        .get(in_page as usize..(in_page + chunk) as usize)
                        .ok_or(crate::error::Error::OutOfRange {
                            offset: pos,
                            len: chunk,
                            size: self.size,
                        })?;
                    buf[done as usize..(done + chunk) as usize].copy_from_slice(src);
                }
                None => {
                    base_run.get_or_insert(done);
                }
            }
            done += chunk;
        }
        if let Some(from) = base_run {
            self.base
                .read_at(offset + from, &mut buf[from as usize..])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn base(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// The reference: the same requests applied to a plain vector.
    fn reference(mut disk: Vec<u8>, writes: &[DiskWrite]) -> Vec<u8> {
        for w in writes {
            if w.flags.intersects(WriteFlags::DISCARD | WriteFlags::MARK) {
                continue;
            }
            let end = (w.offset.saturating_add(w.len) as usize).min(disk.len());
            let start = (w.offset as usize).min(end);
            if w.flags.contains(WriteFlags::ZEROES) {
                disk[start..end].fill(0);
            } else if !w.data.is_empty() {
                disk[start..end].copy_from_slice(&w.data[..end - start]);
            }
        }
        disk
    }

    fn read_all(d: &dyn BlockDevice) -> Vec<u8> {
        let mut v = vec![0u8; d.size() as usize];
        d.read_at(0, &mut v).unwrap();
        v
    }

    fn zeroes(offset: u64, len: u64) -> DiskWrite {
        DiskWrite {
            offset,
            len,
            flags: WriteFlags::ZEROES,
            ..Default::default()
        }
    }

    #[test]
    fn scratch_file_gives_the_same_reads() {
        let dir = tempfile::tempdir().unwrap();
        let b = base(3 * 4096 + 100);
        let mut mem = OverlayDevice::new(Box::new(b.clone()));
        let mut file =
            OverlayDevice::with_scratch(Box::new(b.clone()), &dir.path().join("s")).unwrap();
        let writes = [
            DiskWrite::write(1, 4000, Bytes::from(vec![7u8; 300])),
            zeroes(10, 5000),
            DiskWrite::write(2, 3 * 4096 + 90, Bytes::from(vec![9u8; 50])),
        ];
        for w in &writes {
            mem.apply(w);
            file.apply(w);
        }
        assert_eq!(read_all(&mem), read_all(&file));
        assert_eq!(read_all(&file), reference(b, &writes));
        assert_eq!(file.bytes_held(), 0);
    }

    #[test]
    fn partial_page_write_keeps_the_rest_of_the_page() {
        let mut ov = OverlayDevice::new(Box::new(base(16384)));
        ov.apply(&DiskWrite::write(1, 100, Bytes::from(vec![0xee; 10])));
        let got = read_all(&ov);
        let want = reference(
            base(16384),
            &[DiskWrite::write(1, 100, Bytes::from(vec![0xee; 10]))],
        );
        assert_eq!(got, want);
        assert_eq!(ov.bytes_held(), PAGE_SIZE);
        assert_eq!(ov.stats().writes, 1);
        assert_eq!(ov.stats().bytes, 10);
    }

    #[test]
    fn write_spanning_pages_and_reads_mixing_base_and_overlay() {
        let writes = vec![
            DiskWrite::write(1, 4000, Bytes::from(vec![0xaa; 5000])),
            DiskWrite::write(2, 12288, Bytes::from(vec![0xbb; 4096])),
        ];
        let mut ov = OverlayDevice::new(Box::new(base(32768)));
        for w in &writes {
            ov.apply(w);
        }
        assert_eq!(ov.bytes_held(), 4 * PAGE_SIZE);
        let want = reference(base(32768), &writes);
        assert_eq!(read_all(&ov), want);
        // Unaligned reads crossing base, overlay, base, overlay, base.
        for (off, len) in [(3990, 30), (8190, 10), (100, 20000), (16380, 8), (0, 1)] {
            let mut buf = vec![0u8; len];
            ov.read_at(off, &mut buf).unwrap();
            assert_eq!(
                buf,
                want[off as usize..off as usize + len],
                "at {off}+{len}"
            );
        }
        assert!(ov.read_at(32760, &mut [0u8; 9]).is_err());
    }

    #[test]
    fn zeroes_discards_flushes_and_marks() {
        let writes = vec![
            DiskWrite::write(1, 0, Bytes::from(vec![0xcc; 8192])),
            zeroes(1000, 5000),
            DiskWrite {
                offset: 0,
                len: 4096,
                flags: WriteFlags::DISCARD,
                ..Default::default()
            },
            DiskWrite::flush(4),
            DiskWrite {
                data: Bytes::from_static(b"label"),
                len: 5,
                flags: WriteFlags::MARK,
                ..Default::default()
            },
        ];
        let mut ov = OverlayDevice::new(Box::new(base(16384)));
        for w in &writes {
            ov.apply(w);
        }
        assert_eq!(read_all(&ov), reference(base(16384), &writes));
        let s = ov.stats();
        assert_eq!(
            (s.writes, s.zeroes, s.discards, s.flushes, s.marks),
            (1, 1, 1, 1, 1)
        );
        // Zeroes over pages never written are held too.
        ov.apply(&zeroes(12000, 100));
        let mut buf = [1u8; 4];
        ov.read_at(12050, &mut buf).unwrap();
        assert_eq!(buf, [0; 4]);
    }

    #[test]
    fn writes_past_the_end_are_clipped_and_counted() {
        // A size that is not a page multiple: the last page is short.
        let mut ov = OverlayDevice::new(Box::new(base(5000)));
        ov.apply(&DiskWrite::write(1, 4990, Bytes::from(vec![7; 100])));
        ov.apply(&DiskWrite::write(2, 9000, Bytes::from(vec![7; 10])));
        ov.apply(&DiskWrite::write(3, u64::MAX - 2, Bytes::from(vec![7; 10])));
        ov.apply(&zeroes(4999, u64::MAX));
        let s = ov.stats();
        assert_eq!(s.clipped, 4);
        assert_eq!(s.writes, 1);
        assert_eq!(s.bytes, 10);
        let got = read_all(&ov);
        assert_eq!(&got[4990..4999], &[7; 9]);
        assert_eq!(got[4999], 0);
        assert_eq!(&got[..4990], &base(5000)[..4990]);
    }

    #[test]
    fn data_shorter_than_len_is_counted_not_a_panic() {
        let mut ov = OverlayDevice::new(Box::new(base(8192)));
        ov.apply(&DiskWrite {
            offset: 10,
            len: 100,
            data: Bytes::from(vec![1; 4]),
            ..Default::default()
        });
        assert_eq!(ov.stats().malformed, 1);
        let mut buf = [0u8; 5];
        ov.read_at(10, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 1, 1, 14]);
    }
}
