//! The dm-log-writes trace format.
//!
//! Linux's `dm-log-writes` target (`drivers/md/dm-log-writes.c`) and QEMU's
//! `blklogwrites` block driver (`block/blklogwrites.c`) both write it. All
//! integers are little-endian. The log is divided into *log sectors* of
//! `sectorsize` bytes (512 or 4096 in practice):
//!
//! - log sector 0 holds the [`Super`]: magic `0x6a736677736872`, version 1,
//!   `nr_entries`, `sectorsize`. Writers rewrite it as entries are added
//!   (the kernel after FUA and mark entries, QEMU after flushes and every
//!   4096 entries), so its count can lag behind the entries present.
//! - each entry starts with one log sector whose first 32 bytes are an
//!   [`EntryHeader`] `{sector, nr_sectors, flags, data_len}`; a mark entry
//!   keeps its label (`data_len` bytes) in the same sector right after the
//!   header.
//! - unless the entry is a discard, `nr_sectors` log sectors of data follow.
//!
//! `sector` and `nr_sectors` count **log sectors**, not 512-byte units: the
//! kernel converts bio sectors with `bio_to_dev_sectors` (a shift by
//! `log2(sectorsize) - 9`) and QEMU stores `offset >> sectorbits`. So a write
//! at guest byte `B` in a 4096-byte-sector log has `sector = B / 4096`.
//! `data_len` is 0 for plain writes (both the kernel and QEMU); the data
//! length is `nr_sectors * sectorsize`.
//!
//! Flags: 1 flush, 2 FUA, 4 discard, 8 mark, 16 metadata (kernel only; it
//! carries no meaning for replay and is accepted and dropped).

mod assembler;
mod reader;
mod writer;

pub use assembler::{AssemblerStats, LogAssembler};
pub use reader::{ReadOptions, TailOptions, TraceEntry, TraceReader};
pub use writer::TraceWriter;

use gammaray_core::write::WriteFlags;

/// `WRITE_LOG_MAGIC` of the kernel and QEMU.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// `WRITE_LOG_VERSION`: the only version there is.
pub const VERSION: u64 = 1;
/// Size of the super's fields on disk (magic, version, nr_entries, sectorsize).
pub const SUPER_LEN: usize = 28;
/// Size of an entry header (`sector`, `nr_sectors`, `flags`, `data_len`).
pub const ENTRY_HEADER_LEN: usize = 32;
/// Largest entry data gammaray materializes in memory (64 MiB). An entry that
/// claims more data is rejected (unless its data is all zeroes, which is
/// reported as a write-zeroes request without allocating it), so a corrupt
/// or hostile length can never make gammaray allocate gigabytes. Guests'
/// single requests are far smaller (virtio-blk sends at most a few MiB).
pub const MAX_ENTRY_DATA: u64 = 64 << 20;
/// Smallest log sector size accepted (the kernel's and QEMU's default).
pub const MIN_SECTOR_SIZE: u32 = 512;
/// Largest log sector size accepted (64 KiB: larger than any real device's
/// logical block size; QEMU allows up to 16 MiB but nothing uses that).
pub const MAX_SECTOR_SIZE: u32 = 64 << 10;

/// `LOG_FLUSH_FLAG`.
pub const FLAG_FLUSH: u64 = 1;
/// `LOG_FUA_FLAG`.
pub const FLAG_FUA: u64 = 2;
/// `LOG_DISCARD_FLAG`.
pub const FLAG_DISCARD: u64 = 4;
/// `LOG_MARK_FLAG`.
pub const FLAG_MARK: u64 = 8;
/// `LOG_METADATA_FLAG` (kernel: the bio had `REQ_META`).
pub const FLAG_METADATA: u64 = 16;
/// Every flag bit a valid entry may carry.
pub const FLAG_MASK: u64 = FLAG_FLUSH | FLAG_FUA | FLAG_DISCARD | FLAG_MARK | FLAG_METADATA;

/// Errors reading or writing a dm-log-writes trace. Corruption variants name
/// the entry number and the byte offset in the log where the damage is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// Reading or writing the log failed.
    #[error("trace I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The log is shorter than one super.
    #[error("trace too short for a super: {len} bytes")]
    TooShort {
        /// The log's length in bytes.
        len: u64,
    },
    /// The super's magic is wrong.
    #[error("trace super at byte 0: bad magic {found:#x} (expected {MAGIC:#x})")]
    BadMagic {
        /// The magic found.
        found: u64,
    },
    /// The super's version is not 1.
    #[error("trace super at byte 0: unsupported version {found} (expected {VERSION})")]
    BadVersion {
        /// The version found.
        found: u64,
    },
    /// The super's sector size is not a power of two in the accepted range.
    #[error("trace super at byte 0: invalid sectorsize {found} (power of two {MIN_SECTOR_SIZE}..={MAX_SECTOR_SIZE} expected)")]
    BadSectorSize {
        /// The sector size found.
        found: u64,
    },
    /// An entry's flags have bits no writer sets.
    #[error("trace entry {entry} at byte {offset}: invalid flags {flags:#x}")]
    BadFlags {
        /// Entry number (0-based).
        entry: u64,
        /// Byte offset of the entry header in the log.
        offset: u64,
        /// The flags found.
        flags: u64,
    },
    /// A mark entry's label does not fit in its sector.
    #[error("trace entry {entry} at byte {offset}: mark data_len {data_len} does not fit in a {sector_size}-byte sector")]
    BadMarkLen {
        /// Entry number (0-based).
        entry: u64,
        /// Byte offset of the entry header in the log.
        offset: u64,
        /// The data length claimed.
        data_len: u64,
        /// The log's sector size.
        sector_size: u32,
    },
    /// An entry's range overflows 64-bit byte offsets.
    #[error("trace entry {entry} at byte {offset}: range sector {sector} + {nr_sectors} sectors overflows")]
    RangeOverflow {
        /// Entry number (0-based).
        entry: u64,
        /// Byte offset of the entry header in the log.
        offset: u64,
        /// The entry's first sector.
        sector: u64,
        /// The entry's sector count.
        nr_sectors: u64,
    },
    /// An entry claims more data than [`MAX_ENTRY_DATA`] and it is not all zeroes.
    #[error("trace entry {entry} at byte {offset}: {len} bytes of data exceed the {MAX_ENTRY_DATA}-byte limit")]
    EntryTooLarge {
        /// Entry number (0-based).
        entry: u64,
        /// Byte offset of the entry header in the log.
        offset: u64,
        /// The data length claimed.
        len: u64,
    },
    /// The log ends inside an entry (or before `nr_entries` entries).
    #[error("trace entry {entry} at byte {offset}: log ends at byte {log_len}, entry needs {needed} bytes")]
    Truncated {
        /// Entry number (0-based).
        entry: u64,
        /// Byte offset of the entry header in the log.
        offset: u64,
        /// Bytes the entry needs from `offset`.
        needed: u64,
        /// The log's length.
        log_len: u64,
    },
    /// A request given to the writer is not aligned to the log's sectors.
    #[error("cannot log request at byte {offset} len {len}: not aligned to the {sector_size}-byte log sector")]
    Unaligned {
        /// Guest byte offset.
        offset: u64,
        /// Length in bytes.
        len: u64,
        /// The log's sector size.
        sector_size: u32,
    },
    /// A mark label given to the writer is too long for one sector.
    #[error("mark label of {len} bytes does not fit in a {sector_size}-byte log sector")]
    MarkTooLong {
        /// Label length.
        len: usize,
        /// The log's sector size.
        sector_size: u32,
    },
    /// The live log stream broke the format's rules (see the message).
    #[error("log stream at byte {offset}: {detail}")]
    Stream {
        /// Byte offset in the log device.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
}

/// Checks a log sector size: a power of two in `MIN..=MAX_SECTOR_SIZE`.
pub fn valid_sector_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_SECTOR_SIZE as u64..=MAX_SECTOR_SIZE as u64).contains(&size)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The log's super (log sector 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Super {
    /// Entries the writer had logged when it last rewrote the super.
    pub nr_entries: u64,
    /// Log sector size in bytes.
    pub sector_size: u32,
}

impl Super {
    /// Parses and validates a super from at least [`SUPER_LEN`] bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, TraceError> {
        if b.len() < SUPER_LEN {
            return Err(TraceError::TooShort {
                len: b.len() as u64,
            });
        }
        let magic = le64(b, 0);
        if magic != MAGIC {
            return Err(TraceError::BadMagic { found: magic });
        }
        let version = le64(b, 8);
        if version != VERSION {
            return Err(TraceError::BadVersion { found: version });
        }
        let nr_entries = le64(b, 16);
        let sector_size = u32::from_le_bytes([b[24], b[25], b[26], b[27]]);
        if !valid_sector_size(sector_size.into()) {
            return Err(TraceError::BadSectorSize {
                found: sector_size.into(),
            });
        }
        Ok(Super {
            nr_entries,
            sector_size,
        })
    }

    /// Encodes the super as one full log sector (zero padded).
    pub fn to_sector(&self) -> Vec<u8> {
        let mut s = vec![0u8; self.sector_size as usize];
        s[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        s[8..16].copy_from_slice(&VERSION.to_le_bytes());
        s[16..24].copy_from_slice(&self.nr_entries.to_le_bytes());
        s[24..28].copy_from_slice(&self.sector_size.to_le_bytes());
        s
    }
}

/// One entry header, as stored (`struct log_write_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryHeader {
    /// First guest sector, in log sectors.
    pub sector: u64,
    /// Number of log sectors written (or discarded).
    pub nr_sectors: u64,
    /// `LOG_*_FLAG` bits.
    pub flags: u64,
    /// Length of a mark's label; 0 for writes.
    pub data_len: u64,
}

/// What an entry means once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLayout {
    /// Guest byte offset.
    pub offset: u64,
    /// Guest bytes affected.
    pub len: u64,
    /// Data bytes following the header sector in the log.
    pub data_bytes: u64,
    /// Flags as gammaray names them.
    pub flags: WriteFlags,
    /// Mark label length (within the header sector).
    pub mark_len: usize,
}

impl EntryHeader {
    /// Reads the header fields from the first 32 bytes of an entry sector.
    pub fn from_bytes(b: &[u8; ENTRY_HEADER_LEN]) -> Self {
        EntryHeader {
            sector: le64(b, 0),
            nr_sectors: le64(b, 8),
            flags: le64(b, 16),
            data_len: le64(b, 24),
        }
    }

    /// Encodes the header into the first 32 bytes of `out`.
    pub fn write_to(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.sector.to_le_bytes());
        out[8..16].copy_from_slice(&self.nr_sectors.to_le_bytes());
        out[16..24].copy_from_slice(&self.flags.to_le_bytes());
        out[24..32].copy_from_slice(&self.data_len.to_le_bytes());
    }

    /// Validates the header of entry `entry` found at log byte `at` and works
    /// out its guest range and data size.
    pub(crate) fn layout(
        &self,
        sector_size: u32,
        entry: u64,
        at: u64,
    ) -> Result<EntryLayout, TraceError> {
        if self.flags & !FLAG_MASK != 0 {
            return Err(TraceError::BadFlags {
                entry,
                offset: at,
                flags: self.flags,
            });
        }
        let ss = u64::from(sector_size);
        let overflow = || TraceError::RangeOverflow {
            entry,
            offset: at,
            sector: self.sector,
            nr_sectors: self.nr_sectors,
        };
        let offset = self.sector.checked_mul(ss).ok_or_else(overflow)?;
        let len = self.nr_sectors.checked_mul(ss).ok_or_else(overflow)?;
        offset.checked_add(len).ok_or_else(overflow)?;
        let mut flags = WriteFlags::empty();
        if self.flags & FLAG_FLUSH != 0 {
            flags |= WriteFlags::FLUSH;
        }
        if self.flags & FLAG_FUA != 0 {
            flags |= WriteFlags::FUA;
        }
        let mut mark_len = 0;
        let data_bytes;
        if self.flags & FLAG_MARK != 0 {
            flags |= WriteFlags::MARK;
            let room = ss - ENTRY_HEADER_LEN as u64;
            if self.data_len > room {
                return Err(TraceError::BadMarkLen {
                    entry,
                    offset: at,
                    data_len: self.data_len,
                    sector_size,
                });
            }
            mark_len = self.data_len as usize;
            // The kernel's marks have nr_sectors 0; follow nr_sectors anyway
            // when laying out the log, as the kernel's own replay does.
            data_bytes = len;
        } else if self.flags & FLAG_DISCARD != 0 {
            flags |= WriteFlags::DISCARD;
            data_bytes = 0;
        } else {
            data_bytes = len;
        }
        Ok(EntryLayout {
            offset,
            len,
            data_bytes,
            flags,
            mark_len,
        })
    }
}

#[cfg(test)]
mod tests;
