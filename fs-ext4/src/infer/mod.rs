//! Write inference: from a stream of block writes to file events.
//!
//! [`Ext4Inference`] keeps the crawler's [`FsModel`] equal to the guest's
//! own view while the guest writes:
//!
//! - every write is split by the block-owner map: file data, metadata
//!   written home, journal blocks, and blocks nobody owns yet;
//! - data written inside a known file's size becomes a `modify` event at
//!   once, trimmed to the bytes that changed;
//! - metadata changes are applied a transaction at a time: when a jbd2
//!   commit block arrives its logged blocks are applied as if written home
//!   (the later checkpoint write then changes nothing); without a journal,
//!   or for a home write that differs, the write is its own transaction;
//! - applying a transaction re-reads the inodes it touched with the
//!   crawler's own code ([`crate::crawl::scan_inodes`]) and diffs them with
//!   the model: names removed and added (a name removed and the same inode
//!   added in one transaction is a `move`), sizes, new blocks, attributes;
//! - data for blocks nobody owned is held (see `pending.rs`) and reported when
//!   the transaction that gives the blocks to a file commits.
//!
//! Readers of [`Inference::model`] see the state as of the last applied
//! transaction, never a half-applied one.
//!
//! Metadata written home without a commit (no journal, or a journal being
//! replayed after a crash) is collected until the guest's next flush and
//! applied then as one transaction; a block written home that equals its
//! committed journal copy (the checkpoint) changes nothing.
//!
//! # Limits (what is not inferred, or only partly)
//!
//! - `data=journal` mounts: file data logged in the journal updates sizes
//!   and mappings but gives no `modify` with the bytes.
//! - ext4 fast commits (`fast_commit`) are not parsed: such changes are
//!   seen at the next full commit or when written home. External journals
//!   are not followed (metadata is then seen when written home).
//! - A disk whose journal holds committed but un-checkpointed transactions
//!   (a live or crashed guest) is crawled with them replayed in memory
//!   ([`crate::recovery`]), and inference starts with them as its journal
//!   overlay and follows the log from after them: the guest's checkpoint
//!   (or a recovery's home writes) then changes nothing. Fast commits and
//!   external journals are not replayed. The crawl's state listing hashes
//!   files through the disk as it is (the CLI's `--hash`), so with
//!   `data=journal` a file whose data is in the journal only hashes to its
//!   home blocks' bytes.
//! - A resize (block or inode count changing) rebuilds the model with a
//!   full crawl and emits no events for what the resize changed.
//! - Extended attributes (ACLs, security labels) are not compared: changing
//!   only them gives no `attrib`.
//! - Event paths replace non-UTF-8 bytes; events about a hard-linked file
//!   go to at most [`data::MAX_LINK_PATHS`] of its names.
//! - Data written in place inside a file is reported when the write
//!   arrives, before the commit that carries its mtime; a truncate that
//!   zeroes the tail of the last block shows that zeroing as a `modify`
//!   before the truncate's own event.

mod apply;
mod counters;
pub mod data;
mod jtrack;
mod lazy;
mod paths;
mod pending;
mod view;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use gammaray_core::blockmap::Owner;
use gammaray_core::device::PatchedDevice;
use gammaray_core::infer::{Counter, InferConfig, Inference};
use gammaray_core::{BlockDevice, DiskWrite, FileEvent, FsModel, LostReason, Result, WriteFlags};

use crate::crawl::{inode_tables, read_superblock};
use crate::recovery;
use crate::superblock::{compat, Superblock};

pub use counters::Counters;
use jtrack::JournalTracker;
use paths::Parents;
use pending::Pending;
use view::{JournalOverlay, View};

/// Writes larger than this (bytes) are not inspected (a guest request is
/// never this large; QEMU splits requests far below it).
pub const MAX_WRITE_BYTES: u64 = 256 << 20;

/// Write-zeroes requests are followed in pieces of this many bytes.
const ZEROES_CHUNK: u64 = 1 << 22;

/// What a piece of write-zeroes writes.
static ZEROS: [u8; ZEROES_CHUNK as usize] = [0; ZEROES_CHUNK as usize];

/// Metadata blocks written home that are held for the next flush at most;
/// more are applied at once.
pub const MAX_BATCH_BLOCKS: usize = 16_384;

/// A batch of home metadata writes waits at most this long (write time)
/// for a flush.
pub const BATCH_WAIT_NS: u64 = 1_000_000_000;

/// One metadata block of a transaction: home block, old and new contents.
pub(crate) type Change = (u64, Arc<[u8]>, Arc<[u8]>);

/// Follows one ext2/3/4 file system's writes. Build it with
/// [`Ext4Inference::new`] (or [`gammaray_core::FileSystem::infer`]).
pub struct Ext4Inference {
    sb: Superblock,
    bs: u64,
    isz: u64,
    ipg: u64,
    tables: Vec<u64>,
    model: FsModel,
    parents: Parents,
    jov: JournalOverlay,
    journal: Option<JournalTracker>,
    pending: Pending,
    /// Metadata written home since the last flush, not yet applied:
    /// `(block, contents before the first write, latest contents)`.
    batch: Vec<Change>,
    batch_index: HashMap<u64, usize>,
    /// Time of the first write of the batch (0: none or unknown).
    batch_ts: u64,
    /// The data-drop policy is on: data writes are not inspected, only
    /// reported as `lost`.
    data_drop: bool,
    /// Files that had data written since their last metadata change (their
    /// next mtime change is not an `attrib`).
    data_dirty: HashSet<u64>,
    cfg: InferConfig,
    c: Counters,
    now_ns: u64,
    /// The lazy-load policy's state (`None`: everything resident).
    lazy: Option<lazy::Lazy>,
}

impl std::fmt::Debug for Ext4Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ext4Inference")
            .field("files", &self.model.files.len())
            .field("counters", &self.c)
            .finish()
    }
}

impl Ext4Inference {
    /// Starts following `dev` (the partition as it is now) from `model`,
    /// which must be a crawl (or index) of the same state.
    pub fn new(dev: &dyn BlockDevice, model: FsModel, cfg: &InferConfig) -> Result<Self> {
        let raw_sb = read_superblock(dev)?;
        let mut c = Counters::default();
        // Committed transactions not yet written home: the crawl saw them
        // replayed (crate::crawl::crawl), so the inference starts with them
        // as its journal overlay and follows the log from after them.
        let plan = match recovery::plan(dev, &raw_sb) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("ext4 journal not scanned for recovery: {e}");
                None
            }
        };
        let mut jov = JournalOverlay::default();
        if let Some(p) = &plan {
            // Copies equal to their home block (transactions already
            // checkpointed but still in the log) change no read; leaving
            // them out keeps the overlay to what is really pending, which
            // the guest's checkpoint will clear.
            let bsz = usize::try_from(raw_sb.block_size()).unwrap_or(0);
            let bs = u64::from(raw_sb.block_size());
            let (mut home, mut copy) = (vec![0u8; bsz], vec![0u8; bsz]);
            for cp in &p.recovery.copies {
                let same = dev.read_at(cp.home.saturating_mul(bs), &mut home).is_ok()
                    && dev.read_at(cp.phys.saturating_mul(bs), &mut copy).is_ok()
                    && {
                        if cp.escaped {
                            view::unescape(&mut copy);
                        }
                        home == copy
                    };
                if !same {
                    jov.insert(cp.home, cp.phys, cp.escaped);
                }
            }
        }
        let seeded = {
            let view = View {
                dev,
                journal: &jov,
                blocks: None,
                bs: u64::from(raw_sb.block_size()),
            };
            read_superblock(&view).and_then(|sb| {
                let tables = inode_tables(&view, &sb)?;
                Ok((sb, tables))
            })
        };
        let (sb, tables, plan) = match seeded {
            Ok((sb, tables)) => (sb, tables, plan),
            Err(e) => {
                // As the crawl does: the replayed state is unusable, so
                // start from the home blocks.
                tracing::warn!("ext4 journal replay ignored, the replayed state is unusable: {e}");
                c.anomalies += 1;
                jov = JournalOverlay::default();
                let tables = inode_tables(dev, &raw_sb)?;
                (raw_sb, tables, None)
            }
        };
        let bs = u64::from(sb.block_size());
        let parents = Parents::build(&model.tree);
        let journal = if sb.has_compat(compat::HAS_JOURNAL) {
            match JournalTracker::new(dev, &model, bs) {
                Ok(mut j) => {
                    if let Some(p) = plan
                        .as_ref()
                        .filter(|p| p.jsb.start != 0 && p.jsb == *j.superblock())
                    {
                        let r = &p.recovery;
                        j.seed(r.last_sequence, r.next_start);
                        c.journal_replayed_txns = u64::from(r.transactions);
                        c.journal_replayed_blocks = r.copies.len() as u64;
                    }
                    Some(j)
                }
                Err(e) => {
                    tracing::warn!("ext4 journal not followed: {e}");
                    c.anomalies += 1;
                    None
                }
            }
        } else {
            None
        };
        let mut inf = Ext4Inference {
            isz: u64::from(sb.s_inode_size),
            ipg: u64::from(sb.s_inodes_per_group),
            bs,
            sb,
            tables,
            model,
            parents,
            jov,
            journal,
            pending: Pending::default(),
            batch: Vec::new(),
            batch_index: std::collections::HashMap::default(),
            batch_ts: 0,
            data_drop: false,
            data_dirty: HashSet::default(),
            cfg: *cfg,
            c,
            now_ns: 0,
            lazy: None,
        };
        if let Some(budget) = cfg.lazy_budget_bytes {
            inf.start_lazy(budget)?;
        }
        Ok(inf)
    }

    /// The counters so far.
    pub fn stats(&self) -> &Counters {
        &self.c
    }

    fn handle(&mut self, before: &dyn BlockDevice, w: &DiskWrite, out: &mut Vec<FileEvent>) {
        if w.flags.contains(WriteFlags::MARK) || w.len == 0 {
            return;
        }
        let size = before.size();
        if w.offset.saturating_add(w.len) > size {
            // The part inside the partition is what the disk keeps.
            self.c.bad_writes += 1;
            match w.clip(0, size) {
                Some(inside) if inside.len < w.len => self.handle(before, &inside, out),
                _ => {}
            }
            return;
        }
        let bs = self.bs;
        let first = w.offset / bs;
        let last = (w.offset + w.len - 1) / bs;
        if w.flags.contains(WriteFlags::DISCARD) {
            self.c.discards += 1;
            self.pending.forget_range(first, last + 1);
            return;
        }
        if w.flags.contains(WriteFlags::ZEROES) && w.len > ZEROES_CHUNK {
            // Large write-zeroes: in pieces, without allocating their size.
            let mut off = 0u64;
            while off < w.len {
                let n = (w.len - off).min(ZEROES_CHUNK);
                let piece = DiskWrite {
                    offset: w.offset + off,
                    len: n,
                    ..w.clone()
                };
                self.handle(before, &piece, out);
                off += n;
            }
            return;
        }
        if w.len > MAX_WRITE_BYTES {
            self.c.bad_writes += 1;
            return;
        }
        let data: Bytes = if w.flags.contains(WriteFlags::ZEROES) {
            Bytes::from_static(ZEROS.get(..w.len as usize).unwrap_or(&[]))
        } else if w.data.len() as u64 == w.len {
            w.data.clone()
        } else {
            self.c.bad_writes += 1;
            return;
        };
        let after = PatchedDevice::new(before, w.offset, &data);
        let mut meta: Vec<u64> = Vec::new();
        let mut jblocks: Vec<(u64, u64)> = Vec::new();
        for (s, e, owner) in self.model.blocks.segments(first, last + 1) {
            match owner {
                Some(Owner::FileData { file, logical }) if self.data_drop => {
                    self.c.data_blocks += e - s;
                    self.c.data_dropped_blocks += e - s;
                    self.drop_data(w, s, e, file, logical, out);
                }
                Some(Owner::FileData { file, logical }) => {
                    self.c.data_blocks += e - s;
                    self.data_write(before, w, &data, s, e, file, logical, out);
                }
                Some(Owner::Unwritten { .. }) | None if self.data_drop => {
                    // Not held: the owner's events will say it was lost.
                    self.c.unknown_blocks += e - s;
                    self.c.data_dropped_blocks += e - s;
                    for b in s..e {
                        self.pending.drop_block(b, LostReason::DataDrop);
                    }
                }
                Some(Owner::Unwritten { .. }) | None => {
                    self.c.unknown_blocks += e - s;
                    self.hold(w, &data, s, e);
                }
                Some(Owner::Journal { logical }) => {
                    for k in 0..(e - s) {
                        jblocks.push((s + k, logical + k));
                    }
                }
                Some(
                    Owner::DirData { .. }
                    | Owner::ExtentTree { .. }
                    | Owner::Indirect { .. }
                    | Owner::Xattr { .. }
                    | Owner::InodeTable { .. }
                    | Owner::GroupDescriptors { .. }
                    | Owner::Superblock,
                ) => meta.extend(s..e),
                Some(
                    Owner::BlockBitmap { .. }
                    | Owner::InodeBitmap { .. }
                    | Owner::SuperblockBackup { .. }
                    | Owner::OtherMetadata,
                ) => self.c.other_blocks += e - s,
            }
        }
        if !meta.is_empty() {
            self.home_metadata(before, &after, &meta, w.ts_ns, out);
        }
        if !jblocks.is_empty() {
            self.journal_write(before, &after, &jblocks, w.ts_ns, out);
        }
    }

    /// Data written to blocks nobody owns yet: hold it.
    fn hold(&mut self, w: &DiskWrite, data: &Bytes, s: u64, e: u64) {
        let bs = self.bs;
        for b in s..e {
            let lo = (b * bs).max(w.offset);
            let hi = ((b + 1) * bs).min(w.offset + w.len);
            let (a, z) = ((lo - w.offset) as usize, (hi - w.offset) as usize);
            if z > data.len() || a >= z {
                continue;
            }
            self.pending.hold(
                b,
                (lo - b * bs) as u32,
                data.slice(a..z),
                w.ts_ns,
                self.cfg.unknown_budget_bytes,
            );
        }
    }

    /// Metadata blocks written home. A block whose newest committed copy
    /// is in the journal is a checkpoint: it changes nothing when equal.
    fn home_metadata(
        &mut self,
        before: &dyn BlockDevice,
        after: &dyn BlockDevice,
        blocks: &[u64],
        ts_ns: u64,
        out: &mut Vec<FileEvent>,
    ) {
        let bs = self.bs as usize;
        let mut changes: Vec<Change> = Vec::new();
        for &b in blocks {
            let mut old = vec![0u8; bs];
            let mut new = vec![0u8; bs];
            let view = View {
                dev: before,
                journal: &self.jov,
                blocks: None,
                bs: self.bs,
            };
            let off = b * self.bs;
            if view.read_at(off, &mut old).is_err() || after.read_at(off, &mut new).is_err() {
                self.c.anomalies += 1;
                continue;
            }
            self.jov.remove(b);
            if old == new {
                self.c.checkpoint_blocks += 1;
                continue;
            }
            self.c.home_meta_blocks += 1;
            changes.push((b, old.into(), new.into()));
        }
        // Batched until the guest's next flush: a file system without a
        // journal, or a journal replayed after a crash, writes the blocks
        // of one change one at a time and in any order, and only their
        // whole (at the flush that makes them durable) is consistent.
        for (b, old, new) in changes {
            match self.batch_index.get(&b) {
                Some(&i) => {
                    if let Some(c) = self.batch.get_mut(i) {
                        c.2 = new;
                    }
                }
                None => {
                    self.batch_index.insert(b, self.batch.len());
                    self.batch.push((b, old, new));
                }
            }
        }
        if self.batch_ts == 0 {
            self.batch_ts = ts_ns.max(1);
        }
        if self.batch.len() >= MAX_BATCH_BLOCKS {
            self.apply_batch(after, ts_ns, out);
        }
    }

    /// Applies the metadata written home since the last flush as one
    /// transaction; `dev` reads the disk as it is now.
    fn apply_batch(&mut self, dev: &dyn BlockDevice, ts_ns: u64, out: &mut Vec<FileEvent>) {
        if self.batch.is_empty() {
            return;
        }
        let mut changes = std::mem::take(&mut self.batch);
        self.batch_index.clear();
        self.batch_ts = 0;
        changes.retain(|c| c.1 != c.2);
        self.apply(dev, changes, ts_ns, out);
    }

    /// Journal blocks written: note descriptors, apply transactions whose
    /// commit block arrives.
    fn journal_write(
        &mut self,
        before: &dyn BlockDevice,
        after: &dyn BlockDevice,
        blocks: &[(u64, u64)],
        ts_ns: u64,
        out: &mut Vec<FileEvent>,
    ) {
        let bs = self.bs;
        for &(phys, _) in blocks {
            self.jov.before_journal_write(before, phys, bs);
        }
        let Some(mut j) = self.journal.take() else {
            return;
        };
        for &(phys, logical) in blocks {
            self.c.journal_blocks += 1;
            let Some(txn) = j.on_block(after, phys, logical, &mut self.c) else {
                continue;
            };
            // Home writes before this commit come first.
            self.apply_batch(after, ts_ns, out);
            // Revoked blocks are no longer journaled metadata.
            for r in &txn.revoked {
                self.jov.remove(*r);
            }
            let mut changes: Vec<Change> = Vec::new();
            let mut homes: Vec<(u64, u64, bool)> = Vec::new();
            for jb in &txn.blocks {
                let Some(jphys) = j.phys(u64::from(jb.logical)) else {
                    self.c.anomalies += 1;
                    continue;
                };
                if jb.home >= self.sb.s_blocks_count {
                    self.c.anomalies += 1;
                    continue;
                }
                let mut new = vec![0u8; bs as usize];
                if after.read_at(jphys * bs, &mut new).is_err() {
                    self.c.anomalies += 1;
                    continue;
                }
                if jb.escaped {
                    view::unescape(&mut new);
                }
                let mut old = vec![0u8; bs as usize];
                let v = View {
                    dev: after,
                    journal: &self.jov,
                    blocks: None,
                    bs,
                };
                if v.read_at(jb.home * bs, &mut old).is_err() {
                    self.c.anomalies += 1;
                    continue;
                }
                homes.push((jb.home, jphys, jb.escaped));
                // A home block logged twice: the later copy wins.
                if let Some(pos) = changes.iter().position(|c| c.0 == jb.home) {
                    changes[pos].2 = new.into();
                } else {
                    changes.push((jb.home, old.into(), new.into()));
                }
            }
            changes.retain(|c| c.1 != c.2);
            self.c.journal_txns += 1;
            self.apply(after, changes, ts_ns, out);
            for (home, jphys, escaped) in homes {
                self.jov.insert(home, jphys, escaped);
            }
        }
        self.journal = Some(j);
    }
}

impl Inference for Ext4Inference {
    fn write(&mut self, before: &dyn BlockDevice, w: &DiskWrite, out: &mut Vec<FileEvent>) {
        self.c.writes += 1;
        if w.ts_ns > self.now_ns {
            self.tick(before, w.ts_ns, out);
        }
        self.handle(before, w, out);
        if w.flags.intersects(WriteFlags::FLUSH | WriteFlags::FUA) && !self.batch.is_empty() {
            if w.has_data() && w.data.len() as u64 == w.len {
                let after = PatchedDevice::new(before, w.offset, &w.data);
                self.apply_batch(&after, w.ts_ns, out);
            } else {
                self.apply_batch(before, w.ts_ns, out);
            }
        }
        self.c.unknown_held_bytes = self.pending.bytes();
        self.trim();
    }

    fn set_data_drop(&mut self, on: bool) {
        self.data_drop = on;
    }

    fn settle(&mut self, dev: &dyn BlockDevice, out: &mut Vec<FileEvent>) {
        let ts = self.now_ns;
        self.apply_batch(dev, ts, out);
        self.trim();
    }

    fn tick(&mut self, before: &dyn BlockDevice, now_ns: u64, out: &mut Vec<FileEvent>) {
        self.now_ns = self.now_ns.max(now_ns);
        if self.batch_ts != 0 && self.now_ns > self.batch_ts.saturating_add(BATCH_WAIT_NS) {
            self.apply_batch(before, now_ns, out);
        }
        self.pending.expire(self.now_ns, self.cfg.unknown_ttl_ns);
        self.c.unknown_held_bytes = self.pending.bytes();
        self.trim();
    }

    fn model(&self) -> Cow<'_, FsModel> {
        match self.lazy_model() {
            Some(m) => Cow::Owned(m),
            None => Cow::Borrowed(&self.model),
        }
    }

    fn counters(&self) -> Vec<Counter> {
        let mut v = self.c.list();
        v.push(Counter {
            name: "unknown_expired_bytes",
            value: self.pending.expired_bytes,
        });
        v.push(Counter {
            name: "unknown_evicted_bytes",
            value: self.pending.evicted_bytes,
        });
        v.push(Counter {
            name: "journal_pending_blocks",
            value: self.jov.len() as u64,
        });
        v.push(Counter {
            name: "journal_copies_dropped",
            value: self.jov.dropped,
        });
        if let Some(l) = &self.lazy {
            v.extend(l.counters());
        }
        v
    }
}
