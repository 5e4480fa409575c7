//! Streaming reader of dm-log-writes traces, with a tail mode for logs that
//! are still being written.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gammaray_core::write::{DiskWrite, WriteFlags};

use super::{EntryHeader, Super, TraceError, ENTRY_HEADER_LEN, MAX_ENTRY_DATA, SUPER_LEN};

/// Bytes read at a time while checking that an oversized entry is all zeroes.
const ZERO_SCAN_CHUNK: usize = 1 << 20;

/// One entry of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    /// Entry number, from 0 (also in `write.seq`).
    pub index: u64,
    /// Byte offset of the entry's header in the log.
    pub log_offset: u64,
    /// The request. `ts_ns` is 0: the format records no time.
    pub write: DiskWrite,
}

/// How a [`TraceReader`] decides where the log ends.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Read entries past the super's `nr_entries` while complete, valid
    /// entries follow. Writers rewrite the super only now and then (QEMU on
    /// flushes), so a log whose writer stopped without a final flush holds
    /// more entries than its super says. Leave this off for logs on block
    /// devices, where stale entries of an older run may follow the end.
    pub past_super_count: bool,
    /// Follow a log that is still growing: at the end of the available data,
    /// wait (polling every `poll`) for more entries instead of stopping,
    /// until `stop` is set and no complete entry remains. Implies
    /// `past_super_count`.
    pub tail: Option<TailOptions>,
}

/// Settings of tail mode.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// How long to sleep between polls of the log's length.
    pub poll: Duration,
    /// Set by the caller to end tailing once the log is drained.
    pub stop: Arc<AtomicBool>,
}

/// Reads a dm-log-writes trace entry by entry. Iterating yields
/// `Result<TraceEntry, TraceError>`; after the first error the iterator ends.
///
/// ```
/// use gammaray_core::write::DiskWrite;
/// use gammaray_qemu::dmlog::{TraceReader, TraceWriter};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("t.log");
/// let mut w = TraceWriter::create(&path, 512).unwrap();
/// w.append(&DiskWrite::write(0, 4096, vec![7u8; 512].into())).unwrap();
/// w.append(&DiskWrite::flush(1)).unwrap();
/// w.finish().unwrap();
/// let entries: Vec<_> = TraceReader::open(&path).unwrap().collect::<Result<_, _>>().unwrap();
/// assert_eq!(entries.len(), 2);
/// assert_eq!(entries[0].write.offset, 4096);
/// assert!(entries[1].write.is_flush());
/// ```
pub struct TraceReader {
    file: File,
    opts: ReadOptions,
    sup: Super,
    next_index: u64,
    next_offset: u64,
    done: bool,
}

impl std::fmt::Debug for TraceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceReader")
            .field("super", &self.sup)
            .field("next_index", &self.next_index)
            .field("next_offset", &self.next_offset)
            .finish()
    }
}

impl TraceReader {
    /// Opens a complete trace (entries up to the super's count).
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        Self::with_options(File::open(path)?, ReadOptions::default())
    }

    /// Reads `file` with the given options. In tail mode, waits for the
    /// super to appear.
    pub fn with_options(file: File, opts: ReadOptions) -> Result<Self, TraceError> {
        let sup = loop {
            let len = file.metadata()?.len();
            if len >= SUPER_LEN as u64 {
                let mut b = [0u8; SUPER_LEN];
                file.read_exact_at(&mut b, 0)?;
                // A tailed log may still be all zeroes before its writer's
                // first super write.
                let zeroes = b.iter().all(|&x| x == 0);
                if !(zeroes && opts.tail.is_some()) {
                    break Super::from_bytes(&b)?;
                }
            }
            match &opts.tail {
                Some(t) if !t.stop.load(Ordering::Acquire) => std::thread::sleep(t.poll),
                _ => return Err(TraceError::TooShort { len }),
            }
        };
        Ok(TraceReader {
            file,
            opts,
            next_offset: u64::from(sup.sector_size),
            sup,
            next_index: 0,
            done: false,
        })
    }

    /// The super as read at open.
    pub fn super_block(&self) -> Super {
        self.sup
    }

    /// Entries read so far.
    pub fn entries_read(&self) -> u64 {
        self.next_index
    }

    fn past_count_allowed(&self) -> bool {
        self.opts.past_super_count || self.opts.tail.is_some()
    }

    /// Reads the entry at `next_offset`, or `Ok(None)` when the log ends
    /// there (only possible past the super's count).
    fn read_entry(&mut self) -> Result<Option<TraceEntry>, TraceError> {
        let ss = u64::from(self.sup.sector_size);
        let index = self.next_index;
        let at = self.next_offset;
        let in_count = index < self.sup.nr_entries;
        let log_len = self.file.metadata()?.len();
        let truncated = |needed: u64| TraceError::Truncated {
            entry: index,
            offset: at,
            needed,
            log_len,
        };
        if log_len.saturating_sub(at) < ss {
            return if in_count && self.opts.tail.is_none() {
                Err(truncated(ss))
            } else {
                Ok(None)
            };
        }
        let mut sector = vec![0u8; ss as usize];
        self.file.read_exact_at(&mut sector, at)?;
        if !in_count && sector.iter().all(|&b| b == 0) {
            // Beyond the counted entries an all-zero sector is unwritten log.
            return Ok(None);
        }
        let mut hb = [0u8; ENTRY_HEADER_LEN];
        hb.copy_from_slice(&sector[..ENTRY_HEADER_LEN]);
        let header = EntryHeader::from_bytes(&hb);
        let layout = match header.layout(self.sup.sector_size, index, at) {
            Ok(l) => l,
            Err(e) if !in_count && self.opts.tail.is_none() => {
                tracing::debug!(
                    "trace ends at entry {index} (byte {at}) past the super's count: {e}"
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let data_at = at + ss;
        let needed = ss
            .checked_add(layout.data_bytes)
            .ok_or_else(|| truncated(u64::MAX))?;
        if log_len.saturating_sub(at) < needed {
            return if in_count && self.opts.tail.is_none() {
                Err(truncated(needed))
            } else {
                Ok(None)
            };
        }
        let mut write = DiskWrite {
            seq: index,
            ts_ns: 0,
            offset: layout.offset,
            len: layout.len,
            data: Bytes::new(),
            flags: layout.flags,
        };
        if layout.flags.contains(WriteFlags::MARK) {
            let label = &sector[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + layout.mark_len];
            write.offset = 0;
            write.len = label.len() as u64;
            write.data = Bytes::copy_from_slice(label);
        } else if layout.data_bytes > 0 {
            if layout.data_bytes > MAX_ENTRY_DATA {
                if !self.all_zero(data_at, layout.data_bytes)? {
                    return Err(TraceError::EntryTooLarge {
                        entry: index,
                        offset: at,
                        len: layout.data_bytes,
                    });
                }
                write.flags |= WriteFlags::ZEROES;
            } else {
                // OK to cast: bounded by MAX_ENTRY_DATA above.
                let mut data = vec![0u8; layout.data_bytes as usize];
                self.file.read_exact_at(&mut data, data_at)?;
                write.data = Bytes::from(data);
            }
        }
        self.next_index += 1;
        self.next_offset = at + needed;
        Ok(Some(TraceEntry {
            index,
            log_offset: at,
            write,
        }))
    }

    fn all_zero(&self, mut at: u64, mut len: u64) -> Result<bool, TraceError> {
        let mut buf = vec![0u8; ZERO_SCAN_CHUNK];
        while len > 0 {
            let n = len.min(ZERO_SCAN_CHUNK as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
            len -= n as u64;
        }
        Ok(true)
    }

    fn next_inner(&mut self) -> Option<Result<TraceEntry, TraceError>> {
        loop {
            if self.done {
                return None;
            }
            if self.next_index >= self.sup.nr_entries && !self.past_count_allowed() {
                self.done = true;
                return None;
            }
            match self.read_entry() {
                Ok(Some(e)) => return Some(Ok(e)),
                Ok(None) => match &self.opts.tail {
                    Some(t) => {
                        // Check the flag before sleeping, then read once more
                        // so that entries written just before `stop` was set
                        // are not lost.
                        if t.stop.load(Ordering::Acquire) {
                            match self.read_entry() {
                                Ok(Some(e)) => return Some(Ok(e)),
                                Ok(None) => {
                                    self.done = true;
                                    return None;
                                }
                                Err(e) => {
                                    self.done = true;
                                    return Some(Err(e));
                                }
                            }
                        }
                        std::thread::sleep(t.poll);
                    }
                    None => {
                        self.done = true;
                        return None;
                    }
                },
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Iterator for TraceReader {
    type Item = Result<TraceEntry, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_inner()
    }
}
