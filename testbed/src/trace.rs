//! A small dm-log-writes trace reader and applier, for tests: replaying the
//! trace QEMU's `blklogwrites` driver wrote onto the image the guest started
//! from must give the image the guest ended with, byte for byte.
//!
//! Format (little-endian): log sector 0 is the super block
//! `{magic u64, version u64, nr_entries u64, sectorsize u32}`; each entry is
//! one log sector `{sector u64, nr_sectors u64, flags u64, data_len u64}`
//! followed by its data, padded to whole log sectors. `sector` and
//! `nr_sectors` count `sectorsize` units. QEMU leaves `data_len` 0, meaning
//! `nr_sectors * sectorsize` bytes of data; discards and flushes carry no
//! data.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The super block's magic number.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// Entry flag: a flush (write barrier).
pub const FLAG_FLUSH: u64 = 1;
/// Entry flag: forced unit access.
pub const FLAG_FUA: u64 = 2;
/// Entry flag: a discard (no data in the log).
pub const FLAG_DISCARD: u64 = 4;
/// Entry flag: a mark (data is the mark's name).
pub const FLAG_MARK: u64 = 8;
/// Largest log sector size accepted.
const MAX_SECTOR_SIZE: u32 = 1 << 16;
/// Largest single entry's data accepted (a guest write is far smaller).
const MAX_ENTRY_BYTES: u64 = 1 << 30;

/// One logged operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Disk offset in bytes.
    pub offset: u64,
    /// Length in bytes (for writes and discards).
    pub len: u64,
    /// `FLAG_*` bits.
    pub flags: u64,
    /// The written bytes (empty for flushes, discards and marks).
    pub data: Vec<u8>,
}

/// Reads a trace entry by entry.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    /// Log sector size in bytes.
    pub sector_size: u32,
    /// Entry count from the super block.
    pub nr_entries: u64,
    /// Format version from the super block.
    pub version: u64,
    next: u64,
    pos: u64,
    failed: bool,
}

impl Reader {
    /// Opens a trace and validates its super block.
    pub fn open(path: &Path) -> Result<Reader> {
        let f = File::open(path).ctx("opening trace", path)?;
        let mut file = BufReader::with_capacity(1 << 20, f);
        let mut sup = [0u8; 28];
        file.read_exact(&mut sup)
            .ctx("reading trace super block", path)?;
        let u64_at = |o: usize| u64::from_le_bytes(sup[o..o + 8].try_into().unwrap_or([0; 8]));
        let bad = |offset, message: String| Error::Trace {
            path: path.to_path_buf(),
            offset,
            message,
        };
        if u64_at(0) != MAGIC {
            return Err(bad(
                0,
                format!("magic {:#x}, expected {MAGIC:#x}", u64_at(0)),
            ));
        }
        let sector_size = u32::from_le_bytes([sup[24], sup[25], sup[26], sup[27]]);
        if !sector_size.is_power_of_two() || !(512..=MAX_SECTOR_SIZE).contains(&sector_size) {
            return Err(bad(
                24,
                format!("sector size {sector_size} is not a power of two in 512..=65536"),
            ));
        }
        let mut r = Reader {
            path: path.to_path_buf(),
            file,
            sector_size,
            nr_entries: u64_at(16),
            version: u64_at(8),
            next: 0,
            pos: 0,
            failed: false,
        };
        r.seek(u64::from(sector_size))?;
        Ok(r)
    }

    fn seek(&mut self, pos: u64) -> Result<()> {
        self.file
            .seek(SeekFrom::Start(pos))
            .ctx("seeking trace", &self.path)?;
        self.pos = pos;
        Ok(())
    }

    fn err(&self, offset: u64, message: impl Into<String>) -> Error {
        Error::Trace {
            path: self.path.clone(),
            offset,
            message: message.into(),
        }
    }

    fn read_entry(&mut self) -> Result<Entry> {
        let ss = u64::from(self.sector_size);
        let at = self.pos;
        let mut h = [0u8; 32];
        self.file
            .read_exact(&mut h)
            .map_err(|e| self.err(at, format!("entry header: {e}")))?;
        let f = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
        let (sector, nr_sectors, flags, data_len) = (f(0), f(8), f(16), f(24));
        let len = nr_sectors
            .checked_mul(ss)
            .filter(|l| *l <= MAX_ENTRY_BYTES)
            .ok_or_else(|| self.err(at, format!("{nr_sectors} sectors is too large")))?;
        let offset = sector
            .checked_mul(ss)
            .ok_or_else(|| self.err(at, format!("sector {sector} overflows")))?;
        let stored = if flags & FLAG_MARK != 0 {
            data_len
        } else if flags & FLAG_DISCARD != 0 {
            0
        } else if data_len != 0 {
            data_len
        } else {
            len
        };
        if stored > MAX_ENTRY_BYTES {
            return Err(self.err(at, format!("data length {stored} is too large")));
        }
        let mut data = vec![0u8; usize::try_from(stored).unwrap_or(0)];
        self.seek(at + ss)?;
        self.file
            .read_exact(&mut data)
            .map_err(|e| self.err(at + ss, format!("entry data ({stored} bytes): {e}")))?;
        let padded = stored.div_ceil(ss) * ss;
        self.seek(at + ss + padded)?;
        if flags & FLAG_MARK != 0 {
            data.clear();
        }
        Ok(Entry {
            offset,
            len: if flags & FLAG_MARK != 0 { 0 } else { len },
            flags,
            data,
        })
    }
}

impl Iterator for Reader {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        if self.failed || self.next >= self.nr_entries {
            return None;
        }
        self.next += 1;
        let r = self.read_entry();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Counts from [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Entries read.
    pub entries: u64,
    /// Entries with data written to the image.
    pub writes: u64,
    /// Bytes written to the image.
    pub bytes: u64,
    /// Flush entries.
    pub flushes: u64,
    /// Entries with the FUA flag.
    pub fua: u64,
    /// Discard entries (not applied: QEMU's default `discard=ignore` leaves
    /// the image alone).
    pub discards: u64,
    /// Mark entries.
    pub marks: u64,
}

/// Applies every write in `trace` to the image at `image` (in place).
pub fn apply(trace: &Path, image: &Path) -> Result<ApplyStats> {
    apply_first(trace, image, u64::MAX)
}

/// How many complete entries a trace that is still being written holds,
/// found by walking the entries to the end of the file (the super block's
/// count is only rewritten on flushes, and ntfs3's `sync` sends none).
/// `sector_size` is the log sector size the writer was configured with.
pub fn count_entries(trace: &Path, sector_size: u32) -> Result<u64> {
    let f = File::open(trace).ctx("opening trace", trace)?;
    let mut r = Reader {
        path: trace.to_path_buf(),
        file: BufReader::with_capacity(1 << 20, f),
        sector_size,
        nr_entries: u64::MAX,
        version: 0,
        next: 0,
        pos: 0,
        failed: false,
    };
    r.seek(u64::from(sector_size))?;
    Ok(r.take_while(|e| e.is_ok()).count() as u64)
}

/// Applies the first `limit` entries of `trace` to `image` (in place).
pub fn apply_first(trace: &Path, image: &Path, limit: u64) -> Result<ApplyStats> {
    let reader = Reader::open(trace)?;
    let mut img = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .ctx("opening image", image)?;
    let mut st = ApplyStats::default();
    for e in reader.take(usize::try_from(limit).unwrap_or(usize::MAX)) {
        let e = e?;
        st.entries += 1;
        if e.flags & FLAG_FLUSH != 0 {
            st.flushes += 1;
        }
        if e.flags & FLAG_FUA != 0 {
            st.fua += 1;
        }
        if e.flags & FLAG_MARK != 0 {
            st.marks += 1;
            continue;
        }
        if e.flags & FLAG_DISCARD != 0 {
            st.discards += 1;
            continue;
        }
        if !e.data.is_empty() {
            img.seek(SeekFrom::Start(e.offset))
                .ctx("seeking image", image)?;
            img.write_all(&e.data).ctx("writing image", image)?;
            st.writes += 1;
            st.bytes += e.data.len() as u64;
        }
    }
    img.sync_all().ctx("syncing image", image)?;
    Ok(st)
}

/// Replays `trace` onto a copy of `base` written to `out`.
pub fn replay_to(base: &Path, trace: &Path, out: &Path) -> Result<ApplyStats> {
    std::fs::copy(base, out).ctx("copying base image", base)?;
    apply(trace, out)
}

/// The first byte offset where two files differ, or `None` if identical.
pub fn first_difference(a: &Path, b: &Path) -> Result<Option<u64>> {
    let mut fa = BufReader::with_capacity(1 << 20, File::open(a).ctx("opening", a)?);
    let mut fb = BufReader::with_capacity(1 << 20, File::open(b).ctx("opening", b)?);
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba).ctx("reading", a)?;
        let nb = read_full(&mut fb, &mut bb).ctx("reading", b)?;
        let n = na.min(nb);
        if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
            return Ok(Some(pos + i as u64));
        }
        if na != nb {
            return Ok(Some(pos + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        pos += na as u64;
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn super_block(n: u64) -> Vec<u8> {
        let mut s = vec![0u8; 512];
        s[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        s[8..16].copy_from_slice(&1u64.to_le_bytes());
        s[16..24].copy_from_slice(&n.to_le_bytes());
        s[24..28].copy_from_slice(&512u32.to_le_bytes());
        s
    }

    fn header(sector: u64, nr: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(&sector.to_le_bytes());
        h[8..16].copy_from_slice(&nr.to_le_bytes());
        h[16..24].copy_from_slice(&flags.to_le_bytes());
        h
    }

    #[test]
    fn applies_writes_and_skips_flushes_and_discards() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = super_block(3);
        log.extend(header(2, 1, 0));
        log.extend(vec![0xab; 512]);
        log.extend(header(0, 0, FLAG_FLUSH));
        log.extend(header(0, 2, FLAG_DISCARD));
        let trace = dir.path().join("t.log");
        std::fs::write(&trace, &log).unwrap();
        let img = dir.path().join("i.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let st = apply(&trace, &img).unwrap();
        assert_eq!(
            (st.entries, st.writes, st.flushes, st.discards),
            (3, 1, 1, 1)
        );
        let out = std::fs::read(&img).unwrap();
        assert!(out[1024..1536].iter().all(|&b| b == 0xab));
        assert!(out[..1024].iter().all(|&b| b == 0));
    }

    #[test]
    fn count_entries_stops_at_a_partial_entry_and_ignores_a_stale_super() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = super_block(0); // stale: says no entries
        log.extend(header(2, 1, 0));
        log.extend(vec![0xab; 512]);
        log.extend(header(0, 0, FLAG_FLUSH));
        log.extend(header(8, 2, 0));
        log.extend(vec![1u8; 600]); // second data sector incomplete
        let trace = dir.path().join("t.log");
        std::fs::write(&trace, &log).unwrap();
        assert_eq!(count_entries(&trace, 512).unwrap(), 2);
    }

    #[test]
    fn bad_magic_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("t.log");
        std::fs::write(&trace, vec![0u8; 512]).unwrap();
        assert!(matches!(
            Reader::open(&trace),
            Err(Error::Trace { offset: 0, .. })
        ));
    }

    #[test]
    fn truncated_entry_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = super_block(1);
        log.extend(header(0, 8, 0));
        log.extend(vec![1u8; 100]);
        let trace = dir.path().join("t.log");
        std::fs::write(&trace, &log).unwrap();
        let r: Vec<_> = Reader::open(&trace).unwrap().collect();
        assert_eq!(r.len(), 1);
        assert!(r[0].is_err());
    }
}
