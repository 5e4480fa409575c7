//! The disk as inference sees it, while the guest runs ahead.
//!
//! gammaray serves the guest's disk and applies every write to the image at
//! once (the guest must read its own writes back), but inference runs
//! behind, in a queue, and must read the disk *as it was before* the write
//! it is looking at. The [`UndoLog`] keeps, for every 4 KiB page that
//! writes not yet inferred have changed, the page's contents as of the
//! inference position; [`UndoView`] reads the image through it.
//!
//! The NBD export calls [`UndoLog::around_write`] (as its
//! [`WriteGuard`]) to save a page the first time a pending write changes
//! it; inference calls [`UndoLog::consume`] after each request, which
//! moves the saved pages on by that request and forgets a page once no
//! pending write touches it. Memory is bounded by the pages that queued
//! writes touch, so by the queue.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};

use gammaray_core::device::check_range;
use gammaray_core::{BlockDevice, DiskWrite, Error, WriteFlags};
use gammaray_qemu::nbd::WriteGuard;

/// Page size of the saved contents.
pub const PAGE: u64 = 4096;

#[derive(Debug)]
struct Page {
    data: Box<[u8]>,
    /// Pending writes that touch this page.
    refs: u32,
}

#[derive(Debug, Default)]
struct Inner {
    pages: HashMap<u64, Page>,
    /// Pages of each applied write, by the token `around_write` returned,
    /// until the write is reported.
    tokens: HashMap<u64, Vec<u64>>,
    /// Pages of reported writes, by the sequence number of their last
    /// request: released when inference gets past it.
    ops: BTreeMap<u64, Vec<Vec<u64>>>,
    next_token: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct UndoLog {
    file: File,
    size: u64,
    inner: Mutex<Inner>,
}

impl UndoLog {
    /// An undo log over the image `file` (a handle of its own).
    pub fn new(file: File) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(UndoLog {
            file,
            size,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data behind (each
        // change is a single map operation): keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_page(file: &File, size: u64, p: u64) -> Box<[u8]> {
        let mut buf = vec![0u8; PAGE as usize];
        let start = p * PAGE;
        let n = size.saturating_sub(start).min(PAGE) as usize;
        if let Some(b) = buf.get_mut(..n) {
            if let Err(e) = file.read_exact_at(b, start) {
                tracing::warn!("undo log: reading page {p}: {e}");
            }
        }
        buf.into_boxed_slice()
    }

    /// Inference has handled `w`: the saved pages move on by it, and pages
    /// no pending write touches any more are forgotten.
    pub fn consume(&self, w: &DiskWrite) {
        let mut g = self.lock();
        let applied = w.flags.contains(WriteFlags::ZEROES) || !w.data.is_empty();
        if applied && w.len > 0 && !w.flags.contains(WriteFlags::DISCARD) {
            let end = w.offset.saturating_add(w.len);
            let mut p = w.offset / PAGE;
            while p * PAGE < end {
                if let Some(page) = g.pages.get_mut(&p) {
                    let lo = (p * PAGE).max(w.offset);
                    let hi = ((p + 1) * PAGE).min(end);
                    let dst = page
                        .data
                        .get_mut((lo - p * PAGE) as usize..(hi - p * PAGE) as usize);
                    if let Some(dst) = dst {
                        if w.flags.contains(WriteFlags::ZEROES) {
                            dst.fill(0);
                        } else if let Some(src) = w
                            .data
                            .get((lo - w.offset) as usize..(hi - w.offset) as usize)
                        {
                            dst.copy_from_slice(src);
                        }
                    }
                }
                p += 1;
            }
        }
        let done: Vec<u64> = g.ops.range(..=w.seq).map(|(k, _)| *k).collect();
        for k in done {
            for pages in g.ops.remove(&k).unwrap_or_default() {
                for p in pages {
                    if let Some(page) = g.pages.get_mut(&p) {
                        page.refs = page.refs.saturating_sub(1);
                        if page.refs == 0 {
                            g.pages.remove(&p);
                        }
                    }
                }
            }
        }
    }

    /// Pages saved now.
    pub fn pages(&self) -> usize {
        self.lock().pages.len()
    }

    /// Reads the image as of the inference position.
    pub fn view(&self) -> UndoView<'_> {
        UndoView { log: self }
    }
}

impl WriteGuard for UndoLog {
    fn around_write(
        &self,
        file: &File,
        offset: u64,
        len: u64,
        apply: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let mut g = self.lock();
        let mut pages = Vec::new();
        if len > 0 {
            let end = offset.saturating_add(len);
            let mut p = offset / PAGE;
            while p * PAGE < end {
                match g.pages.get_mut(&p) {
                    Some(page) => page.refs += 1,
                    None => {
                        let data = Self::read_page(file, self.size, p);
                        g.pages.insert(p, Page { data, refs: 1 });
                    }
                }
                pages.push(p);
                p += 1;
            }
        }
        if let Err(e) = apply() {
            // Not applied: the pages did not change.
            for p in &pages {
                if let Some(page) = g.pages.get_mut(p) {
                    page.refs = page.refs.saturating_sub(1);
                    if page.refs == 0 {
                        g.pages.remove(p);
                    }
                }
            }
            return Err(e);
        }
        let token = g.next_token;
        g.next_token += 1;
        g.tokens.insert(token, pages);
        Ok(token)
    }

    fn reported(&self, token: u64, last_seq: u64) {
        let mut g = self.lock();
        if let Some(pages) = g.tokens.remove(&token) {
            g.ops.entry(last_seq).or_default().push(pages);
        }
    }
}

/// The image through an [`UndoLog`]: what inference must see.
pub struct UndoView<'a> {
    log: &'a UndoLog,
}

impl BlockDevice for UndoView<'_> {
    fn size(&self) -> u64 {
        self.log.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> gammaray_core::Result<()> {
        check_range(offset, buf.len() as u64, self.log.size)?;
        // Held while reading so that no write lands in between.
        let g = self.log.lock();
        if g.pages.is_empty() {
            return self
                .log
                .file
                .read_exact_at(buf, offset)
                .map_err(|source| Error::Io { offset, source });
        }
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let p = pos / PAGE;
            let hi = ((p + 1) * PAGE).min(end);
            let dst = &mut buf[(pos - offset) as usize..(hi - offset) as usize];
            match g.pages.get(&p) {
                Some(page) => {
                    let src = page
                        .data
                        .get((pos - p * PAGE) as usize..(hi - p * PAGE) as usize)
                        .ok_or(Error::OutOfRange {
                            offset: pos,
                            len: hi - pos,
                            size: self.log.size,
                        })?;
                    dst.copy_from_slice(src);
                }
                None => self
                    .log
                    .file
                    .read_exact_at(dst, pos)
                    .map_err(|source| Error::Io {
                        offset: pos,
                        source,
                    })?,
            }
            pos = hi;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn setup(len: usize) -> (tempfile::TempDir, File, UndoLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![1u8; len]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let log = UndoLog::new(f.try_clone().unwrap()).unwrap();
        (dir, f, log)
    }

    fn guarded(log: &UndoLog, f: &File, seq: u64, offset: u64, data: &[u8]) -> DiskWrite {
        let d = data.to_vec();
        let t = log
            .around_write(f, offset, d.len() as u64, &mut || {
                f.write_all_at(&d, offset)
            })
            .unwrap();
        log.reported(t, seq);
        DiskWrite {
            seq,
            ..DiskWrite::write(seq, offset, Bytes::from(d))
        }
    }

    fn read(log: &UndoLog, offset: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        log.view().read_at(offset, &mut b).unwrap();
        b
    }

    #[test]
    fn view_lags_the_image_until_each_write_is_consumed() {
        let (_d, f, log) = setup(3 * 4096);
        let w1 = guarded(&log, &f, 1, 100, &[2; 10]);
        let w2 = guarded(&log, &f, 2, 105, &[3; 4096]);
        // The image has both writes; the view has neither.
        assert_eq!(read(&log, 100, 10), vec![1; 10]);
        assert_eq!(read(&log, 4096, 10), vec![1; 10]);
        log.consume(&w1);
        assert_eq!(read(&log, 100, 10), vec![2; 10]);
        assert_eq!(read(&log, 4200, 2), vec![1; 2]);
        log.consume(&w2);
        assert_eq!(read(&log, 100, 5), vec![2; 5]);
        assert_eq!(read(&log, 105, 5), vec![3; 5]);
        assert_eq!(read(&log, 4199, 3), vec![3, 3, 1]);
        assert_eq!(log.pages(), 0, "all pages released");
    }

    #[test]
    fn zeroes_and_discards() {
        let (_d, f, log) = setup(2 * 4096);
        let t = log
            .around_write(&f, 0, 4096, &mut || f.write_all_at(&[0u8; 4096], 0))
            .unwrap();
        log.reported(t, 7);
        assert_eq!(read(&log, 0, 4), vec![1; 4]);
        // A discard reported before does not change the view.
        log.consume(&DiskWrite {
            seq: 6,
            offset: 0,
            len: 4096,
            flags: WriteFlags::DISCARD,
            ..DiskWrite::default()
        });
        assert_eq!(read(&log, 0, 4), vec![1; 4]);
        log.consume(&DiskWrite {
            seq: 7,
            offset: 0,
            len: 4096,
            flags: WriteFlags::ZEROES,
            ..DiskWrite::default()
        });
        assert_eq!(read(&log, 0, 4), vec![0; 4]);
        assert_eq!(log.pages(), 0);
    }
}
