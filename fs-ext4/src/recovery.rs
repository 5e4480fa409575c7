//! jbd2 recovery in memory: which committed journal copies a mount would
//! write home, and a [`BlockDevice`] that reads the disk with them laid
//! over their home blocks.
//!
//! A live guest's disk (or a crashed one, with `needs_recovery` set) holds
//! committed transactions in its journal that are not yet written home
//! (checkpointed). The journal superblock's `s_start` is then non-zero,
//! and the log runs from there, one transaction after the other, with
//! sequence numbers from `s_sequence`. [`scan_log`] walks it as jbd2's
//! recovery does (`fs/jbd2/recovery.c`, the scan, revoke and replay
//! passes folded into one walk):
//!
//! - a block that does not start with the jbd2 magic, is of another
//!   sequence, or is not a descriptor, revoke or commit block, ends the
//!   log (that is how the log's end is found, not damage);
//! - descriptor tags (32/64-bit, csum v2/v3 layouts, escapes) name the
//!   blocks that follow; revoke blocks name home blocks that copies from
//!   this or earlier transactions must not overwrite;
//! - a commit block of the expected sequence closes the transaction; with
//!   csum v2/v3 a wrong commit checksum, or a descriptor or revoke block
//!   whose tail checksum is wrong, ends the log before that transaction
//!   (what jbd2 does for a torn or stale commit; it is reported);
//! - a logged copy whose per-tag checksum is wrong is not replayed (jbd2
//!   skips it and keeps going), the transaction's other copies are;
//! - the log wraps from its last block back to `s_first`, and the walk
//!   never visits more blocks than the log has.
//!
//! The result, a [`Recovery`], names the newest committed copy of every
//! home block (revokes honoured) and where the next transaction goes.
//! [`plan`] finds the journal on a device (the journal inode's mapping,
//! read with the crawler's own code) and runs the scan; [`Replayed`] is
//! the device as the guest sees it.
//!
//! Not replayed: external journals (a separate device) and the fast-commit
//! area (`fast_commit`): [`plan`] says so in [`Plan::warnings`].

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use gammaray_core::blockmap::Owner;
use gammaray_core::{BlockDevice, Error, Result};

use crate::crawl::{inode_tables, scan_inodes};
use crate::journal::{self, BlockKind, JournalSuperblock};
use crate::superblock::{compat, incompat, Superblock};

/// The journal inode of ext3/4 (`EXT4_JOURNAL_INO`); `s_journal_inum`
/// names it.
const JOURNAL_INO_DEFAULT: u32 = 8;

/// Revoke records held while scanning the log. A real log revokes far
/// fewer blocks (each record is a block freed and reused within the log's
/// lifetime); a hostile log full of revoke blocks would otherwise hold
/// `log blocks × block size / 4` of them. The scan ends (with a warning)
/// before the transaction that goes over.
pub const MAX_REVOKE_RECORDS: usize = 1 << 20;

/// Journal mapping runs kept from the journal inode: more runs than this
/// means a hostile or absurdly fragmented journal, which is not replayed.
pub const MAX_JOURNAL_RUNS: usize = 1 << 20;

/// One home block's newest committed copy in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCopy {
    /// Home block (file-system block).
    pub home: u64,
    /// Journal logical block holding the copy.
    pub logical: u32,
    /// Physical block of the copy on the device (set by [`plan`]; equal
    /// to `logical` from [`scan_log`] alone).
    pub phys: u64,
    /// The copy's first 4 bytes are the escaped jbd2 magic.
    pub escaped: bool,
}

/// What jbd2 recovery would replay, from [`scan_log`].
#[derive(Debug, Default)]
pub struct Recovery {
    /// Newest committed copy per home block, sorted by home block.
    pub copies: Vec<ReplayCopy>,
    /// Committed transactions found.
    pub transactions: u32,
    /// The first of them (`s_sequence`).
    pub first_sequence: u32,
    /// The last committed transaction (`first_sequence - 1` when none).
    pub last_sequence: u32,
    /// The sequence the next transaction will have.
    pub next_sequence: u32,
    /// Journal logical block where the next transaction starts (after the
    /// last commit, or `s_start` when nothing committed; `s_first` for an
    /// empty log).
    pub next_start: u32,
    /// Logged copies in the committed transactions (before revokes and
    /// later copies of the same block are taken into account).
    pub logged: u64,
    /// Copies not replayed because a revoke covers them.
    pub revoked: u64,
    /// Copies not replayed because their tag checksum is wrong.
    pub bad_checksums: u64,
    /// Copies not replayed because their home block is outside the file
    /// system.
    pub out_of_range: u64,
    /// Why the log ended early, when it was damage rather than the normal
    /// end of the log (a wrong commit checksum, an unreadable block, a
    /// limit reached). The transactions before it are replayed. Byte
    /// offsets are inside the journal from [`scan_log`], on the device
    /// from [`plan`].
    pub stopped: Option<Error>,
}

impl Recovery {
    /// True when there is something to lay over the home blocks.
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

/// A transaction being scanned.
#[derive(Default)]
struct Open {
    /// `(home, logical, escaped, tag checksum ok)`.
    blocks: Vec<(u64, u32, bool, bool)>,
    revoked: Vec<u64>,
    /// A descriptor or revoke block's tail checksum is wrong.
    bad_block: bool,
}

/// Walks the log of `jsb` as jbd2 recovery does (see the module docs).
/// `read(l, buf)` fills `buf` (block size bytes) with journal logical
/// block `l`. `blocks_count` is the file system's size in blocks (copies
/// for homes past it are not replayed).
///
/// Never fails: damage ends the walk and is reported in
/// [`Recovery::stopped`] (byte offsets inside the journal: logical block ×
/// block size). Reads at most the log's length in blocks, holds at most
/// one entry per log block plus [`MAX_REVOKE_RECORDS`].
pub fn scan_log(
    jsb: &JournalSuperblock,
    blocks_count: u64,
    read: &mut dyn FnMut(u32, &mut [u8]) -> Result<()>,
) -> Recovery {
    const S: &str = "jbd2 log";
    let mut r = Recovery {
        first_sequence: jsb.sequence,
        last_sequence: jsb.sequence.wrapping_sub(1),
        next_sequence: jsb.sequence,
        next_start: if jsb.start == 0 { jsb.first } else { jsb.start },
        ..Recovery::default()
    };
    if jsb.start == 0 {
        return r;
    }
    let bs = u64::from(jsb.block_size);
    let pos = |l: u32| u64::from(l).saturating_mul(bs);
    let log_end = jsb.log_end();
    if jsb.start < jsb.first || jsb.start >= log_end {
        r.stopped = Some(Error::corrupt(
            "jbd2 superblock",
            0x1C,
            format!(
                "s_start {} outside the log ({}..{log_end})",
                jsb.start, jsb.first
            ),
        ));
        return r;
    }
    // Every position of the log at most once.
    let budget = u64::from(log_end - jsb.first);
    let mut walked = 0u64;
    let Ok(bsz) = usize::try_from(jsb.block_size) else {
        return r;
    };
    let mut buf = vec![0u8; bsz];
    let mut data = vec![0u8; bsz];
    // Committed transactions: their blocks (with the transaction's index)
    // and the newest revoking transaction per home block.
    let mut committed: Vec<(u32, u64, u32, bool, bool)> = Vec::new();
    let mut revoked_by: HashMap<u64, u32> = HashMap::default();
    let mut revoke_records = 0usize;
    let mut open = Open::default();
    let mut seq = jsb.sequence;
    let mut l = jsb.start;
    'log: loop {
        if walked >= budget {
            r.stopped = Some(Error::corrupt(
                S,
                pos(l),
                format!(
                    "the log runs round the whole journal ({budget} blocks) without ending; \
                     transaction {seq} is not replayed"
                ),
            ));
            break;
        }
        walked += 1;
        if let Err(e) = read(l, &mut buf) {
            r.stopped = Some(e);
            break;
        }
        let h = match journal::header(&buf) {
            Some(h) if h.sequence == seq => h,
            // The normal end of the log.
            _ => break,
        };
        match h.kind {
            BlockKind::Descriptor => {
                let tags = match journal::descriptor_tags(jsb, &buf, pos(l)) {
                    Ok(t) => t,
                    Err(e) => {
                        r.stopped = Some(e);
                        break;
                    }
                };
                if !journal::block_tail_checksum_ok(jsb, &buf) {
                    open.bad_block = true;
                }
                for tag in tags {
                    l = jsb.next(l);
                    if walked >= budget {
                        r.stopped = Some(Error::corrupt(
                            "jbd2 descriptor",
                            pos(l),
                            format!("transaction {seq}: logged blocks run round the whole journal"),
                        ));
                        break 'log;
                    }
                    walked += 1;
                    let mut ok = true;
                    if jsb.csum_v2or3() {
                        if let Err(e) = read(l, &mut data) {
                            r.stopped = Some(e);
                            break 'log;
                        }
                        ok = journal::data_checksum_ok(jsb, seq, &tag, &data);
                    }
                    open.blocks.push((tag.home, l, tag.escaped, ok));
                }
            }
            BlockKind::Revoke => {
                let recs = match journal::revoke_records(jsb, &buf, pos(l)) {
                    Ok(v) => v,
                    Err(e) => {
                        r.stopped = Some(e);
                        break;
                    }
                };
                if !journal::block_tail_checksum_ok(jsb, &buf) {
                    open.bad_block = true;
                }
                revoke_records = revoke_records.saturating_add(recs.len());
                if revoke_records > MAX_REVOKE_RECORDS {
                    r.stopped = Some(Error::corrupt(
                        "jbd2 revoke",
                        pos(l),
                        format!(
                            "more than {MAX_REVOKE_RECORDS} revoke records; transaction {seq} \
                             is not replayed"
                        ),
                    ));
                    break;
                }
                open.revoked.extend(recs);
            }
            BlockKind::Commit => {
                if !journal::commit_checksum_ok(jsb, &buf) {
                    r.stopped = Some(Error::corrupt(
                        "jbd2 commit",
                        pos(l),
                        format!(
                            "transaction {seq}: commit block checksum mismatch; the log ends \
                             before it"
                        ),
                    ));
                    break;
                }
                if open.bad_block {
                    r.stopped = Some(Error::corrupt(
                        "jbd2 transaction",
                        pos(l),
                        format!(
                            "transaction {seq}: a descriptor or revoke block checksum is \
                             wrong; the log ends before it"
                        ),
                    ));
                    break;
                }
                let t = r.transactions;
                let o = std::mem::take(&mut open);
                for home in o.revoked {
                    let e = revoked_by.entry(home).or_insert(t);
                    *e = (*e).max(t);
                }
                committed.extend(
                    o.blocks
                        .into_iter()
                        .map(|(home, lb, esc, ok)| (t, home, lb, esc, ok)),
                );
                r.transactions += 1;
                r.last_sequence = seq;
                seq = seq.wrapping_add(1);
                r.next_sequence = seq;
                r.next_start = jsb.next(l);
            }
            BlockKind::SuperblockV1 | BlockKind::SuperblockV2 => break,
        }
        l = jsb.next(l);
    }
    // Replay in log order: the newest copy that no later-or-equal revoke
    // covers wins.
    let mut newest: BTreeMap<u64, (u32, bool)> = BTreeMap::new();
    for (t, home, lb, esc, ok) in committed {
        r.logged += 1;
        if revoked_by.get(&home).is_some_and(|&rt| rt >= t) {
            r.revoked += 1;
            continue;
        }
        if !ok {
            r.bad_checksums += 1;
            continue;
        }
        if home >= blocks_count {
            r.out_of_range += 1;
            continue;
        }
        newest.insert(home, (lb, esc));
    }
    r.copies = newest
        .into_iter()
        .map(|(home, (logical, escaped))| ReplayCopy {
            home,
            logical,
            phys: u64::from(logical),
            escaped,
        })
        .collect();
    r
}

/// The journal found on a device and what its recovery replays.
#[derive(Debug)]
pub struct Plan {
    /// The journal superblock.
    pub jsb: JournalSuperblock,
    /// Byte offset of the journal superblock on the device.
    pub jsb_offset: u64,
    /// The journal inode's mapping: `(first logical, first physical,
    /// count)`, sorted by logical block.
    pub map: Vec<(u64, u64, u64)>,
    /// The scan's result, with physical blocks filled in.
    pub recovery: Recovery,
    /// What is not replayed and why (an external journal, fast commits,
    /// damage that ended the log early).
    pub warnings: Vec<Error>,
}

impl Plan {
    /// Physical block of journal logical block `l`.
    pub fn phys(&self, l: u64) -> Option<u64> {
        map_phys(&self.map, l)
    }
}

/// Physical block of journal logical block `l` in `map`.
fn map_phys(map: &[(u64, u64, u64)], l: u64) -> Option<u64> {
    let idx = map.partition_point(|r| r.0 <= l);
    let &(ls, ps, n) = map.get(idx.checked_sub(1)?)?;
    (l < ls.checked_add(n)?).then(|| ps.saturating_add(l - ls))
}

/// Finds the internal journal of the file system on `dev` (superblock
/// `sb`) and scans its log.
///
/// `Ok(None)` when there is no journal to replay from: no journal at all,
/// or an external one (then with a warning in the log: `tracing`).
/// Errors when the journal inode or the journal superblock cannot be read
/// or parsed; callers crawl the home blocks then.
pub fn plan(dev: &dyn BlockDevice, sb: &Superblock) -> Result<Option<Plan>> {
    if !sb.has_compat(compat::HAS_JOURNAL) {
        return Ok(None);
    }
    let ino = sb.s_journal_inum;
    if ino == 0 {
        tracing::warn!(
            "ext4 journal is external (s_journal_inum 0): its transactions are not replayed"
        );
        return Ok(None);
    }
    let bs = u64::from(sb.block_size());
    let map = journal_map(dev, sb, ino)?;
    let p0 = map_phys(&map, 0)
        .ok_or_else(|| Error::corrupt("jbd2 superblock", 0, "journal block 0 is not mapped"))?;
    let jsb_offset = p0.saturating_mul(bs);
    let b = dev.read_vec(jsb_offset, journal::SUPERBLOCK_SIZE)?;
    let jsb = JournalSuperblock::from_bytes(&b, jsb_offset)?;
    if u64::from(jsb.block_size) != bs {
        return Err(Error::Unsupported {
            structure: "jbd2 superblock",
            detail: format!(
                "journal block size {} differs from the file system's {bs}",
                jsb.block_size
            ),
        });
    }
    let mut warnings = Vec::new();
    if jsb.has_fast_commit() && jsb.start != 0 {
        warnings.push(Error::Unsupported {
            structure: "jbd2 journal",
            detail: "fast commits are not replayed; changes only in the fast-commit area are \
                     missing from the crawl"
                .into(),
        });
    }
    let Ok(bsz) = usize::try_from(bs) else {
        return Ok(None);
    };
    let mut read = |l: u32, buf: &mut [u8]| -> Result<()> {
        let p = map_phys(&map, u64::from(l)).ok_or_else(|| {
            Error::corrupt(
                "jbd2 log",
                u64::from(l).saturating_mul(bs),
                format!("journal block {l} is not mapped"),
            )
        })?;
        let dst = buf.get_mut(..bsz).ok_or_else(|| {
            Error::corrupt("jbd2 log", 0, "read buffer shorter than a journal block")
        })?;
        dev.read_at(p.saturating_mul(bs), dst)
    };
    let mut recovery = scan_log(&jsb, sb.s_blocks_count, &mut read);
    if let Some(Error::Corrupt { offset, .. }) = &mut recovery.stopped {
        // Offsets inside the journal → offsets on the device.
        if let Some(p) = map_phys(&map, *offset / bs) {
            *offset = p.saturating_mul(bs).saturating_add(*offset % bs);
        }
    }
    if let Some(e) = &recovery.stopped {
        warnings.push(Error::corrupt(
            "jbd2 journal",
            jsb_offset,
            format!(
                "replay stops after {} committed transactions: {e}",
                recovery.transactions
            ),
        ));
    }
    recovery
        .copies
        .retain_mut(|c| match map_phys(&map, u64::from(c.logical)) {
            Some(p) => {
                c.phys = p;
                true
            }
            None => false,
        });
    Ok(Some(Plan {
        jsb,
        jsb_offset,
        map,
        recovery,
        warnings,
    }))
}

/// The journal inode's block mapping, read from its home inode record
/// with the crawler's code.
fn journal_map(dev: &dyn BlockDevice, sb: &Superblock, ino: u32) -> Result<Vec<(u64, u64, u64)>> {
    const S: &str = "ext4 journal inode";
    let ipg = u64::from(sb.s_inodes_per_group);
    let isz = u64::from(sb.s_inode_size);
    let bs = u64::from(sb.block_size());
    let ino = u64::from(if ino == 0 { JOURNAL_INO_DEFAULT } else { ino });
    if ipg == 0 {
        return Err(Error::corrupt(S, 0, "s_inodes_per_group is 0"));
    }
    let idx = ino - 1;
    let group = usize::try_from(idx / ipg).unwrap_or(usize::MAX);
    let tables = inode_tables(dev, sb)?;
    let table = tables.get(group).copied().unwrap_or(0);
    if table == 0 {
        return Err(Error::corrupt(
            S,
            0,
            format!("inode {ino}: group {group} has no usable inode table"),
        ));
    }
    let off = table
        .saturating_mul(bs)
        .saturating_add((idx % ipg).saturating_mul(isz));
    let rec = dev.read_vec(off, usize::try_from(isz).unwrap_or(0))?;
    let scan = scan_inodes(dev, sb, &[(ino, off, &rec)], false);
    let mut map: Vec<(u64, u64, u64)> = scan
        .runs
        .iter()
        .filter_map(|&(start, len, owner)| match owner {
            Owner::Journal { logical } => Some((logical, start, len)),
            _ => None,
        })
        .collect();
    if map.len() > MAX_JOURNAL_RUNS {
        return Err(Error::corrupt(
            S,
            off,
            format!("{} mapping runs, at most {MAX_JOURNAL_RUNS}", map.len()),
        ));
    }
    map.sort_unstable();
    if map.is_empty() {
        let why = scan
            .warnings
            .first()
            .map_or_else(|| "no blocks".to_string(), ToString::to_string);
        return Err(Error::corrupt(
            S,
            off,
            format!("inode {ino} maps no journal: {why}"),
        ));
    }
    Ok(map)
}

/// The device as the guest sees it: reads return the newest committed
/// journal copy of a block where recovery would replay one (unescaped),
/// the disk elsewhere.
pub struct Replayed<'a> {
    dev: &'a dyn BlockDevice,
    bs: u64,
    /// Home block → (physical block of the copy, escaped).
    copies: BTreeMap<u64, (u64, bool)>,
}

impl std::fmt::Debug for Replayed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayed")
            .field("bs", &self.bs)
            .field("copies", &self.copies.len())
            .finish()
    }
}

impl<'a> Replayed<'a> {
    /// `dev` with `copies` (from a [`Plan`] of the same device) laid over
    /// their home blocks; `bs` is the block size.
    pub fn new(dev: &'a dyn BlockDevice, bs: u64, copies: &[ReplayCopy]) -> Self {
        Replayed {
            dev,
            bs,
            copies: copies
                .iter()
                .map(|c| (c.home, (c.phys, c.escaped)))
                .collect(),
        }
    }
}

impl BlockDevice for Replayed<'_> {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.dev.read_at(offset, buf)?;
        let bs = self.bs;
        let Ok(bsz) = usize::try_from(bs) else {
            return Ok(());
        };
        if self.copies.is_empty() || buf.is_empty() || bs == 0 {
            return Ok(());
        }
        let end = offset.saturating_add(buf.len() as u64);
        let first = offset / bs;
        let last = (end - 1) / bs;
        let mut block = Vec::new();
        for (&home, &(phys, escaped)) in self.copies.range(first..=last) {
            block.resize(bsz, 0);
            self.dev.read_at(phys.saturating_mul(bs), &mut block)?;
            if escaped {
                journal::unescape(&mut block);
            }
            let b_start = home.saturating_mul(bs);
            let lo = b_start.max(offset);
            let hi = b_start.saturating_add(bs).min(end);
            if lo >= hi {
                continue;
            }
            let (d0, d1) = ((lo - offset) as usize, (hi - offset) as usize);
            let (s0, s1) = ((lo - b_start) as usize, (hi - b_start) as usize);
            if let (Some(d), Some(s)) = (buf.get_mut(d0..d1), block.get(s0..s1)) {
                d.copy_from_slice(s);
            }
        }
        Ok(())
    }
}

/// The flag that says a mount must replay the journal.
pub fn needs_recovery(sb: &Superblock) -> bool {
    sb.has_incompat(incompat::RECOVER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::jbd2;
    use crate::journal::{block_type, incompat as jinc, JBD2_MAGIC};

    const BS: usize = 1024;

    fn sb(maxlen: u32, inc: u32, start: u32, seq: u32) -> JournalSuperblock {
        let mut b = vec![0u8; BS];
        let put = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
        put(&mut b, 0, JBD2_MAGIC);
        put(&mut b, 4, block_type::SUPERBLOCK_V2);
        put(&mut b, 0xC, BS as u32);
        put(&mut b, 0x10, maxlen);
        put(&mut b, 0x14, 1);
        put(&mut b, 0x18, seq);
        put(&mut b, 0x1C, start);
        put(&mut b, 0x28, inc);
        b[0x30..0x40].copy_from_slice(&[7; 16]);
        JournalSuperblock::from_bytes(&b, 0).unwrap()
    }

    fn data(seed: u8) -> Vec<u8> {
        vec![seed; BS]
    }

    struct J {
        blocks: Vec<Vec<u8>>,
        at: u32,
        sb: JournalSuperblock,
    }

    impl J {
        fn new(sb: JournalSuperblock) -> Self {
            J {
                blocks: vec![vec![0u8; BS]; sb.maxlen as usize],
                at: sb.start,
                sb,
            }
        }
        fn push(&mut self, b: Vec<u8>) -> u32 {
            let l = self.at;
            self.blocks[l as usize] = b;
            self.at = self.sb.next(l);
            l
        }
        fn txn(&mut self, seq: u32, homes: &[(u64, Vec<u8>)]) -> u32 {
            if !homes.is_empty() {
                let (d, logged) = jbd2::descriptor(&self.sb, seq, homes);
                self.push(d);
                for b in logged {
                    self.push(b);
                }
            }
            self.push(jbd2::commit(&self.sb, seq))
        }
        fn revoke(&mut self, seq: u32, homes: &[u64]) {
            let mut b = jbd2::header(&self.sb, block_type::REVOKE, seq);
            let rec = if self.sb.is_64bit() { 8 } else { 4 };
            let mut p = 16;
            for &h in homes {
                if rec == 8 {
                    b[p..p + 8].copy_from_slice(&h.to_be_bytes());
                } else {
                    b[p..p + 4].copy_from_slice(&(h as u32).to_be_bytes());
                }
                p += rec;
            }
            b[12..16].copy_from_slice(&(p as u32).to_be_bytes());
            if self.sb.csum_v2or3() {
                let t = BS - 4;
                let c = crate::csum::crc32c_raw(self.sb.csum_seed, &b[..t]);
                let c = crate::csum::crc32c_raw(c, &[0u8; 4]);
                b[t..].copy_from_slice(&c.to_be_bytes());
            }
            self.push(b);
        }
        fn scan(&self) -> Recovery {
            scan_log(&self.sb, 1 << 20, &mut |l, buf| {
                buf.copy_from_slice(&self.blocks[l as usize]);
                Ok(())
            })
        }
    }

    fn homes(r: &Recovery) -> Vec<(u64, u32, bool)> {
        r.copies
            .iter()
            .map(|c| (c.home, c.logical, c.escaped))
            .collect()
    }

    #[test]
    fn empty_log_replays_nothing() {
        let s = sb(64, 0, 0, 5);
        let r = J::new(s).scan();
        assert!(r.is_empty());
        assert_eq!((r.next_sequence, r.next_start, r.transactions), (5, 1, 0));
    }

    #[test]
    fn newest_copy_wins_and_uncommitted_is_ignored() {
        for inc in [0, jinc::BIT64, jinc::CSUM_V3 | jinc::BIT64, jinc::CSUM_V2] {
            let s = sb(64, inc, 10, 7);
            let mut j = J::new(s);
            let mut esc = data(1);
            esc[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
            j.txn(7, &[(100, esc), (101, data(2))]);
            let c2 = j.txn(8, &[(100, data(3))]);
            // Transaction 9 never commits.
            let (d, logged) = jbd2::descriptor(&s, 9, &[(102, data(4))]);
            j.push(d);
            j.push(logged[0].clone());
            let r = j.scan();
            assert_eq!(r.transactions, 2, "{inc:#x}");
            assert_eq!((r.last_sequence, r.next_sequence), (8, 9));
            assert_eq!(r.next_start, c2 + 1);
            assert_eq!(homes(&r), [(100, 15, false), (101, 12, false)], "{inc:#x}");
            assert_eq!(r.logged, 3);
            assert!(r.stopped.is_none());
        }
    }

    #[test]
    fn revokes_cover_this_and_earlier_transactions_only() {
        let s = sb(64, jinc::REVOKE, 1, 1);
        let mut j = J::new(s);
        j.txn(1, &[(50, data(1)), (51, data(2)), (52, data(3))]);
        // Transaction 2 revokes 50 and 52, then logs 52 again in 3.
        j.revoke(2, &[50, 52]);
        j.txn(2, &[]);
        j.txn(3, &[(52, data(4))]);
        let r = j.scan();
        assert_eq!(r.transactions, 3);
        let h: Vec<u64> = r.copies.iter().map(|c| c.home).collect();
        assert_eq!(h, [51, 52]);
        assert_eq!(r.copies[1].logical, 9);
        assert_eq!(r.revoked, 2);
    }

    #[test]
    fn bad_commit_checksum_ends_the_log() {
        let s = sb(64, jinc::CSUM_V3, 1, 1);
        let mut j = J::new(s);
        j.txn(1, &[(50, data(1))]);
        let c = j.txn(2, &[(51, data(2))]);
        j.txn(3, &[(52, data(3))]);
        j.blocks[c as usize][0x40] ^= 1;
        let r = j.scan();
        assert_eq!(r.transactions, 1);
        assert_eq!(homes(&r), [(50, 2, false)]);
        assert_eq!((r.next_sequence, r.next_start), (2, 4));
        assert!(r.stopped.is_some());
        // A wrong tag checksum drops that copy only.
        let mut j = J::new(s);
        j.txn(1, &[(50, data(1)), (51, data(2))]);
        j.blocks[3][9] ^= 1;
        let r = j.scan();
        assert_eq!((r.transactions, r.bad_checksums), (1, 1));
        assert_eq!(homes(&r), [(50, 2, false)]);
    }

    #[test]
    fn log_wraps_round_the_journal() {
        let s = sb(16, jinc::BIT64, 13, 40);
        let mut j = J::new(s);
        j.txn(40, &[(7, data(1)), (8, data(2))]); // 13..16 → wraps
        j.txn(41, &[(9, data(3))]);
        let r = j.scan();
        assert_eq!(r.transactions, 2);
        assert_eq!(homes(&r), [(7, 14, false), (8, 15, false), (9, 3, false)]);
        assert_eq!(r.next_start, 5);
    }

    #[test]
    fn self_repeating_log_is_bounded() {
        // Every log block a commit of the next sequence: the walk stops
        // after one round of the journal.
        let s = sb(16, 0, 1, 1);
        let mut j = J::new(s);
        let mut reads = 0;
        for l in 1..16u32 {
            j.blocks[l as usize] = jbd2::commit(&s, l);
        }
        let r = scan_log(&s, 1 << 20, &mut |l, buf| {
            reads += 1;
            // A hostile device: the block asked for is always the commit
            // of the next expected transaction.
            buf.copy_from_slice(&jbd2::commit(&s, reads));
            let _ = l;
            Ok(())
        });
        assert!(reads <= 15);
        assert!(r.stopped.is_some());
        assert!(r.transactions <= 15);
    }

    #[test]
    fn fuzz_entry_scans_a_journal() {
        // The parsers' fuzz entry reads its input as a journal too.
        let s = sb(16, jinc::BIT64, 1, 1);
        let mut j = J::new(s);
        let mut jsb_block = vec![0u8; BS];
        let put = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
        put(&mut jsb_block, 0, JBD2_MAGIC);
        put(&mut jsb_block, 4, block_type::SUPERBLOCK_V2);
        put(&mut jsb_block, 0xC, BS as u32);
        put(&mut jsb_block, 0x10, 16);
        put(&mut jsb_block, 0x14, 1);
        put(&mut jsb_block, 0x18, 1);
        put(&mut jsb_block, 0x1C, 1);
        put(&mut jsb_block, 0x28, jinc::BIT64);
        j.blocks[0] = jsb_block;
        j.txn(1, &[(5, data(1)), (6, data(2))]);
        j.txn(2, &[(5, data(3))]);
        let mut input = vec![0u8];
        for b in &j.blocks {
            input.extend_from_slice(b);
        }
        crate::fuzzing::parsers(&input);
        crate::fuzzing::parsers(&input[..BS + 100]);
    }

    #[test]
    fn replayed_device_overlays_copies() {
        let bs = 8u64;
        let mut disk = vec![0u8; 64];
        disk[48..56].copy_from_slice(&[0, 0, 0, 0, 5, 5, 5, 5]);
        disk[56..64].fill(6);
        let copies = [
            ReplayCopy {
                home: 1,
                logical: 0,
                phys: 6,
                escaped: true,
            },
            ReplayCopy {
                home: 3,
                logical: 0,
                phys: 7,
                escaped: false,
            },
        ];
        let d = Replayed::new(&disk, bs, &copies);
        let mut buf = [1u8; 30];
        d.read_at(4, &mut buf).unwrap();
        assert_eq!(&buf[..4], &[0; 4]);
        assert_eq!(&buf[4..12], &[0xC0, 0x3B, 0x39, 0x98, 5, 5, 5, 5]);
        assert_eq!(&buf[12..20], &[0; 8]);
        assert_eq!(&buf[20..28], &[6; 8]);
        let mut b = [0u8; 3];
        d.read_at(26, &mut b).unwrap();
        assert_eq!(b, [6, 6, 6]);
        assert!(d.read_at(60, &mut [0u8; 8]).is_err());
    }
}
