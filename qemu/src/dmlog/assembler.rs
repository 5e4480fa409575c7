//! Rebuilds entries from a dm-log-writes log as it is being written to a
//! block device, which is how gammaray follows QEMU's `blklogwrites` driver
//! when the driver's `log` child is gammaray's NBD server.
//!
//! The writer sends (as device writes) each entry's header sector and data
//! at increasing log offsets, the data of write-zeroes entries as
//! write-zeroes requests, and rewrites the super in sector 0 now and then.
//! Requests may arrive out of order and large ones may be split, so writes
//! beyond the next expected entry are held (bounded) until the gap fills.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use gammaray_core::write::{DiskWrite, WriteFlags};

use super::{EntryHeader, EntryLayout, Super, TraceError, ENTRY_HEADER_LEN, MAX_ENTRY_DATA};

/// Most bytes of out-of-order log writes held while waiting for a gap to
/// fill (256 MiB). A writer with a bounded queue depth (QEMU's NBD client
/// keeps at most 16 requests of at most 32 MiB in flight) never reaches it.
pub const MAX_PENDING_BYTES: u64 = 256 << 20;
/// Most separate out-of-order pieces held.
pub const MAX_PENDING_PIECES: usize = 4096;

#[derive(Debug, Clone)]
enum Piece {
    Data(Bytes),
    Zero(u64),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Data(b) => b.len() as u64,
            Piece::Zero(n) => *n,
        }
    }

    /// Splits off the first `n` bytes (n < len).
    fn split_front(&mut self, n: u64) -> Piece {
        match self {
            Piece::Data(b) => Piece::Data(b.split_to(n as usize)),
            Piece::Zero(len) => {
                *len -= n;
                Piece::Zero(n)
            }
        }
    }
}

/// Counters of a [`LogAssembler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Entries decoded.
    pub entries: u64,
    /// Super rewrites seen.
    pub super_writes: u64,
    /// The `nr_entries` of the last super written.
    pub super_nr_entries: u64,
    /// Writes that landed on already-consumed log space (ignored).
    pub stale_writes: u64,
}

enum State {
    Header,
    Data { layout: EntryLayout, at: u64 },
}

/// Turns log-device writes into [`DiskWrite`]s, in log order.
pub struct LogAssembler {
    sector_size: u32,
    /// Log byte offset up to which everything has been consumed.
    cursor: u64,
    pending: BTreeMap<u64, Piece>,
    pending_bytes: u64,
    state: State,
    stats: AssemblerStats,
    /// The current super sector, as the reader of the log device sees it.
    super_sector: Vec<u8>,
}

impl std::fmt::Debug for LogAssembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogAssembler")
            .field("sector_size", &self.sector_size)
            .field("cursor", &self.cursor)
            .field("pending_bytes", &self.pending_bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl LogAssembler {
    /// A new assembler for a log with this sector size (the `log-sector-size`
    /// given to `blklogwrites`).
    pub fn new(sector_size: u32) -> Result<Self, TraceError> {
        if !super::valid_sector_size(sector_size.into()) {
            return Err(TraceError::BadSectorSize {
                found: sector_size.into(),
            });
        }
        Ok(LogAssembler {
            sector_size,
            cursor: u64::from(sector_size),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            state: State::Header,
            stats: AssemblerStats::default(),
            super_sector: Super {
                nr_entries: 0,
                sector_size,
            }
            .to_sector(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// True when no partial entry or out-of-order data is held.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && matches!(self.state, State::Header)
    }

    /// Bytes of the log device at `offset..offset+len` as last written:
    /// the super in sector 0 (a valid empty super before the writer's first
    /// one, so that `blklogwrites` with `log-append=on` can open it), zeroes
    /// elsewhere (entries are not kept).
    pub fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let ss = self.super_sector.len() as u64;
        if offset < ss {
            let start = offset as usize;
            let n = (ss as usize - start).min(len);
            out[..n].copy_from_slice(&self.super_sector[start..start + n]);
        }
        out
    }

    /// Takes a data write at log byte `offset`; returns the entries it
    /// completed.
    pub fn write(&mut self, offset: u64, data: Bytes) -> Result<Vec<DiskWrite>, TraceError> {
        self.insert(offset, Piece::Data(data))
    }

    /// Takes a write-zeroes request at log byte `offset`.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<Vec<DiskWrite>, TraceError> {
        self.insert(offset, Piece::Zero(len))
    }

    fn insert(&mut self, offset: u64, mut piece: Piece) -> Result<Vec<DiskWrite>, TraceError> {
        let ss = u64::from(self.sector_size);
        let len = piece.len();
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.checked_add(len).ok_or_else(|| TraceError::Stream {
            offset,
            detail: format!("write of {len} bytes overflows"),
        })?;
        let mut offset = offset;
        if offset < ss {
            // The super (possibly with the first entry in the same request).
            let n = (ss - offset).min(len);
            let head = if n < len {
                piece.split_front(n)
            } else {
                piece.clone()
            };
            self.super_write(offset, head)?;
            if n == len {
                return Ok(Vec::new());
            }
            offset = ss;
        }
        if end <= self.cursor {
            self.stats.stale_writes += 1;
            tracing::warn!("log write at {offset}+{len} lands on consumed log space; ignored");
            return Ok(Vec::new());
        }
        if offset < self.cursor {
            return Err(TraceError::Stream {
                offset,
                detail: format!(
                    "write overlaps consumed log space (next entry at {})",
                    self.cursor
                ),
            });
        }
        // Refuse overlaps with held pieces: a log is written once.
        if let Some((&o, p)) = self.pending.range(..end).next_back() {
            if o + p.len() > offset {
                return Err(TraceError::Stream {
                    offset,
                    detail: format!("write overlaps an earlier pending write at {o}"),
                });
            }
        }
        let held = match &piece {
            Piece::Data(b) => b.len() as u64,
            Piece::Zero(_) => 0,
        };
        if self.pending_bytes + held > MAX_PENDING_BYTES || self.pending.len() >= MAX_PENDING_PIECES
        {
            return Err(TraceError::Stream {
                offset,
                detail: format!(
                    "more than {MAX_PENDING_BYTES} bytes / {MAX_PENDING_PIECES} pieces of out-of-order log writes pending (next entry at {})",
                    self.cursor
                ),
            });
        }
        self.pending_bytes += held;
        self.pending.insert(offset, piece);
        self.drain()
    }

    fn super_write(&mut self, offset: u64, piece: Piece) -> Result<(), TraceError> {
        let start = offset as usize;
        match piece {
            Piece::Data(b) => self.super_sector[start..start + b.len()].copy_from_slice(&b),
            Piece::Zero(n) => self.super_sector[start..start + n as usize].fill(0),
        }
        if self.super_sector.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let sup = Super::from_bytes(&self.super_sector)?;
        if sup.sector_size != self.sector_size {
            return Err(TraceError::Stream {
                offset: 0,
                detail: format!(
                    "super says sector size {} but the log was set up with {}",
                    sup.sector_size, self.sector_size
                ),
            });
        }
        self.stats.super_writes += 1;
        self.stats.super_nr_entries = sup.nr_entries;
        tracing::trace!(nr_entries = sup.nr_entries, "log super rewritten");
        Ok(())
    }

    /// Contiguous bytes available at the cursor, up to `want`.
    fn available(&self, want: u64) -> u64 {
        let mut at = self.cursor;
        for (&o, p) in self.pending.range(self.cursor..) {
            if o != at || at - self.cursor >= want {
                break;
            }
            at += p.len();
        }
        at - self.cursor
    }

    /// Removes `n` contiguous bytes from the cursor (caller checked `available`).
    fn take(&mut self, n: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut left = n;
        while left > 0 {
            // OK to unwrap: `available` proved a piece starts at the cursor.
            let (o, mut p) = self.pending.pop_first().expect("piece at cursor");
            debug_assert_eq!(o, self.cursor);
            let plen = p.len();
            let piece = if plen > left {
                let front = p.split_front(left);
                self.pending.insert(o + left, p);
                front
            } else {
                p
            };
            let taken = piece.len();
            if let Piece::Data(_) = piece {
                self.pending_bytes -= taken;
            }
            self.cursor += taken;
            left -= taken;
            out.push(piece);
        }
        out
    }

    fn drain(&mut self) -> Result<Vec<DiskWrite>, TraceError> {
        let ss = u64::from(self.sector_size);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Header => {
                    if self.available(ss) < ss {
                        break;
                    }
                    let at = self.cursor;
                    let pieces = self.take(ss);
                    let sector = concat(&pieces, ss);
                    let mut hb = [0u8; ENTRY_HEADER_LEN];
                    hb.copy_from_slice(&sector[..ENTRY_HEADER_LEN]);
                    let header = EntryHeader::from_bytes(&hb);
                    let layout = header.layout(self.sector_size, self.stats.entries, at)?;
                    if layout.flags.contains(WriteFlags::MARK) {
                        let label =
                            sector.slice(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + layout.mark_len);
                        out.push(DiskWrite {
                            seq: self.stats.entries,
                            ts_ns: 0,
                            offset: 0,
                            len: label.len() as u64,
                            data: label,
                            flags: layout.flags,
                        });
                        self.stats.entries += 1;
                        if layout.data_bytes > 0 {
                            // Skip whatever a mark says follows it.
                            self.state = State::Data {
                                layout: EntryLayout {
                                    flags: WriteFlags::MARK,
                                    ..layout
                                },
                                at,
                            };
                        }
                    } else if layout.data_bytes == 0 {
                        out.push(self.emit(&layout, Bytes::new()));
                    } else {
                        self.state = State::Data { layout, at };
                    }
                }
                State::Data { layout, at } => {
                    let n = layout.data_bytes;
                    if self.available(n) < n {
                        break;
                    }
                    let pieces = self.take(n);
                    self.state = State::Header;
                    if layout.flags.contains(WriteFlags::MARK) {
                        continue;
                    }
                    if pieces.iter().all(|p| matches!(p, Piece::Zero(_))) {
                        let mut layout = layout;
                        layout.flags |= WriteFlags::ZEROES;
                        out.push(self.emit(&layout, Bytes::new()));
                    } else if n > MAX_ENTRY_DATA {
                        return Err(TraceError::EntryTooLarge {
                            entry: self.stats.entries,
                            offset: at,
                            len: n,
                        });
                    } else {
                        let data = concat(&pieces, n);
                        out.push(self.emit(&layout, data));
                    }
                }
            }
        }
        Ok(out)
    }

    fn emit(&mut self, layout: &EntryLayout, data: Bytes) -> DiskWrite {
        let w = DiskWrite {
            seq: self.stats.entries,
            ts_ns: 0,
            offset: layout.offset,
            len: layout.len,
            data,
            flags: layout.flags,
        };
        self.stats.entries += 1;
        w
    }
}

/// Joins pieces into one buffer (zero-copy for a single data piece).
fn concat(pieces: &[Piece], total: u64) -> Bytes {
    if let [Piece::Data(b)] = pieces {
        return b.clone();
    }
    let mut out = BytesMut::with_capacity(total as usize);
    for p in pieces {
        match p {
            Piece::Data(b) => out.extend_from_slice(b),
            Piece::Zero(n) => out.resize(out.len() + *n as usize, 0),
        }
    }
    out.freeze()
}
