//! The jbd2 journal: its superblock, descriptor, revoke and commit blocks,
//! and a walker that turns one committed transaction into the list of home
//! blocks it logs.
//!
//! jbd2 is big-endian, unlike the rest of ext4. Every log block starts with
//! a 12-byte header (`h_magic`, `h_blocktype`, `h_sequence`). A transaction
//! is a run of descriptor blocks (each followed by copies of the metadata
//! blocks its tags name) and revoke blocks, ended by a commit block; the log
//! wraps from the end of the journal back to `s_first`.
//!
//! Field layouts follow `include/linux/jbd2.h` and
//! `Documentation/filesystems/ext4/journal.rst`. Checksums (`csum v2/v3`)
//! are crc32c seeded with the journal UUID's crc, as the kernel computes
//! them. Guest data is hostile: every reader is bounds-checked and every
//! loop is bounded by the block or the journal length.
//!
//! Not handled: the fast-commit area (its blocks carry no jbd2 header; the
//! log wraps before it), the v1 `COMPAT_CHECKSUM` crc32 commit checksum
//! (treated as absent). The journal superblock's own checksum is checked
//! only on request ([`superblock_checksum_ok`]).
//!
//! Byte offsets in errors are those the caller passes in; [`walk_transaction`]
//! reports offsets inside the journal (logical block × block size).

use gammaray_core::{Error, Result};

use crate::csum::crc32c_raw;

/// `h_magic` of every jbd2 block.
pub const JBD2_MAGIC: u32 = 0xC03B_3998;

/// Size of the common block header (`journal_header_t`).
pub const HEADER_SIZE: usize = 12;
/// Size of the on-disk journal superblock (`journal_superblock_t`).
pub const SUPERBLOCK_SIZE: usize = 1024;
/// Smallest journal block size.
pub const MIN_BLOCK_SIZE: u32 = 1024;
/// Largest journal block size (ext4's largest block).
pub const MAX_BLOCK_SIZE: u32 = 65536;
/// Fast-commit blocks when `s_num_fc_blks` is 0
/// (`JBD2_DEFAULT_FAST_COMMIT_BLOCKS`).
pub const DEFAULT_FAST_COMMIT_BLOCKS: u32 = 256;
/// Size of the checksum tail of descriptor and revoke blocks under csum
/// v2/v3 (`struct jbd2_journal_block_tail`).
pub const TAIL_SIZE: usize = 4;
/// Size of a revoke block's header (`jbd2_journal_revoke_header_t`).
pub const REVOKE_HEADER_SIZE: usize = 16;
/// Byte offset of `h_chksum[0]` in a commit block.
const COMMIT_CHKSUM_OFFSET: usize = 0x10;
/// Size of the UUID that follows a tag without `SAME_UUID`.
const TAG_UUID_SIZE: usize = 16;

/// `h_blocktype` values.
pub mod block_type {
    /// Descriptor block: tags naming the blocks that follow.
    pub const DESCRIPTOR: u32 = 1;
    /// Commit block: ends a transaction.
    pub const COMMIT: u32 = 2;
    /// Journal superblock, version 1.
    pub const SUPERBLOCK_V1: u32 = 3;
    /// Journal superblock, version 2.
    pub const SUPERBLOCK_V2: u32 = 4;
    /// Revoke block: home blocks earlier transactions must not replay.
    pub const REVOKE: u32 = 5;
}

/// `s_feature_compat` bits.
pub mod compat {
    /// Commit blocks carry a crc32 of the transaction's data (v1 checksums).
    pub const CHECKSUM: u32 = 0x1;
}

/// `s_feature_incompat` bits.
pub mod incompat {
    /// Revoke blocks exist.
    pub const REVOKE: u32 = 0x1;
    /// Block numbers are 64-bit (tags and revoke records).
    pub const BIT64: u32 = 0x2;
    /// Commit blocks may be written before the data they commit.
    pub const ASYNC_COMMIT: u32 = 0x4;
    /// crc32c checksums, 16-bit per-tag checksums.
    pub const CSUM_V2: u32 = 0x8;
    /// crc32c checksums, 32-bit per-tag checksums (`journal_block_tag3_t`).
    pub const CSUM_V3: u32 = 0x10;
    /// A fast-commit area follows the log.
    pub const FAST_COMMIT: u32 = 0x20;
}

/// Descriptor tag `t_flags` bits.
pub mod tag_flags {
    /// The block's first 4 bytes were the jbd2 magic and were zeroed.
    pub const ESCAPE: u32 = 0x1;
    /// No UUID follows this tag.
    pub const SAME_UUID: u32 = 0x2;
    /// Block deleted by this transaction (unused by recovery).
    pub const DELETED: u32 = 0x4;
    /// Last tag of the descriptor.
    pub const LAST_TAG: u32 = 0x8;
}

/// Reads a big-endian `u32` at `off`, 0 outside the slice.
fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = off.checked_add(4).and_then(|end| b.get(off..end)) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

/// Reads a big-endian `u16` at `off`, 0 outside the slice.
fn be16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = off.checked_add(2).and_then(|end| b.get(off..end)) {
        a.copy_from_slice(s);
    }
    u16::from_be_bytes(a)
}

/// `u32` → `usize` (lossless on every platform gammaray builds for).
fn us(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// `base + off` as a byte offset for error messages (saturating).
fn at(base: u64, off: usize) -> u64 {
    base.saturating_add(u64::try_from(off).unwrap_or(u64::MAX))
}

/// Journal superblock (journal logical block 0), v1 or v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSuperblock {
    /// `s_blocksize`: journal block size in bytes (a power of two, 1K..64K).
    pub block_size: u32,
    /// `s_maxlen`: total journal blocks, including the fast-commit area.
    pub maxlen: u32,
    /// `s_first`: first log block.
    pub first: u32,
    /// `s_sequence`: first transaction expected in the log.
    pub sequence: u32,
    /// `s_start`: log block of that transaction; 0 when the log is empty.
    pub start: u32,
    /// `s_feature_compat` (0 on a v1 superblock).
    pub compat: u32,
    /// `s_feature_incompat` (0 on a v1 superblock).
    pub incompat: u32,
    /// `s_feature_ro_compat` (0 on a v1 superblock).
    pub ro_compat: u32,
    /// `s_uuid`.
    pub uuid: [u8; 16],
    /// Blocks in the fast-commit area at the end of the journal: 0 without
    /// `FAST_COMMIT`, else `s_num_fc_blks` or its default of 256 when 0.
    pub num_fc_blocks: u32,
    /// `crc32c(~0, uuid)` as the kernel computes it (`j_csum_seed`); 0
    /// without csum v2/v3.
    pub csum_seed: u32,
}

impl JournalSuperblock {
    /// Parses the journal superblock from the start of `b` (at least 1024
    /// bytes). `offset` is its byte offset, used in errors.
    ///
    /// Checks the magic, the block type (3 or 4), the block size (a power
    /// of two from 1K to 64K), `s_first` (at least 1, below the end of the
    /// log) and `s_start` (below `s_maxlen`).
    pub fn from_bytes(b: &[u8], offset: u64) -> Result<Self> {
        const S: &str = "jbd2 superblock";
        if b.len() < SUPERBLOCK_SIZE {
            return Err(Error::corrupt(
                S,
                offset,
                format!("{} bytes, need {SUPERBLOCK_SIZE}", b.len()),
            ));
        }
        let magic = be32(b, 0);
        if magic != JBD2_MAGIC {
            return Err(Error::corrupt(S, offset, format!("magic {magic:#x}")));
        }
        let kind = be32(b, 4);
        let v2 = match kind {
            block_type::SUPERBLOCK_V1 => false,
            block_type::SUPERBLOCK_V2 => true,
            _ => {
                return Err(Error::corrupt(
                    S,
                    at(offset, 4),
                    format!("block type {kind}, expected 3 or 4"),
                ))
            }
        };
        let block_size = be32(b, 0xC);
        if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
        {
            return Err(Error::corrupt(
                S,
                at(offset, 0xC),
                format!("block size {block_size}"),
            ));
        }
        let maxlen = be32(b, 0x10);
        let first = be32(b, 0x14);
        let sequence = be32(b, 0x18);
        let start = be32(b, 0x1C);
        let (compat, incompat, ro_compat) = if v2 {
            (be32(b, 0x24), be32(b, 0x28), be32(b, 0x2C))
        } else {
            (0, 0, 0)
        };
        let mut uuid = [0u8; 16];
        if let Some(s) = b.get(0x30..0x40) {
            uuid.copy_from_slice(s);
        }
        let num_fc_blocks = if incompat & incompat::FAST_COMMIT != 0 {
            match be32(b, 0x54) {
                0 => DEFAULT_FAST_COMMIT_BLOCKS,
                n => n,
            }
        } else {
            0
        };
        let log_end = maxlen.checked_sub(num_fc_blocks).ok_or_else(|| {
            Error::corrupt(
                S,
                at(offset, 0x54),
                format!("{num_fc_blocks} fast-commit blocks in a journal of {maxlen}"),
            )
        })?;
        if first == 0 || first >= log_end {
            return Err(Error::corrupt(
                S,
                at(offset, 0x14),
                format!("s_first {first}, log ends at {log_end} (s_maxlen {maxlen})"),
            ));
        }
        if start >= maxlen {
            return Err(Error::corrupt(
                S,
                at(offset, 0x1C),
                format!("s_start {start} >= s_maxlen {maxlen}"),
            ));
        }
        let csum_seed = if incompat & (incompat::CSUM_V2 | incompat::CSUM_V3) != 0 {
            crc32c_raw(!0, &uuid)
        } else {
            0
        };
        Ok(Self {
            block_size,
            maxlen,
            first,
            sequence,
            start,
            compat,
            incompat,
            ro_compat,
            uuid,
            num_fc_blocks,
            csum_seed,
        })
    }

    /// Block numbers (tags, revoke records) are 64-bit.
    pub fn is_64bit(&self) -> bool {
        self.incompat & incompat::BIT64 != 0
    }

    /// Metadata checksums v2 or v3 (crc32c) are on.
    pub fn csum_v2or3(&self) -> bool {
        self.incompat & (incompat::CSUM_V2 | incompat::CSUM_V3) != 0
    }

    /// Checksums v3 (32-bit tag checksums, `journal_block_tag3_t`).
    pub fn csum_v3(&self) -> bool {
        self.incompat & incompat::CSUM_V3 != 0
    }

    /// A fast-commit area sits at the end of the journal.
    pub fn has_fast_commit(&self) -> bool {
        self.incompat & incompat::FAST_COMMIT != 0
    }

    /// One past the last log block: `s_maxlen` less the fast-commit area.
    pub fn log_end(&self) -> u32 {
        self.maxlen.saturating_sub(self.num_fc_blocks)
    }

    /// Journal logical block after `l`, wrapping from the last log block
    /// (`maxlen - 1`, or the last block before the fast-commit area) back
    /// to `first`.
    pub fn next(&self, l: u32) -> u32 {
        match l.checked_add(1) {
            Some(n) if n < self.log_end() => n,
            _ => self.first,
        }
    }

    /// Size of one descriptor tag (`journal_tag_bytes()` in the kernel).
    pub fn tag_bytes(&self) -> usize {
        if self.csum_v3() {
            return 16;
        }
        // journal_block_tag_t is 12 bytes; csum v2 adds 2, 32-bit drops the
        // 4-byte high word.
        let mut sz = 12;
        if self.incompat & incompat::CSUM_V2 != 0 {
            sz += 2;
        }
        if self.is_64bit() {
            sz
        } else {
            sz - 4
        }
    }

    /// Bytes at the end of descriptor and revoke blocks taken by the
    /// checksum tail (4 with csum v2/v3, else 0).
    fn tail_size(&self) -> usize {
        if self.csum_v2or3() {
            TAIL_SIZE
        } else {
            0
        }
    }

    /// `block_size` as a `usize`.
    fn bs(&self) -> usize {
        us(self.block_size)
    }
}

/// The kind of a jbd2 block, from `h_blocktype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Descriptor block (type 1).
    Descriptor,
    /// Commit block (type 2).
    Commit,
    /// Journal superblock v1 (type 3).
    SuperblockV1,
    /// Journal superblock v2 (type 4).
    SuperblockV2,
    /// Revoke block (type 5).
    Revoke,
}

/// A jbd2 block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The block type.
    pub kind: BlockKind,
    /// `h_sequence`: the transaction this block belongs to.
    pub sequence: u32,
}

/// The header of a journal block; `None` when the block does not start
/// with the magic and a known type.
pub fn header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_SIZE || be32(b, 0) != JBD2_MAGIC {
        return None;
    }
    let kind = match be32(b, 4) {
        block_type::DESCRIPTOR => BlockKind::Descriptor,
        block_type::COMMIT => BlockKind::Commit,
        block_type::SUPERBLOCK_V1 => BlockKind::SuperblockV1,
        block_type::SUPERBLOCK_V2 => BlockKind::SuperblockV2,
        block_type::REVOKE => BlockKind::Revoke,
        _ => return None,
    };
    Some(Header {
        kind,
        sequence: be32(b, 8),
    })
}

/// One descriptor tag: a home block whose copy follows in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// Home block number (file-system block).
    pub home: u64,
    /// The copy's first 4 bytes were the magic and are zeroed in the log;
    /// see [`unescape`].
    pub escaped: bool,
    /// Per-tag data checksum: 32 bits under csum v3, the low 16 bits under
    /// csum v2, 0 otherwise.
    pub checksum: u32,
}

/// Checks that `b` holds a whole block of kind `want`, returns the block.
fn block_of<'a>(
    sb: &JournalSuperblock,
    b: &'a [u8],
    offset: u64,
    want: BlockKind,
    structure: &'static str,
) -> Result<&'a [u8]> {
    let bs = sb.bs();
    let b = b.get(..bs).ok_or_else(|| {
        Error::corrupt(
            structure,
            offset,
            format!("{} bytes, block size {bs}", b.len()),
        )
    })?;
    match header(b) {
        Some(h) if h.kind == want => Ok(b),
        Some(h) => Err(Error::corrupt(
            structure,
            offset,
            format!("block type {:?}, expected {want:?}", h.kind),
        )),
        None => Err(Error::corrupt(structure, offset, "no jbd2 header")),
    }
}

/// Tags of a descriptor block, in order.
///
/// Handles the tag v2 (8, 10, 12 or 14 bytes) and v3 (16 bytes) layouts,
/// the 64-bit high word, the UUID after tags without `SAME_UUID`, stops at
/// `LAST_TAG`, and leaves out the checksum tail under csum v2/v3. Bounded
/// by the block. `offset` is the block's byte offset, used in errors.
pub fn descriptor_tags(sb: &JournalSuperblock, b: &[u8], offset: u64) -> Result<Vec<Tag>> {
    let b = block_of(sb, b, offset, BlockKind::Descriptor, "jbd2 descriptor")?;
    let size = b.len().saturating_sub(sb.tail_size());
    let tag_bytes = sb.tag_bytes();
    let v3 = sb.csum_v3();
    let mut tags = Vec::with_capacity(size / tag_bytes);
    let mut pos = HEADER_SIZE;
    while pos.checked_add(tag_bytes).is_some_and(|end| end <= size) {
        let lo = be32(b, pos);
        let (flags, hi, checksum) = if v3 {
            (be32(b, pos + 4), be32(b, pos + 8), be32(b, pos + 12))
        } else {
            let csum = if sb.incompat & incompat::CSUM_V2 != 0 {
                u32::from(be16(b, pos + 4))
            } else {
                0
            };
            // t_blocknr_high is only on disk with 64-bit; else it reads
            // into the next tag, so ignore it.
            let hi = if sb.is_64bit() { be32(b, pos + 8) } else { 0 };
            (u32::from(be16(b, pos + 6)), hi, csum)
        };
        tags.push(Tag {
            home: u64::from(lo) | (u64::from(hi) << 32),
            escaped: flags & tag_flags::ESCAPE != 0,
            checksum,
        });
        pos += tag_bytes;
        if flags & tag_flags::SAME_UUID == 0 {
            pos = pos.saturating_add(TAG_UUID_SIZE);
        }
        if flags & tag_flags::LAST_TAG != 0 {
            break;
        }
    }
    Ok(tags)
}

/// Revoked home block numbers of a revoke block, in order.
///
/// `r_count` (bytes used, header included) must fit the block less the
/// checksum tail; records are 8 bytes with 64-bit, else 4. `offset` is the
/// block's byte offset, used in errors.
pub fn revoke_records(sb: &JournalSuperblock, b: &[u8], offset: u64) -> Result<Vec<u64>> {
    let b = block_of(sb, b, offset, BlockKind::Revoke, "jbd2 revoke")?;
    let count = us(be32(b, HEADER_SIZE));
    let max = b.len().saturating_sub(sb.tail_size());
    if count > max {
        return Err(Error::corrupt(
            "jbd2 revoke",
            at(offset, HEADER_SIZE),
            format!("r_count {count} past the {max} usable bytes of the block"),
        ));
    }
    let rec = if sb.is_64bit() { 8 } else { 4 };
    let mut out = Vec::with_capacity(count.saturating_sub(REVOKE_HEADER_SIZE) / rec);
    let mut pos = REVOKE_HEADER_SIZE;
    while pos + rec <= count {
        let home = if rec == 8 {
            (u64::from(be32(b, pos)) << 32) | u64::from(be32(b, pos + 4))
        } else {
            u64::from(be32(b, pos))
        };
        out.push(home);
        pos += rec;
    }
    Ok(out)
}

/// crc32c of `b` with the 4 bytes at `hole` taken as zero.
fn crc_with_hole(seed: u32, b: &[u8], hole: usize) -> u32 {
    let (a, rest) = b.split_at(hole.min(b.len()));
    let c = crc32c_raw(seed, a);
    let c = crc32c_raw(c, &[0u8; 4]);
    crc32c_raw(c, rest.get(4..).unwrap_or(&[]))
}

/// True if the commit block's checksum is right (always true without csum
/// v2/v3, and false for a block shorter than the block size).
pub fn commit_checksum_ok(sb: &JournalSuperblock, b: &[u8]) -> bool {
    if !sb.csum_v2or3() {
        return true;
    }
    let Some(b) = b.get(..sb.bs()) else {
        return false;
    };
    crc_with_hole(sb.csum_seed, b, COMMIT_CHKSUM_OFFSET) == be32(b, COMMIT_CHKSUM_OFFSET)
}

/// Byte offset of `s_checksum` in the journal superblock.
const SB_CHECKSUM_OFFSET: usize = 0xFC;

/// True if the journal superblock's own checksum (`s_checksum`, crc32c of
/// its 1024 bytes) is right; always true without csum v2/v3, false when `b`
/// is shorter than 1024 bytes.
pub fn superblock_checksum_ok(sb: &JournalSuperblock, b: &[u8]) -> bool {
    if !sb.csum_v2or3() {
        return true;
    }
    let Some(b) = b.get(..SUPERBLOCK_SIZE) else {
        return false;
    };
    crc_with_hole(!0, b, SB_CHECKSUM_OFFSET) == be32(b, SB_CHECKSUM_OFFSET)
}

/// True if a descriptor or revoke block's tail checksum is right (always
/// true without csum v2/v3, and false for a block shorter than the block
/// size).
pub fn block_tail_checksum_ok(sb: &JournalSuperblock, b: &[u8]) -> bool {
    if !sb.csum_v2or3() {
        return true;
    }
    let Some(b) = b.get(..sb.bs()) else {
        return false;
    };
    let tail = b.len().saturating_sub(TAIL_SIZE);
    crc_with_hole(sb.csum_seed, b, tail) == be32(b, tail)
}

/// True if a logged data block (as stored in the journal, before
/// [`unescape`]) matches its tag's checksum in transaction `sequence`
/// (always true without csum v2/v3).
pub fn data_checksum_ok(sb: &JournalSuperblock, sequence: u32, tag: &Tag, data: &[u8]) -> bool {
    if !sb.csum_v2or3() {
        return true;
    }
    let Some(data) = data.get(..sb.bs()) else {
        return false;
    };
    let c = crc32c_raw(sb.csum_seed, &sequence.to_be_bytes());
    let c = crc32c_raw(c, data);
    if sb.csum_v3() {
        c == tag.checksum
    } else {
        c & 0xFFFF == tag.checksum
    }
}

/// Restores the magic in the first 4 bytes of an escaped data block.
pub fn unescape(b: &mut [u8]) {
    if let Some(s) = b.get_mut(..4) {
        s.copy_from_slice(&JBD2_MAGIC.to_be_bytes());
    }
}

/// One logged block of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalBlock {
    /// Home block number (file-system block) the copy belongs at.
    pub home: u64,
    /// Journal logical block holding the copy.
    pub logical: u32,
    /// The copy is escaped: restore its magic with [`unescape`].
    pub escaped: bool,
}

/// One committed transaction as found in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Transaction id (`h_sequence`).
    pub sequence: u32,
    /// Logged blocks in log order. A home block may appear more than once;
    /// apply them in order, the later copy wins.
    pub blocks: Vec<JournalBlock>,
    /// Home blocks revoked by this transaction, in log order. A revoke
    /// tells recovery not to replay copies of the block from this or
    /// earlier transactions.
    pub revoked: Vec<u64>,
    /// Journal logical block of the commit block.
    pub commit: u32,
    /// Journal blocks the transaction spans, from its first block to its
    /// commit block inclusive.
    pub len: u32,
    /// Descriptor and revoke blocks whose tail checksum is wrong (csum
    /// v2/v3 only).
    pub bad_block_checksums: u32,
    /// Logged blocks whose data does not match their tag checksum (csum
    /// v2/v3 only).
    pub bad_tag_checksums: u32,
}

/// Walks transaction `sequence` from journal logical block `start` to the
/// commit block at `commit`. `read(l, buf)` fills `buf` (block size bytes)
/// with journal logical block `l`.
///
/// Fails ([`Error::Corrupt`], with the byte offset inside the journal) if a
/// block on the way is not a descriptor, revoke or commit block of this
/// sequence where one is expected, if a commit block of it appears before
/// `commit`, if a descriptor's data blocks run past `commit`, if the commit
/// checksum is wrong, or after `maxlen` blocks. Descriptor/revoke tail and
/// per-tag data checksum mismatches are counted, not failed (the data
/// blocks are read for this only under csum v2/v3). `read` errors are
/// returned as they are.
pub fn walk_transaction(
    sb: &JournalSuperblock,
    start: u32,
    sequence: u32,
    commit: u32,
    read: &mut dyn FnMut(u32, &mut [u8]) -> Result<()>,
) -> Result<Transaction> {
    const S: &str = "jbd2 transaction";
    let bs = u64::from(sb.block_size);
    let pos = |l: u32| u64::from(l).saturating_mul(bs);
    let log_end = sb.log_end();
    for (name, l) in [("start", start), ("commit", commit)] {
        if l < sb.first || l >= log_end {
            return Err(Error::corrupt(
                S,
                pos(l),
                format!("{name} block {l} outside the log ({}..{log_end})", sb.first),
            ));
        }
    }
    let mut buf = vec![0u8; sb.bs()];
    let mut data = Vec::new();
    let mut t = Transaction {
        sequence,
        blocks: Vec::new(),
        revoked: Vec::new(),
        commit,
        len: 0,
        bad_block_checksums: 0,
        bad_tag_checksums: 0,
    };
    let too_long = |l: u32| {
        Error::corrupt(
            S,
            pos(l),
            format!(
                "transaction {sequence} from block {start} does not reach its commit at {commit} \
                 within the journal's {} blocks",
                sb.maxlen
            ),
        )
    };
    let mut l = start;
    loop {
        // Each position costs one step; a transaction cannot span more
        // blocks than the journal has.
        if t.len >= sb.maxlen {
            return Err(too_long(l));
        }
        t.len += 1;
        read(l, &mut buf)?;
        let h = match header(&buf) {
            Some(h) if h.sequence == sequence => h,
            Some(h) => {
                return Err(Error::corrupt(
                    S,
                    pos(l),
                    format!(
                        "{:?} block of sequence {} in transaction {sequence}",
                        h.kind, h.sequence
                    ),
                ))
            }
            None => {
                return Err(Error::corrupt(
                    S,
                    pos(l),
                    format!("block {l} of transaction {sequence} has no jbd2 header"),
                ))
            }
        };
        if l == commit {
            if h.kind != BlockKind::Commit {
                return Err(Error::corrupt(
                    S,
                    pos(l),
                    format!("{:?} block where the commit block was expected", h.kind),
                ));
            }
            if !commit_checksum_ok(sb, &buf) {
                return Err(Error::corrupt(
                    "jbd2 commit",
                    pos(l),
                    format!("transaction {sequence}: commit block checksum mismatch"),
                ));
            }
            return Ok(t);
        }
        match h.kind {
            BlockKind::Descriptor => {
                let tags = descriptor_tags(sb, &buf, pos(l))?;
                if !block_tail_checksum_ok(sb, &buf) {
                    t.bad_block_checksums += 1;
                }
                for tag in tags {
                    l = sb.next(l);
                    if l == commit {
                        return Err(Error::corrupt(
                            "jbd2 descriptor",
                            pos(l),
                            format!(
                                "transaction {sequence}: logged blocks run past the commit block"
                            ),
                        ));
                    }
                    if t.len >= sb.maxlen {
                        return Err(too_long(l));
                    }
                    t.len += 1;
                    if sb.csum_v2or3() {
                        data.resize(sb.bs(), 0);
                        read(l, &mut data)?;
                        if !data_checksum_ok(sb, sequence, &tag, &data) {
                            t.bad_tag_checksums += 1;
                        }
                    }
                    t.blocks.push(JournalBlock {
                        home: tag.home,
                        logical: l,
                        escaped: tag.escaped,
                    });
                }
            }
            BlockKind::Revoke => {
                let recs = revoke_records(sb, &buf, pos(l))?;
                if !block_tail_checksum_ok(sb, &buf) {
                    t.bad_block_checksums += 1;
                }
                t.revoked.extend(recs);
            }
            BlockKind::Commit => {
                return Err(Error::corrupt(
                    S,
                    pos(l),
                    format!("transaction {sequence} commits at block {l}, not at {commit}"),
                ))
            }
            BlockKind::SuperblockV1 | BlockKind::SuperblockV2 => {
                return Err(Error::corrupt(
                    S,
                    pos(l),
                    "journal superblock inside a transaction",
                ))
            }
        }
        l = sb.next(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 1024;

    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn sb_bytes(maxlen: u32, incompat: u32) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        put32(&mut b, 0, JBD2_MAGIC);
        put32(&mut b, 4, block_type::SUPERBLOCK_V2);
        put32(&mut b, 0xC, BS as u32);
        put32(&mut b, 0x10, maxlen);
        put32(&mut b, 0x14, 1);
        put32(&mut b, 0x18, 7);
        put32(&mut b, 0x1C, 1);
        put32(&mut b, 0x28, incompat);
        for (i, x) in b[0x30..0x40].iter_mut().enumerate() {
            *x = i as u8 + 1;
        }
        b
    }

    fn sb(maxlen: u32, incompat: u32) -> JournalSuperblock {
        JournalSuperblock::from_bytes(&sb_bytes(maxlen, incompat), 0).unwrap()
    }

    fn hdr(kind: u32, seq: u32) -> Vec<u8> {
        let mut b = vec![0u8; BS];
        put32(&mut b, 0, JBD2_MAGIC);
        put32(&mut b, 4, kind);
        put32(&mut b, 8, seq);
        b
    }

    fn seal_tail(sb: &JournalSuperblock, b: &mut [u8]) {
        if sb.csum_v2or3() {
            let t = b.len() - 4;
            put32(b, t, 0);
            let c = crc32c_raw(sb.csum_seed, b);
            put32(b, t, c);
        }
    }

    /// A descriptor with tags `(home, flags, checksum)`; UUIDs are added
    /// after tags without SAME_UUID.
    fn desc(sb: &JournalSuperblock, seq: u32, tags: &[(u64, u32, u32)]) -> Vec<u8> {
        let mut b = hdr(block_type::DESCRIPTOR, seq);
        let mut p = HEADER_SIZE;
        for &(home, flags, csum) in tags {
            put32(&mut b, p, home as u32);
            if sb.csum_v3() {
                put32(&mut b, p + 4, flags);
                put32(&mut b, p + 8, (home >> 32) as u32);
                put32(&mut b, p + 12, csum);
            } else {
                put16(&mut b, p + 4, csum as u16);
                put16(&mut b, p + 6, flags as u16);
                if sb.is_64bit() {
                    put32(&mut b, p + 8, (home >> 32) as u32);
                }
            }
            p += sb.tag_bytes();
            if flags & tag_flags::SAME_UUID == 0 {
                b[p..p + 16].fill(0xAA);
                p += 16;
            }
        }
        seal_tail(sb, &mut b);
        b
    }

    fn commit(sb: &JournalSuperblock, seq: u32) -> Vec<u8> {
        let mut b = hdr(block_type::COMMIT, seq);
        if sb.csum_v2or3() {
            let c = crc32c_raw(sb.csum_seed, &b);
            put32(&mut b, COMMIT_CHKSUM_OFFSET, c);
        }
        b
    }

    fn revoke(sb: &JournalSuperblock, seq: u32, homes: &[u64]) -> Vec<u8> {
        let mut b = hdr(block_type::REVOKE, seq);
        let mut p = REVOKE_HEADER_SIZE;
        for &h in homes {
            if sb.is_64bit() {
                put32(&mut b, p, (h >> 32) as u32);
                put32(&mut b, p + 4, h as u32);
                p += 8;
            } else {
                put32(&mut b, p, h as u32);
                p += 4;
            }
        }
        put32(&mut b, HEADER_SIZE, p as u32);
        seal_tail(sb, &mut b);
        b
    }

    fn data(fill: u8) -> Vec<u8> {
        vec![fill; BS]
    }

    fn data_csum(sb: &JournalSuperblock, seq: u32, d: &[u8]) -> u32 {
        let c = crc32c_raw(crc32c_raw(sb.csum_seed, &seq.to_be_bytes()), d);
        if sb.csum_v3() {
            c
        } else {
            c & 0xFFFF
        }
    }

    /// A journal image: block 0 is the superblock, the rest is zero until
    /// placed.
    struct J {
        blocks: Vec<Vec<u8>>,
    }

    impl J {
        fn new(sb: &JournalSuperblock) -> Self {
            J {
                blocks: vec![vec![0u8; BS]; sb.maxlen as usize],
            }
        }
        fn put(&mut self, l: u32, b: Vec<u8>) {
            self.blocks[l as usize] = b;
        }
        fn walk(
            &self,
            sb: &JournalSuperblock,
            start: u32,
            seq: u32,
            commit: u32,
        ) -> Result<Transaction> {
            let mut reads = 0u32;
            let r = walk_transaction(sb, start, seq, commit, &mut |l, buf| {
                reads += 1;
                assert!(reads < 10_000, "walk does not end");
                buf.copy_from_slice(&self.blocks[l as usize]);
                Ok(())
            });
            r
        }
    }

    fn corrupt(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(e @ Error::Corrupt { .. }) => e.to_string(),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn superblock_fields_and_validation() {
        let s = sb(64, incompat::CSUM_V3 | incompat::BIT64);
        assert_eq!(
            (s.block_size, s.maxlen, s.first, s.sequence, s.start),
            (1024, 64, 1, 7, 1)
        );
        assert!(s.is_64bit() && s.csum_v3() && s.csum_v2or3() && !s.has_fast_commit());
        let uuid: Vec<u8> = (1..=16).collect();
        assert_eq!(s.csum_seed, crc32c_raw(!0, &uuid));
        assert_eq!(sb(64, 0).csum_seed, 0);

        let bad = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = sb_bytes(64, 0);
            f(&mut b);
            corrupt(JournalSuperblock::from_bytes(&b, 4096))
        };
        bad(&|b| put32(b, 0, 0));
        bad(&|b| put32(b, 4, 1));
        bad(&|b| put32(b, 0xC, 1536));
        bad(&|b| put32(b, 0xC, 512));
        bad(&|b| put32(b, 0xC, 1 << 17));
        bad(&|b| put32(b, 0x14, 64));
        bad(&|b| put32(b, 0x14, 0));
        bad(&|b| put32(b, 0x1C, 64));
        bad(&|b| b.truncate(100));
        // Fast commit area larger than the journal.
        bad(&|b| {
            put32(b, 0x28, incompat::FAST_COMMIT);
            put32(b, 0x54, 65);
        });
        // v1: features are ignored.
        let mut b = sb_bytes(64, incompat::BIT64);
        put32(&mut b, 4, block_type::SUPERBLOCK_V1);
        assert!(!JournalSuperblock::from_bytes(&b, 0).unwrap().is_64bit());
    }

    #[test]
    fn next_wraps_at_maxlen_and_before_fast_commit() {
        let s = sb(64, 0);
        assert_eq!(s.next(1), 2);
        assert_eq!(s.next(62), 63);
        assert_eq!(s.next(63), 1);
        assert_eq!(s.next(u32::MAX), 1);
        let mut b = sb_bytes(1000, incompat::FAST_COMMIT);
        let f = JournalSuperblock::from_bytes(&b, 0).unwrap();
        assert_eq!(f.num_fc_blocks, 256);
        assert_eq!(f.next(743), 1);
        assert_eq!(f.next(742), 743);
        put32(&mut b, 0x54, 10);
        let f = JournalSuperblock::from_bytes(&b, 0).unwrap();
        assert_eq!(f.next(989), 1);
    }

    #[test]
    fn header_kinds() {
        assert_eq!(
            header(&hdr(1, 9)),
            Some(Header {
                kind: BlockKind::Descriptor,
                sequence: 9
            })
        );
        assert_eq!(header(&hdr(2, 9)).unwrap().kind, BlockKind::Commit);
        assert_eq!(header(&hdr(3, 9)).unwrap().kind, BlockKind::SuperblockV1);
        assert_eq!(header(&hdr(4, 9)).unwrap().kind, BlockKind::SuperblockV2);
        assert_eq!(header(&hdr(5, 9)).unwrap().kind, BlockKind::Revoke);
        assert_eq!(header(&hdr(6, 9)), None);
        assert_eq!(header(&hdr(0, 9)), None);
        assert_eq!(header(&[0u8; 12]), None);
        assert_eq!(header(&hdr(1, 9)[..11]), None);
    }

    #[test]
    fn tags_v2_32bit() {
        let s = sb(64, 0);
        assert_eq!(s.tag_bytes(), 8);
        let b = desc(
            &s,
            1,
            &[
                (100, 0, 0),
                (101, tag_flags::SAME_UUID | tag_flags::ESCAPE, 0),
                (102, tag_flags::SAME_UUID | tag_flags::LAST_TAG, 0),
                (103, tag_flags::SAME_UUID, 0),
            ],
        );
        let t = descriptor_tags(&s, &b, 0).unwrap();
        let homes: Vec<_> = t.iter().map(|t| (t.home, t.escaped)).collect();
        assert_eq!(homes, [(100, false), (101, true), (102, false)]);
    }

    #[test]
    fn tags_64bit_and_csum_v2() {
        let s = sb(64, incompat::BIT64);
        assert_eq!(s.tag_bytes(), 12);
        let b = desc(&s, 1, &[(0x1_0000_0005, tag_flags::LAST_TAG, 0)]);
        assert_eq!(descriptor_tags(&s, &b, 0).unwrap()[0].home, 0x1_0000_0005);
        // Without 64-bit the high word is not read.
        let s32 = sb(64, 0);
        let b = desc(
            &s32,
            1,
            &[
                (5, tag_flags::SAME_UUID, 0),
                (6, tag_flags::LAST_TAG | tag_flags::SAME_UUID, 0),
            ],
        );
        let homes: Vec<_> = descriptor_tags(&s32, &b, 0)
            .unwrap()
            .iter()
            .map(|t| t.home)
            .collect();
        assert_eq!(homes, [5, 6]);
        let s = sb(64, incompat::CSUM_V2 | incompat::BIT64);
        assert_eq!(s.tag_bytes(), 14);
        assert_eq!(sb(64, incompat::CSUM_V2).tag_bytes(), 10);
        let b = desc(
            &s,
            1,
            &[
                (7, tag_flags::SAME_UUID, 0xBEEF),
                (0x2_0000_0008, tag_flags::LAST_TAG, 1),
            ],
        );
        let t = descriptor_tags(&s, &b, 0).unwrap();
        assert_eq!(
            (t[0].home, t[0].checksum, t[1].home),
            (7, 0xBEEF, 0x2_0000_0008)
        );
        assert!(block_tail_checksum_ok(&s, &b));
    }

    #[test]
    fn tags_csum_v3_stop_before_tail() {
        let s = sb(64, incompat::CSUM_V3);
        assert_eq!(s.tag_bytes(), 16);
        // No LAST_TAG: tags fill the block up to the tail.
        let n = (BS - HEADER_SIZE - TAIL_SIZE) / 16;
        let tags: Vec<_> = (0..n as u64)
            .map(|i| (i + 10, tag_flags::SAME_UUID, i as u32))
            .collect();
        let b = desc(&s, 1, &tags);
        let t = descriptor_tags(&s, &b, 0).unwrap();
        assert_eq!(t.len(), n);
        assert_eq!(t[n - 1].checksum, n as u32 - 1);
        assert!(block_tail_checksum_ok(&s, &b));
        let mut b2 = b.clone();
        b2[40] ^= 1;
        assert!(!block_tail_checksum_ok(&s, &b2));
    }

    #[test]
    fn garbage_and_truncated_descriptors() {
        let s = sb(64, 0);
        corrupt(descriptor_tags(&s, &hdr(5, 1), 0));
        corrupt(descriptor_tags(&s, &[0u8; BS], 0));
        corrupt(descriptor_tags(&s, &desc(&s, 1, &[(1, 0, 0)])[..BS - 1], 0));
        // Random bytes after a valid header: bounded by the block.
        let mut b = hdr(1, 1);
        let mut x = 0x1234_5678u32;
        for v in b[HEADER_SIZE..].iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *v = x as u8;
        }
        for inc in [
            0,
            incompat::BIT64,
            incompat::CSUM_V2,
            incompat::CSUM_V3 | incompat::BIT64,
        ] {
            let s = sb(64, inc);
            let t = descriptor_tags(&s, &b, 0).unwrap();
            assert!(t.len() <= BS / s.tag_bytes());
        }
    }

    #[test]
    fn revoke_4_and_8_bytes() {
        let s = sb(64, 0);
        let b = revoke(&s, 3, &[10, 20, 30]);
        assert_eq!(revoke_records(&s, &b, 0).unwrap(), [10, 20, 30]);
        let s = sb(64, incompat::BIT64 | incompat::CSUM_V3);
        let b = revoke(&s, 3, &[0x5_0000_0001, 2]);
        assert_eq!(revoke_records(&s, &b, 0).unwrap(), [0x5_0000_0001, 2]);
        assert!(block_tail_checksum_ok(&s, &b));
        // r_count smaller than the header: no records.
        let mut b = revoke(&s, 3, &[]);
        put32(&mut b, HEADER_SIZE, 3);
        assert!(revoke_records(&s, &b, 0).unwrap().is_empty());
    }

    #[test]
    fn revoke_count_past_block() {
        let s = sb(64, 0);
        let mut b = revoke(&s, 3, &[1]);
        put32(&mut b, HEADER_SIZE, BS as u32 + 4);
        corrupt(revoke_records(&s, &b, 0));
        put32(&mut b, HEADER_SIZE, u32::MAX);
        corrupt(revoke_records(&s, &b, 0));
        put32(&mut b, HEADER_SIZE, BS as u32);
        assert_eq!(revoke_records(&s, &b, 0).unwrap().len(), (BS - 16) / 4);
        // With a checksum tail the last 4 bytes are not records.
        let s = sb(64, incompat::CSUM_V3);
        corrupt(revoke_records(&s, &b, 0));
        corrupt(revoke_records(&s, &hdr(1, 3), 0));
    }

    #[test]
    fn commit_checksum() {
        let s = sb(64, incompat::CSUM_V3);
        let mut c = commit(&s, 4);
        assert!(commit_checksum_ok(&s, &c));
        c[0x30] ^= 1;
        assert!(!commit_checksum_ok(&s, &c));
        assert!(!commit_checksum_ok(&s, &c[..100]));
        assert!(commit_checksum_ok(&sb(64, 0), &c));
    }

    #[test]
    fn unescape_restores_magic() {
        let mut b = vec![0u8; 8];
        unescape(&mut b);
        assert_eq!(be32(&b, 0), JBD2_MAGIC);
        let mut short = [0u8; 3];
        unescape(&mut short);
        assert_eq!(short, [0; 3]);
    }

    #[test]
    fn walk_simple_transaction_with_revoke_and_duplicate() {
        let s = sb(64, 0);
        let mut j = J::new(&s);
        j.put(5, revoke(&s, 9, &[77]));
        j.put(
            6,
            desc(
                &s,
                9,
                &[
                    (100, 0, 0),
                    (
                        101,
                        tag_flags::SAME_UUID | tag_flags::ESCAPE | tag_flags::LAST_TAG,
                        0,
                    ),
                ],
            ),
        );
        j.put(7, data(1));
        j.put(8, data(2));
        j.put(9, desc(&s, 9, &[(100, tag_flags::LAST_TAG, 0)]));
        j.put(10, data(3));
        j.put(11, commit(&s, 9));
        let t = j.walk(&s, 5, 9, 11).unwrap();
        assert_eq!(t.sequence, 9);
        assert_eq!(t.commit, 11);
        assert_eq!(t.len, 7);
        assert_eq!(t.revoked, [77]);
        assert_eq!(
            t.blocks,
            [
                JournalBlock {
                    home: 100,
                    logical: 7,
                    escaped: false
                },
                JournalBlock {
                    home: 101,
                    logical: 8,
                    escaped: true
                },
                JournalBlock {
                    home: 100,
                    logical: 10,
                    escaped: false
                },
            ]
        );
        // Commit-only transaction.
        let t = j.walk(&s, 11, 9, 11).unwrap();
        assert_eq!((t.len, t.blocks.len()), (1, 0));
    }

    #[test]
    fn walk_wraps_around_maxlen() {
        let s = sb(16, incompat::CSUM_V3 | incompat::BIT64);
        let mut j = J::new(&s);
        let (d1, d2) = (data(1), data(2));
        j.put(
            14,
            desc(
                &s,
                3,
                &[
                    (0x1_0000_0001, 0, data_csum(&s, 3, &d1)),
                    (2, tag_flags::LAST_TAG | tag_flags::SAME_UUID, 0xDEAD),
                ],
            ),
        );
        j.put(15, d1);
        j.put(1, d2);
        j.put(2, commit(&s, 3));
        let t = j.walk(&s, 14, 3, 2).unwrap();
        assert_eq!(t.len, 4);
        assert_eq!(t.blocks[0].logical, 15);
        assert_eq!(t.blocks[1].logical, 1);
        assert_eq!(t.blocks[0].home, 0x1_0000_0001);
        assert_eq!((t.bad_tag_checksums, t.bad_block_checksums), (1, 0));
        // A damaged descriptor tail is counted, not fatal.
        j.blocks[14][100] ^= 1;
        assert_eq!(j.walk(&s, 14, 3, 2).unwrap().bad_block_checksums, 1);
        // A damaged commit is fatal.
        j.blocks[2][0x40] ^= 1;
        corrupt(j.walk(&s, 14, 3, 2));
    }

    #[test]
    fn walk_csum_v2_tag_checksums() {
        let s = sb(16, incompat::CSUM_V2);
        let mut j = J::new(&s);
        let d = data(9);
        j.put(
            1,
            desc(&s, 5, &[(40, tag_flags::LAST_TAG, data_csum(&s, 5, &d))]),
        );
        j.put(2, d);
        j.put(3, commit(&s, 5));
        let t = j.walk(&s, 1, 5, 3).unwrap();
        assert_eq!((t.bad_tag_checksums, t.bad_block_checksums), (0, 0));
    }

    #[test]
    fn walk_errors() {
        let s = sb(16, 0);
        let mut j = J::new(&s);
        j.put(
            1,
            desc(
                &s,
                5,
                &[
                    (40, 0, 0),
                    (41, tag_flags::LAST_TAG | tag_flags::SAME_UUID, 0),
                ],
            ),
        );
        j.put(2, data(0));
        j.put(3, commit(&s, 5));
        // Data blocks run past the commit.
        corrupt(j.walk(&s, 1, 5, 3));
        // Commit with the wrong sequence.
        j.put(1, desc(&s, 5, &[(40, tag_flags::LAST_TAG, 0)]));
        j.put(3, commit(&s, 6));
        corrupt(j.walk(&s, 1, 5, 3));
        // A commit earlier than expected.
        j.put(3, commit(&s, 5));
        corrupt(j.walk(&s, 1, 5, 4));
        // No header where one is expected.
        corrupt(j.walk(&s, 2, 5, 3));
        // Start or commit outside the log.
        corrupt(j.walk(&s, 0, 5, 3));
        corrupt(j.walk(&s, 1, 5, 16));
        // The superblock inside a transaction.
        j.put(4, sb_bytes(16, 0));
        corrupt(j.walk(&s, 4, 5, 6));
        // Read errors pass through.
        let e = walk_transaction(&s, 1, 5, 3, &mut |_, _| Err(Error::corrupt("x", 1, "y")));
        assert!(e.is_err());
    }

    #[test]
    fn random_journals_never_panic_or_hang() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..300 {
            let inc = (rnd() as u32) & 0x3F;
            let s = sb(32, inc & !incompat::FAST_COMMIT);
            let mut j = J::new(&s);
            for l in 1..32 {
                let mut b: Vec<u8> = (0..BS).map(|_| rnd() as u8).collect();
                // Mostly plausible headers of the same sequence.
                if rnd() % 4 != 0 {
                    put32(&mut b, 0, JBD2_MAGIC);
                    put32(&mut b, 4, (rnd() % 6) as u32);
                    put32(&mut b, 8, 5);
                    put32(&mut b, HEADER_SIZE, (rnd() % 1100) as u32);
                }
                j.put(l, b);
            }
            let start = 1 + (rnd() % 31) as u32;
            let commit = 1 + (rnd() % 31) as u32;
            let mut reads = 0u32;
            let _ = walk_transaction(&s, start, 5, commit, &mut |l, buf| {
                reads += 1;
                assert!(reads <= 2 * 32, "round {round}: too many reads");
                buf.copy_from_slice(&j.blocks[l as usize]);
                Ok(())
            });
            for l in 0..32 {
                let _ = descriptor_tags(&s, &j.blocks[l], 0);
                let _ = revoke_records(&s, &j.blocks[l], 0);
                let _ = commit_checksum_ok(&s, &j.blocks[l]);
                let _ = JournalSuperblock::from_bytes(&j.blocks[l], 0);
            }
        }
    }

    #[test]
    fn superblock_checksum() {
        let s = sb(64, incompat::CSUM_V3);
        let mut b = sb_bytes(64, incompat::CSUM_V3);
        assert!(!superblock_checksum_ok(&s, &b));
        let c = crc_with_hole(!0, &b, SB_CHECKSUM_OFFSET);
        put32(&mut b, SB_CHECKSUM_OFFSET, c);
        assert!(superblock_checksum_ok(&s, &b));
        assert!(!superblock_checksum_ok(&s, &b[..1000]));
        assert!(superblock_checksum_ok(&sb(64, 0), &[]));
    }

    #[test]
    fn transaction_longer_than_the_journal_fails() {
        // Every block is an empty revoke block of the same sequence: the
        // commit at a position never reached must not hang the walk.
        let s = sb(16, 0);
        let mut j = J::new(&s);
        for l in 1..16 {
            j.put(l, revoke(&s, 5, &[]));
        }
        j.put(0, sb_bytes(16, 0));
        // Block 15 is a revoke where the commit was expected: the walk
        // stops there instead of going round.
        let mut reads = 0;
        let r = walk_transaction(&s, 1, 5, 15, &mut |l, buf| {
            reads += 1;
            buf.copy_from_slice(&j.blocks[l as usize]);
            Ok(())
        });
        corrupt(r);
        // A descriptor whose tags would cycle through the whole journal.
        let s = sb(8, 0);
        let mut j = J::new(&s);
        let tags: Vec<_> = (0..100u64).map(|i| (i, tag_flags::SAME_UUID, 0)).collect();
        j.put(1, desc(&s, 5, &tags));
        let commit_at = 1;
        let mut n = 0;
        let r = walk_transaction(&s, 2, 5, commit_at, &mut |l, buf| {
            n += 1;
            assert!(n < 100);
            buf.copy_from_slice(&j.blocks[l as usize]);
            Ok(())
        });
        corrupt(r);
        assert!(reads <= 16);
    }
}
