//! Writer of dm-log-writes traces.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use gammaray_core::write::{DiskWrite, WriteFlags};

use super::{
    EntryHeader, Super, TraceError, ENTRY_HEADER_LEN, FLAG_DISCARD, FLAG_FLUSH, FLAG_FUA, FLAG_MARK,
};

/// Appends entries to a dm-log-writes trace file.
///
/// Entries are written in order (header sector, then data), and the super's
/// `nr_entries` is rewritten after every flush entry, on [`sync_super`]
/// and on [`finish`], so that a reader tailing the file never sees a count
/// that points past complete entries. Write-zeroes requests leave a hole in
/// the file instead of materializing their zeroes.
///
/// [`sync_super`]: TraceWriter::sync_super
/// [`finish`]: TraceWriter::finish
#[derive(Debug)]
pub struct TraceWriter {
    out: BufWriter<File>,
    sector_size: u32,
    nr_entries: u64,
    super_entries: u64,
    /// Byte offset where the next entry goes.
    end: u64,
}

impl TraceWriter {
    /// Creates (truncating) a trace at `path` with the given log sector size
    /// (512 or 4096 are what the kernel and QEMU use).
    pub fn create(path: &Path, sector_size: u32) -> Result<Self, TraceError> {
        if !super::valid_sector_size(sector_size.into()) {
            return Err(TraceError::BadSectorSize {
                found: sector_size.into(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let mut w = TraceWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            sector_size,
            nr_entries: 0,
            super_entries: u64::MAX,
            end: u64::from(sector_size),
        };
        w.write_super()?;
        Ok(w)
    }

    /// The log sector size.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// Entries appended so far.
    pub fn entries(&self) -> u64 {
        self.nr_entries
    }

    /// Bytes the log occupies.
    pub fn log_len(&self) -> u64 {
        self.end
    }

    fn write_super(&mut self) -> Result<(), TraceError> {
        let sector = Super {
            nr_entries: self.nr_entries,
            sector_size: self.sector_size,
        }
        .to_sector();
        self.out.flush()?;
        let f = self.out.get_mut();
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&sector)?;
        f.seek(SeekFrom::Start(self.end))?;
        self.super_entries = self.nr_entries;
        Ok(())
    }

    /// Writes buffered entries out and brings the super's count up to date.
    pub fn sync_super(&mut self) -> Result<(), TraceError> {
        if self.super_entries != self.nr_entries {
            self.write_super()?;
        }
        self.out.flush()?;
        Ok(())
    }

    /// Appends one request. Writes and discards must be aligned to the log
    /// sector; flushes may carry data; marks carry their label in `data`.
    pub fn append(&mut self, w: &DiskWrite) -> Result<(), TraceError> {
        let ss = u64::from(self.sector_size);
        let mut header = EntryHeader::default();
        let mut sector = vec![0u8; self.sector_size as usize];
        let mut data: &[u8] = &[];
        let mut zero_bytes = 0u64;
        if w.flags.contains(WriteFlags::MARK) {
            let room = self.sector_size as usize - ENTRY_HEADER_LEN - 1;
            if w.data.len() > room {
                return Err(TraceError::MarkTooLong {
                    len: w.data.len(),
                    sector_size: self.sector_size,
                });
            }
            header.flags = FLAG_MARK;
            header.data_len = w.data.len() as u64;
            sector[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + w.data.len()].copy_from_slice(&w.data);
        } else {
            let len =
                if w.flags.contains(WriteFlags::DISCARD) || w.flags.contains(WriteFlags::ZEROES) {
                    w.len
                } else {
                    w.data.len() as u64
                };
            if w.offset % ss != 0 || len % ss != 0 {
                return Err(TraceError::Unaligned {
                    offset: w.offset,
                    len,
                    sector_size: self.sector_size,
                });
            }
            header.sector = w.offset / ss;
            header.nr_sectors = len / ss;
            if w.flags.contains(WriteFlags::FLUSH) {
                header.flags |= FLAG_FLUSH;
            }
            if w.flags.contains(WriteFlags::FUA) {
                header.flags |= FLAG_FUA;
            }
            if w.flags.contains(WriteFlags::DISCARD) {
                header.flags |= FLAG_DISCARD;
            } else if w.flags.contains(WriteFlags::ZEROES) {
                zero_bytes = len;
            } else {
                data = &w.data;
            }
        }
        header.write_to(&mut sector);
        self.out.write_all(&sector)?;
        self.out.write_all(data)?;
        let mut end = self.end + ss + data.len() as u64;
        if zero_bytes > 0 {
            // Leave a hole: extend the file over the zeroes.
            self.out.flush()?;
            end += zero_bytes;
            let f = self.out.get_mut();
            f.set_len(end)?;
            f.seek(SeekFrom::Start(end))?;
        }
        self.end = end;
        self.nr_entries += 1;
        if header.flags & FLAG_FLUSH != 0 {
            self.write_super()?;
        }
        Ok(())
    }

    /// Writes everything out, updates the super and syncs the file to disk.
    pub fn finish(mut self) -> Result<u64, TraceError> {
        self.write_super()?;
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(self.nr_entries)
    }
}
