//! The crawler: reads the superblock and group descriptors, then every
//! inode in use, then the extent-tree, indirect, directory and symlink
//! blocks those inodes point to, and builds a [`FsModel`].
//!
//! It reads each metadata block once and in disk order: inode tables in
//! large sequential chunks (only the used part of each group, split over
//! two threads), then one pass per tree level over the extent-tree and
//! indirect blocks sorted by block number, then the directory blocks
//! sorted the same way.
//!
//! Every loop is bounded. Extent trees are walked level by level and each
//! level's expected depth is one less than its parent's, so a cycle is
//! caught as a depth mismatch after at most [`MAX_EXTENT_DEPTH`] rounds;
//! a block requested twice in one round (two parents sharing a child) is
//! read once and reported. Directory blocks claimed twice are read once.
//! Everything a crawl reads is therefore bounded by the device size.

use std::collections::BTreeMap;

use gammaray_core::{
    BlockDevice, BlockMap, Crawl, Error, FileRecord, FileType, FsModel, Owner, Progress, Result,
    Tree,
};

use crate::bytes::{at, le16, le32};
use crate::dir::DirBlock;
use crate::extent::{ExtentEntry, ExtentNode, MAX_EXTENT_DEPTH};
use crate::group_desc::{GroupDesc, Layout};
use crate::indirect::{root_pointers, slot_span, IndirectBlock, EXT4_NDIR_BLOCKS};
use crate::inode::{
    Inode, EXT4_EA_INODE_FL, EXT4_EXTENTS_FL, EXT4_HUGE_FILE_FL, EXT4_INLINE_DATA_FL,
    EXT4_RESIZE_INO, EXT4_ROOT_INO, I_BLOCK_LEN,
};
use crate::recovery::{self, Replayed};
use crate::superblock::{compat, incompat, Superblock, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE};
use crate::xattr::InodeXattrs;

/// Largest single read: big enough for sequential throughput, small enough
/// to keep two threads' buffers cheap.
pub const READ_CHUNK_BYTES: usize = 2 << 20;
/// Warnings kept per crawl; a hostile image could otherwise produce one per
/// block. The rest are counted in one last warning.
pub const MAX_WARNINGS: usize = 10_000;
/// Largest group descriptor table read: 4 Mi groups of 64-byte
/// descriptors, i.e. 512 TiB with 4 KiB blocks (32 TiB with 1 KiB). A
/// larger claim is refused rather than allocated.
pub const MAX_GDT_BYTES: u64 = 256 << 20;
/// Below this many inodes a second thread costs more than it saves.
const PARALLEL_MIN_INODES: u64 = 32_768;
/// Indirect-block levels: single, double, triple.
const MAX_INDIRECT_LEVEL: u8 = 3;

/// What a file's blocks hold, which decides their [`Owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Journal,
    /// Reserved inodes other than the journal (bad blocks, quota, ...).
    Hidden,
}

/// The file a block request belongs to.
#[derive(Debug, Clone, Copy)]
struct Owned {
    ino: u64,
    kind: Kind,
    /// `i_size`, to stop directory reads at the end of the directory.
    size: u64,
}

#[derive(Debug, Clone, Copy)]
struct ExtReq {
    block: u64,
    depth: u16,
    owned: Owned,
}

#[derive(Debug, Clone, Copy)]
struct IndReq {
    block: u64,
    level: u8,
    logical: u64,
    owned: Owned,
}

/// A run of directory blocks to read.
#[derive(Debug, Clone, Copy)]
struct DirRun {
    phys: u64,
    len: u64,
    ino: u64,
}

/// What one pass produces; passes on two threads are merged.
#[derive(Debug, Default)]
struct Out {
    files: Vec<(u64, FileRecord)>,
    runs: Vec<(u64, u64, Owner)>,
    inline: Vec<(u64, Vec<u8>)>,
    entries: Vec<(u64, Box<[u8]>, u64)>,
    ext: Vec<ExtReq>,
    ind: Vec<IndReq>,
    dirs: Vec<DirRun>,
    /// Slow symlinks: (inode, block of logical 0, size).
    symlinks: Vec<(u64, u64, u64)>,
    xattr_blocks: Vec<(u64, u64)>,
    warnings: Vec<Error>,
    dropped_warnings: u64,
}

impl Out {
    fn warn(&mut self, e: Error) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(e);
        } else {
            self.dropped_warnings += 1;
        }
    }

    fn append(&mut self, o: Out) {
        merge(&mut self.files, o.files);
        merge(&mut self.runs, o.runs);
        merge(&mut self.inline, o.inline);
        merge(&mut self.entries, o.entries);
        merge(&mut self.ext, o.ext);
        merge(&mut self.ind, o.ind);
        merge(&mut self.dirs, o.dirs);
        merge(&mut self.symlinks, o.symlinks);
        merge(&mut self.xattr_blocks, o.xattr_blocks);
        self.dropped_warnings += o.dropped_warnings;
        for w in o.warnings {
            self.warn(w);
        }
    }
}

/// Appends `b` to `a`, moving instead of copying when `a` is empty (the
/// vectors of a large crawl hold hundreds of megabytes).
fn merge<T>(a: &mut Vec<T>, mut b: Vec<T>) {
    if a.is_empty() {
        *a = b;
    } else {
        a.append(&mut b);
    }
}

/// One group's inode table, as far as it is in use.
#[derive(Debug, Clone, Copy)]
struct TableWork {
    group: u64,
    table: u64,
    used: u32,
}

/// Crawl state shared (read-only) by the worker threads.
struct Ctx<'a> {
    dev: &'a dyn BlockDevice,
    sb: Superblock,
    layout: Layout,
    bs: u64,
    inode_size: usize,
    filetype: bool,
    journal_ino: u64,
    /// The orphan file and quota files: hidden like reserved inodes
    /// (0 = none).
    hidden_inos: [u64; 4],
}

impl<'a> Ctx<'a> {
    fn new(dev: &'a dyn BlockDevice, sb: Superblock) -> Self {
        let layout = Layout::new(&sb);
        let bs = layout.block_size;
        Ctx {
            dev,
            layout,
            bs,
            inode_size: usize::from(sb.s_inode_size),
            filetype: sb.has_incompat(incompat::FILETYPE),
            journal_ino: if sb.has_compat(compat::HAS_JOURNAL) {
                u64::from(sb.s_journal_inum)
            } else {
                0
            },
            hidden_inos: [
                u64::from(sb.s_orphan_file_inum),
                u64::from(sb.s_quota_inums[0]),
                u64::from(sb.s_quota_inums[1]),
                u64::from(sb.s_quota_inums[2]),
            ],
            sb,
        }
    }
}

/// Reads and validates the primary superblock of `dev`.
pub fn read_superblock(dev: &dyn BlockDevice) -> Result<Superblock> {
    let mut b = [0u8; SUPERBLOCK_SIZE];
    dev.read_at(SUPERBLOCK_OFFSET, &mut b)?;
    Superblock::from_bytes(&b, SUPERBLOCK_OFFSET)
}

/// Crawls the ext2/3/4 file system on `dev` as a mount would show it:
/// when its journal holds committed transactions that are not yet written
/// home (`s_start != 0`: a live guest, or a crash with `needs_recovery`),
/// the crawl reads through [`Replayed`], the disk with those transactions
/// replayed in memory (see [`crate::recovery`]); the disk is not changed.
///
/// What the replay did is logged (`tracing`, at warn level so that the
/// CLI shows it); damage that ended the log early, fast commits and an
/// unreadable journal of a file system that needs recovery are crawl
/// warnings.
pub fn crawl(dev: &dyn BlockDevice, progress: &dyn Progress) -> Result<Crawl> {
    let sb = read_superblock(dev)?;
    let mut warnings = Vec::new();
    match recovery::plan(dev, &sb) {
        Ok(Some(plan)) => {
            warnings = plan.warnings;
            let r = &plan.recovery;
            if !r.is_empty() {
                tracing::warn!(
                    "ext4 journal{}: replayed {} committed transactions ({}..={}, {} logged \
                     blocks, {} home blocks; {} revoked, {} with bad checksums) in memory; \
                     the crawl shows the state a mount would",
                    if recovery::needs_recovery(&sb) {
                        " (needs_recovery)"
                    } else {
                        ""
                    },
                    r.transactions,
                    r.first_sequence,
                    r.last_sequence,
                    r.logged,
                    r.copies.len(),
                    r.revoked,
                    r.bad_checksums,
                );
                let replayed = Replayed::new(dev, u64::from(sb.block_size()), &r.copies);
                match crawl_device(&replayed, progress) {
                    Ok(mut c) => {
                        warnings.append(&mut c.warnings);
                        c.warnings = warnings;
                        return Ok(c);
                    }
                    // The journal's copies wreck the superblock or the
                    // descriptor table (a mount would fail): the home
                    // blocks are still worth indexing.
                    Err(e) => warnings.push(Error::corrupt(
                        "jbd2 journal",
                        plan.jsb_offset,
                        format!(
                            "the file system with the journal replayed does not crawl ({e}); \
                             crawled the home blocks instead"
                        ),
                    )),
                }
            }
        }
        Ok(None) if recovery::needs_recovery(&sb) => warnings.push(Error::Unsupported {
            structure: "ext4 journal",
            detail: "the file system needs recovery but its journal is external (or absent): \
                     its committed transactions are not replayed, the crawl shows the home blocks"
                .into(),
        }),
        Ok(None) => {}
        Err(e) if recovery::needs_recovery(&sb) => warnings.push(Error::corrupt(
            "jbd2 journal",
            0,
            format!("the file system needs recovery but its journal cannot be replayed: {e}"),
        )),
        Err(e) => tracing::debug!("ext4 journal not scanned: {e}"),
    }
    let mut c = crawl_device(dev, progress)?;
    if !warnings.is_empty() {
        warnings.append(&mut c.warnings);
        c.warnings = warnings;
    }
    Ok(c)
}

/// Crawls `dev` as it is: the home blocks only, even when the journal
/// holds committed transactions that a mount would replay first (what
/// [`crawl`] did before it replayed them; for tests and diagnosis).
pub fn crawl_home(dev: &dyn BlockDevice, progress: &dyn Progress) -> Result<Crawl> {
    crawl_device(dev, progress)
}

/// Crawls `dev` as it is (the home blocks).
fn crawl_device(dev: &dyn BlockDevice, progress: &dyn Progress) -> Result<Crawl> {
    let sb = read_superblock(dev)?;
    let ctx = Ctx::new(dev, sb);
    let bs = ctx.bs;
    let mut out = Out::default();
    let fs_bytes = ctx.sb.s_blocks_count.saturating_mul(bs);
    if fs_bytes > dev.size() {
        out.warn(Error::corrupt(
            "ext4 superblock",
            SUPERBLOCK_OFFSET,
            format!(
                "s_blocks_count {} x {bs} bytes is past the end of the {}-byte device (truncated image?)",
                ctx.sb.s_blocks_count,
                dev.size()
            ),
        ));
    }
    if !ctx.sb.csum_ok {
        out.warn(Error::corrupt(
            "ext4 superblock",
            SUPERBLOCK_OFFSET,
            "s_checksum does not match (metadata_csum)",
        ));
    }
    let descs = ctx.read_group_descs(&mut out)?;
    ctx.map_static_metadata(&descs, &mut out);

    // Inode tables, in disk order, split over two threads by inode count.
    let mut work: Vec<TableWork> = Vec::new();
    for (g, gd) in descs.iter().enumerate() {
        let Some(gd) = gd else { continue };
        let used = gd.used_inodes(&ctx.sb);
        if used > 0 {
            work.push(TableWork {
                group: g as u64,
                table: gd.bg_inode_table,
                used,
            });
        }
    }
    work.sort_by_key(|w| w.table);
    let work = ctx.drop_overlapping_tables(work, &mut out);
    let total: u64 = work.iter().map(|w| u64::from(w.used)).sum();
    progress.set_total(total);
    if total >= PARALLEL_MIN_INODES && work.len() > 1 {
        let mut acc = 0u64;
        let split = work
            .iter()
            .position(|w| {
                acc += u64::from(w.used);
                acc.saturating_mul(2) >= total
            })
            .map_or(work.len(), |p| p + 1)
            .min(work.len());
        let (a, b) = work.split_at(split);
        let ctx_ref = &ctx;
        let (oa, ob) = std::thread::scope(|s| {
            let h = s.spawn(move || ctx_ref.scan_tables(b, progress));
            let oa = ctx_ref.scan_tables(a, progress);
            (oa, h.join())
        });
        out.append(oa);
        match ob {
            Ok(ob) => out.append(ob),
            Err(_) => out.warn(Error::corrupt(
                "ext4 inode table",
                0,
                "worker thread failed; part of the inodes are missing",
            )),
        }
    } else {
        let o = ctx.scan_tables(&work, progress);
        out.append(o);
    }

    ctx.walk_extent_trees(&mut out);
    ctx.walk_indirect_blocks(&mut out);
    ctx.map_xattr_blocks(&mut out);

    let files = std::mem::take(&mut out.files);
    let runs = std::mem::take(&mut out.runs);
    let entries = std::mem::take(&mut out.entries);
    let dirs = std::mem::take(&mut out.dirs);
    let ctx_ref = &ctx;
    let (files, blocks, conflicts, read) = std::thread::scope(|s| {
        // The directories are read on a second thread while this one
        // builds the file map and the block map.
        let h = s.spawn(move || {
            let mut dout = Out {
                dirs,
                ..Out::default()
            };
            let mut tree = Tree::new();
            for (dir, name, child) in entries {
                tree.add(dir, &name, child);
            }
            ctx_ref.read_directories(&mut dout, &mut tree);
            (tree, dout)
        });
        let files: BTreeMap<u64, FileRecord> = files.into_iter().collect();
        let mut blocks = BlockMap::new();
        for (start, len, owner) in runs {
            blocks.push(start, len, owner);
        }
        let conflicts = blocks.finish();
        (files, blocks, conflicts, h.join())
    });
    let mut files = files;
    let Ok((tree, dout)) = read else {
        return Err(Error::corrupt(
            "ext4 file system",
            0,
            "worker thread reading the directories failed",
        ));
    };
    out.append(dout);
    ctx.read_slow_symlinks(&mut out, &mut files);
    for c in conflicts {
        out.warn(Error::corrupt(
            "ext4 block map",
            c.dropped.start.saturating_mul(bs),
            format!(
                "{} blocks from {} claimed by {:?} are already {:?}",
                c.dropped.len, c.dropped.start, c.dropped.owner, c.kept.owner
            ),
        ));
    }
    if out.dropped_warnings > 0 {
        let n = out.dropped_warnings;
        out.warnings.push(Error::corrupt(
            "ext4 file system",
            0,
            format!("{n} more warnings not kept"),
        ));
    }
    let mut model = FsModel::new(
        ctx.sb.fs_type(),
        ctx.sb.block_size(),
        u64::from(EXT4_ROOT_INO),
    );
    if !ctx.sb.s_last_mounted.is_empty() {
        model.mount_hint = Some(String::from_utf8_lossy(&ctx.sb.s_last_mounted).into_owned());
    }
    model.files = files;
    model.tree = tree;
    model.blocks = blocks;
    model.inline = out.inline.into_iter().collect();
    Ok(Crawl {
        model,
        warnings: out.warnings,
    })
}

/// The first block of every group's inode table (0 where the group's
/// descriptor is unusable), as the descriptor table on `dev` says.
pub fn inode_tables(dev: &dyn BlockDevice, sb: &Superblock) -> Result<Vec<u64>> {
    let ctx = Ctx::new(dev, sb.clone());
    let mut out = Out::default();
    let descs = ctx.read_group_descs(&mut out)?;
    Ok(descs
        .iter()
        .map(|d| d.as_ref().map_or(0, |d| d.bg_inode_table))
        .collect())
}

/// What a scan of chosen inodes found: write inference re-reads the inodes
/// a transaction touched with the crawler's own code.
#[derive(Debug, Default)]
pub struct InodeScan {
    /// Records of the inodes in use (free inodes are absent).
    pub files: Vec<(u64, FileRecord)>,
    /// Blocks they own: `(first block, count, owner)`.
    pub runs: Vec<(u64, u64, Owner)>,
    /// Inline contents of regular files.
    pub inline: Vec<(u64, Vec<u8>)>,
    /// Directory entries `(directory, name, child)`: inline directories
    /// always, block directories when asked for.
    pub entries: Vec<(u64, Box<[u8]>, u64)>,
    /// Structures that were corrupt and skipped.
    pub warnings: Vec<Error>,
}

/// Parses the inode records `inodes` (`(number, byte offset, record)`) as
/// the crawler does, follows their extent trees and indirect blocks, and
/// with `read_dirs` reads the entries of the directories among them.
pub fn scan_inodes(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    inodes: &[(u64, u64, &[u8])],
    read_dirs: bool,
) -> InodeScan {
    let ctx = Ctx::new(dev, sb.clone());
    let mut out = Out::default();
    for &(ino, off, rec) in inodes {
        ctx.inode(&mut out, ino, rec, off);
    }
    ctx.walk_extent_trees(&mut out);
    ctx.walk_indirect_blocks(&mut out);
    ctx.map_xattr_blocks(&mut out);
    let mut entries = std::mem::take(&mut out.entries);
    if read_dirs {
        let mut tree = Tree::new();
        ctx.read_directories(&mut out, &mut tree);
        for (dir, names) in tree.dirs() {
            for e in names {
                entries.push((dir, Box::from(&*e.name), e.child));
            }
        }
    } else {
        out.dirs.clear();
    }
    let mut files: BTreeMap<u64, FileRecord> = std::mem::take(&mut out.files).into_iter().collect();
    ctx.read_slow_symlinks(&mut out, &mut files);
    InodeScan {
        files: files.into_iter().collect(),
        runs: out.runs,
        inline: out.inline,
        entries,
        warnings: out.warnings,
    }
}

impl Ctx<'_> {
    fn blocks_count(&self) -> u64 {
        self.sb.s_blocks_count
    }

    fn byte(&self, block: u64) -> u64 {
        block.saturating_mul(self.bs)
    }

    /// Reads the primary descriptor table. Fails only when it cannot be
    /// read at all; a bad single descriptor becomes `None` and a warning.
    fn read_group_descs(&self, out: &mut Out) -> Result<Vec<Option<GroupDesc>>> {
        let l = &self.layout;
        let ds = usize::from(self.sb.s_desc_size);
        let table_bytes = l
            .gdt_blocks
            .checked_mul(l.block_size)
            .filter(|&n| n <= self.dev.size() && n <= MAX_GDT_BYTES)
            .ok_or_else(|| {
                Error::corrupt(
                    "ext4 superblock",
                    SUPERBLOCK_OFFSET,
                    format!(
                        "{} groups need {} descriptor blocks, more than the device holds or {MAX_GDT_BYTES} bytes",
                        l.groups, l.gdt_blocks
                    ),
                )
            })?;
        let bs = usize::try_from(l.block_size).unwrap_or(usize::MAX);
        let mut raw = vec![0u8; usize::try_from(table_bytes).unwrap_or(0)];
        let mut offsets = Vec::new();
        if self.sb.has_incompat(incompat::META_BG) {
            for (i, chunk) in raw.chunks_exact_mut(bs).enumerate() {
                let off = self.byte(l.primary_desc_block(&self.sb, i as u64));
                self.dev.read_at(off, chunk)?;
                offsets.push(off);
            }
        } else {
            let off = self.byte(l.primary_desc_block(&self.sb, 0));
            self.dev.read_at(off, &mut raw)?;
            for i in 0..l.gdt_blocks {
                offsets.push(off.saturating_add(i.saturating_mul(l.block_size)));
            }
        }
        let mut descs = Vec::new();
        let per_block = usize::try_from(l.descs_per_block).unwrap_or(1);
        for g in 0..usize::try_from(l.groups).unwrap_or(0) {
            let blk = g / per_block;
            let within = (g % per_block) * ds;
            let off = at(offsets.get(blk).copied().unwrap_or(0), within);
            let bytes = raw
                .get(blk * bs + within..)
                .and_then(|r| r.get(..ds))
                .unwrap_or(&[]);
            match GroupDesc::from_bytes(bytes, &self.sb, g as u64, off) {
                Ok(gd) => {
                    if !gd.csum_ok {
                        out.warn(Error::corrupt(
                            "ext4 group descriptor",
                            off,
                            format!(
                                "group {g}: bg_checksum mismatch; reading its whole inode table"
                            ),
                        ));
                    }
                    descs.push(Some(gd));
                }
                Err(e) => {
                    out.warn(e);
                    descs.push(None);
                }
            }
        }
        if descs.iter().all(Option::is_none) {
            return Err(Error::corrupt(
                "ext4 group descriptors",
                offsets.first().copied().unwrap_or(0),
                "no usable group descriptor",
            ));
        }
        Ok(descs)
    }

    /// Superblocks, descriptor tables, bitmaps and inode tables.
    fn map_static_metadata(&self, descs: &[Option<GroupDesc>], out: &mut Out) {
        let sb = &self.sb;
        let l = &self.layout;
        out.runs
            .push((SUPERBLOCK_OFFSET / self.bs, 1, Owner::Superblock));
        for group in 1..l.groups {
            if sb.group_has_super(group) {
                let sb_block = l.group_first_block(sb, group);
                out.runs
                    .push((sb_block, 1, Owner::SuperblockBackup { group }));
            }
        }
        for (group, first, n) in l.desc_runs(sb) {
            out.runs.push((first, n, Owner::GroupDescriptors { group }));
        }
        let table_blocks = u64::from(sb.s_inodes_per_group)
            .saturating_mul(u64::from(sb.s_inode_size))
            .div_ceil(self.bs);
        for (g, gd) in descs.iter().enumerate() {
            let Some(gd) = gd else { continue };
            let group = g as u64;
            out.runs
                .push((gd.bg_block_bitmap, 1, Owner::BlockBitmap { group }));
            out.runs
                .push((gd.bg_inode_bitmap, 1, Owner::InodeBitmap { group }));
            out.runs
                .push((gd.bg_inode_table, table_blocks, Owner::InodeTable { group }));
        }
    }

    /// Drops groups whose inode table overlaps an earlier one or runs past
    /// the file system (`work` is sorted by table block). Without this, a
    /// hostile image could point every group at the same table and make a
    /// small device yield an unbounded number of inodes; with it, the
    /// inode bytes read never exceed the device size.
    fn drop_overlapping_tables(&self, work: Vec<TableWork>, out: &mut Out) -> Vec<TableWork> {
        let table_blocks = u64::from(self.sb.s_inodes_per_group)
            .saturating_mul(u64::from(self.sb.s_inode_size))
            .div_ceil(self.bs);
        let mut kept = Vec::with_capacity(work.len());
        let mut end = 0u64;
        for w in work {
            let w_end = w.table.saturating_add(table_blocks);
            if w.table < end || w_end > self.blocks_count() {
                out.warn(Error::corrupt(
                    "ext4 group descriptor",
                    self.byte(w.table),
                    format!(
                        "group {}: inode table at block {} overlaps another group's or the end; skipped",
                        w.group, w.table
                    ),
                ));
                continue;
            }
            end = w_end;
            kept.push(w);
        }
        kept
    }

    /// Reads the used part of the inode tables in `work`.
    fn scan_tables(&self, work: &[TableWork], progress: &dyn Progress) -> Out {
        let mut out = Out::default();
        let isz = self.inode_size;
        let per_chunk = (READ_CHUNK_BYTES / isz).max(1);
        let mut buf = vec![0u8; per_chunk * isz];
        let ipg = u64::from(self.sb.s_inodes_per_group);
        for w in work {
            let mut i = 0usize;
            let used = usize::try_from(w.used).unwrap_or(0);
            while i < used {
                let n = per_chunk.min(used - i);
                let off = at(self.byte(w.table), i * isz);
                let Some(slice) = buf.get_mut(..n * isz) else {
                    break;
                };
                if let Err(e) = self.dev.read_at(off, slice) {
                    out.warn(e);
                } else {
                    for (k, rec) in slice.chunks_exact(isz).enumerate() {
                        let ino = w.group * ipg + (i + k) as u64 + 1;
                        self.inode(&mut out, ino, rec, at(off, k * isz));
                    }
                }
                progress.inc(n as u64);
                i += n;
            }
        }
        out
    }

    /// Handles one inode record.
    fn inode(&self, out: &mut Out, ino: u64, rec: &[u8], off: u64) {
        let reserved = (ino < u64::from(self.sb.s_first_ino) && ino != u64::from(EXT4_ROOT_INO))
            || self.hidden_inos.contains(&ino);
        // Fast path: a free inode (no links) is skipped without parsing.
        if !reserved && le16(rec, 0x1A) == 0 {
            return;
        }
        if reserved && (ino == u64::from(EXT4_RESIZE_INO) || le32(rec, 0x1C) == 0) {
            // The resize inode's blocks are the reserved GDT blocks, mapped
            // as such; reserved inodes without blocks hold nothing.
            return;
        }
        let inode = match Inode::from_bytes(rec, self.inode_size, off) {
            Ok(i) => i,
            Err(e) => return out.warn(e),
        };
        // An inode holding a large xattr value (ea_inode) is internal too.
        if reserved || inode.has_flag(EXT4_EA_INODE_FL) {
            let kind = if ino == self.journal_ino {
                Kind::Journal
            } else {
                Kind::Hidden
            };
            let owned = Owned {
                ino,
                kind,
                size: inode.i_size,
            };
            if !inode.has_flag(EXT4_INLINE_DATA_FL) {
                self.map_blocks(out, &inode, owned, off);
            }
            return;
        }
        let Some(ftype) = inode.file_type() else {
            return out.warn(Error::corrupt(
                "ext4 inode",
                off,
                format!("inode {ino}: invalid i_mode {:#o}", inode.i_mode),
            ));
        };
        let mut rec_out = FileRecord {
            id: ino,
            ftype,
            mode: inode.i_mode & 0o7777,
            uid: inode.i_uid,
            gid: inode.i_gid,
            size: inode.i_size,
            nlink: u32::from(inode.i_links_count),
            atime: inode.i_atime,
            mtime: inode.i_mtime,
            ctime: inode.i_ctime,
            crtime: inode.i_crtime,
            target: None,
        };
        let kind = match ftype {
            FileType::File => Kind::File,
            FileType::Dir => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => {
                // Devices, FIFOs, sockets: i_block holds no blocks.
                out.files.push((ino, rec_out));
                self.note_xattr_block(out, &inode, ino, off);
                return;
            }
        };
        let owned = Owned {
            ino,
            kind,
            size: inode.i_size,
        };
        if inode.has_flag(EXT4_INLINE_DATA_FL) {
            self.inline_data(out, &inode, &mut rec_out, rec, off);
        } else if kind == Kind::Symlink && self.is_fast_symlink(&inode) {
            let len = usize::try_from(inode.i_size).unwrap_or(usize::MAX);
            if len > I_BLOCK_LEN {
                out.warn(Error::corrupt(
                    "ext4 inode",
                    off,
                    format!("fast symlink {ino} of {len} bytes, at most {I_BLOCK_LEN} fit"),
                ));
            }
            let t = inode.i_block.get(..len.min(I_BLOCK_LEN)).unwrap_or(&[]);
            rec_out.target = Some(t.into());
        } else {
            self.map_blocks(out, &inode, owned, off);
        }
        self.note_xattr_block(out, &inode, ino, off);
        out.files.push((ino, rec_out));
    }

    fn note_xattr_block(&self, out: &mut Out, inode: &Inode, ino: u64, off: u64) {
        let b = inode.i_file_acl;
        if b == 0 {
            return;
        }
        if b >= self.blocks_count() {
            return out.warn(Error::corrupt(
                "ext4 inode",
                off,
                format!("inode {ino}: i_file_acl {b} past the last block"),
            ));
        }
        out.xattr_blocks.push((b, ino));
    }

    /// A symlink whose target lives in `i_block`: it owns no blocks besides
    /// a possible xattr block.
    fn is_fast_symlink(&self, inode: &Inode) -> bool {
        if inode.has_flag(EXT4_EXTENTS_FL) {
            return false;
        }
        let ea = if inode.i_file_acl == 0 {
            0
        } else if inode.has_flag(EXT4_HUGE_FILE_FL) {
            1
        } else {
            self.bs / 512
        };
        inode.i_blocks.saturating_sub(ea) == 0
    }

    /// Inline data: `i_block` then the `system.data` xattr value.
    fn inline_data(
        &self,
        out: &mut Out,
        inode: &Inode,
        rec_out: &mut FileRecord,
        rec: &[u8],
        off: u64,
    ) {
        let ino = rec_out.id;
        let area_off = at(
            off,
            128usize.saturating_add(usize::from(inode.i_extra_isize)),
        );
        let extra = match InodeXattrs::from_bytes(inode.xattr_area(rec, self.inode_size), area_off)
        {
            Some(x) => match x.system_data() {
                Ok(v) => v.unwrap_or(&[]),
                Err(e) => {
                    out.warn(e);
                    &[]
                }
            },
            None => &[],
        };
        match rec_out.ftype {
            FileType::Dir => {
                // i_block: the parent's inode (4 bytes, `..`), then entries.
                let first = inode.i_block.get(4..).unwrap_or(&[]);
                let bs = usize::try_from(self.bs).unwrap_or(usize::MAX);
                for (part, part_off) in [(first, at(off, 0x28 + 4)), (extra, area_off)] {
                    for e in DirBlock::from_bytes(part, part_off, self.filetype, bs) {
                        match e {
                            Ok(e) if e.inode != 0 && !e.is_dot() => {
                                out.entries.push((ino, e.name.into(), u64::from(e.inode)))
                            }
                            Ok(_) => {}
                            Err(err) => out.warn(err),
                        }
                    }
                }
            }
            _ => {
                let size = usize::try_from(rec_out.size).unwrap_or(usize::MAX);
                let mut data = Vec::with_capacity(size.min(I_BLOCK_LEN + extra.len()));
                data.extend_from_slice(inode.i_block.get(..size.min(I_BLOCK_LEN)).unwrap_or(&[]));
                let rest = size.saturating_sub(I_BLOCK_LEN).min(extra.len());
                data.extend_from_slice(extra.get(..rest).unwrap_or(&[]));
                if data.len() < size {
                    out.warn(Error::corrupt(
                        "ext4 inode",
                        off,
                        format!(
                            "inline inode {ino}: i_size {size} but only {} bytes inline",
                            data.len()
                        ),
                    ));
                }
                if rec_out.ftype == FileType::Symlink {
                    rec_out.target = Some(data.into());
                } else {
                    out.inline.push((ino, data));
                }
            }
        }
    }

    /// Maps a file's blocks from its extent root or block map.
    fn map_blocks(&self, out: &mut Out, inode: &Inode, owned: Owned, off: u64) {
        let iblock_off = at(off, 0x28);
        if inode.has_flag(EXT4_EXTENTS_FL) {
            match ExtentNode::from_bytes(&inode.i_block, iblock_off) {
                Ok(node) => self.extent_node(out, &node, owned, iblock_off),
                Err(e) => out.warn(e),
            }
            return;
        }
        // Block map: coalesce the direct pointers into runs.
        let mut direct: Vec<(u64, u64)> = Vec::new();
        for (slot, p) in root_pointers(&inode.i_block) {
            if slot < EXT4_NDIR_BLOCKS {
                direct.push((slot as u64, u64::from(p)));
            } else {
                let level = (slot - EXT4_NDIR_BLOCKS + 1) as u8;
                let per = self.bs / 4;
                let (logical, _) = slot_span(slot, per);
                if u64::from(p) >= self.blocks_count() {
                    out.warn(Error::corrupt(
                        "ext4 inode",
                        iblock_off,
                        format!(
                            "inode {}: indirect block {p} past the last block",
                            owned.ino
                        ),
                    ));
                    continue;
                }
                out.ind.push(IndReq {
                    block: u64::from(p),
                    level,
                    logical,
                    owned,
                });
            }
        }
        self.pointer_runs(out, owned, &direct, iblock_off);
    }

    /// Turns `(logical, physical)` pairs in logical order into runs.
    fn pointer_runs(&self, out: &mut Out, owned: Owned, ptrs: &[(u64, u64)], off: u64) {
        let mut run: Option<(u64, u64, u64)> = None;
        for &(l, p) in ptrs {
            match run {
                Some((rl, rp, n)) if rl + n == l && rp + n == p => run = Some((rl, rp, n + 1)),
                _ => {
                    if let Some((rl, rp, n)) = run {
                        self.data_run(out, owned, rl, rp, n, false, off);
                    }
                    run = Some((l, p, 1));
                }
            }
        }
        if let Some((rl, rp, n)) = run {
            self.data_run(out, owned, rl, rp, n, false, off);
        }
    }

    /// Records `len` blocks of `owned` from `logical` at `phys`.
    #[allow(clippy::too_many_arguments)]
    fn data_run(
        &self,
        out: &mut Out,
        owned: Owned,
        logical: u64,
        phys: u64,
        len: u64,
        unwritten: bool,
        off: u64,
    ) {
        if len == 0 {
            return;
        }
        if phys
            .checked_add(len)
            .is_none_or(|end| end > self.blocks_count())
            || phys == 0
        {
            return out.warn(Error::corrupt(
                "ext4 block mapping",
                off,
                format!(
                    "inode {}: blocks {phys}+{len} outside 1..{}",
                    owned.ino,
                    self.blocks_count()
                ),
            ));
        }
        let file = owned.ino;
        let owner = match (owned.kind, unwritten) {
            (Kind::Journal, _) => Owner::Journal { logical },
            (Kind::Hidden, _) => Owner::OtherMetadata,
            (_, true) => Owner::Unwritten { file, logical },
            (Kind::Dir, false) => Owner::DirData { file, logical },
            (_, false) => Owner::FileData { file, logical },
        };
        out.runs.push((phys, len, owner));
        if unwritten {
            return;
        }
        match owned.kind {
            Kind::Dir => {
                // Only blocks below i_size hold entries.
                let dir_blocks = owned.size.div_ceil(self.bs);
                let n = dir_blocks.saturating_sub(logical).min(len);
                if n > 0 {
                    out.dirs.push(DirRun {
                        phys,
                        len: n,
                        ino: file,
                    });
                }
            }
            Kind::Symlink if logical == 0 => out.symlinks.push((file, phys, owned.size)),
            _ => {}
        }
    }

    /// Handles the entries of one extent node at byte `off`.
    fn extent_node(&self, out: &mut Out, node: &ExtentNode<'_>, owned: Owned, off: u64) {
        for e in node.entries() {
            match e {
                ExtentEntry::Extent {
                    ee_block,
                    len,
                    ee_start,
                    unwritten,
                } => self.data_run(
                    out,
                    owned,
                    u64::from(ee_block),
                    ee_start,
                    u64::from(len),
                    unwritten,
                    off,
                ),
                ExtentEntry::Index { ei_leaf, .. } => {
                    if ei_leaf == 0 || ei_leaf >= self.blocks_count() {
                        out.warn(Error::corrupt(
                            "ext4 extent node",
                            off,
                            format!(
                                "inode {}: ei_leaf {ei_leaf} outside the file system",
                                owned.ino
                            ),
                        ));
                        continue;
                    }
                    out.ext.push(ExtReq {
                        block: ei_leaf,
                        depth: node.eh_depth.saturating_sub(1),
                        owned,
                    });
                }
            }
        }
    }

    /// Reads the extent-tree blocks level by level.
    fn walk_extent_trees(&self, out: &mut Out) {
        // Each round's requests are one level below the previous round's,
        // so there are at most MAX_EXTENT_DEPTH rounds.
        for _round in 0..MAX_EXTENT_DEPTH {
            let mut reqs = std::mem::take(&mut out.ext);
            if reqs.is_empty() {
                return;
            }
            reqs.sort_by_key(|r| r.block);
            let reqs = self.dedup(out, reqs, |r| r.block, "ext4 extent node");
            let runs: Vec<(u64, u64, usize)> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| (r.block, 1, i))
                .collect();
            self.read_runs(out, &runs, "ext4 extent node", |out, i, _k, blk, bytes| {
                let Some(r) = reqs.get(i) else { return };
                let off = self.byte(blk);
                out.runs
                    .push((blk, 1, Owner::ExtentTree { file: r.owned.ino }));
                match ExtentNode::from_bytes(bytes, off) {
                    Ok(node) if node.eh_depth == r.depth => {
                        self.extent_node(out, &node, r.owned, off)
                    }
                    Ok(node) => out.warn(Error::corrupt(
                        "ext4 extent node",
                        off,
                        format!(
                            "inode {}: eh_depth {}, expected {} (loop or misdirected index)",
                            r.owned.ino, node.eh_depth, r.depth
                        ),
                    )),
                    Err(e) => out.warn(e),
                }
            });
        }
        if !out.ext.is_empty() {
            let n = out.ext.len();
            out.ext.clear();
            out.warn(Error::corrupt(
                "ext4 extent node",
                0,
                format!("{n} extent nodes deeper than {MAX_EXTENT_DEPTH} levels ignored"),
            ));
        }
    }

    /// Reads the indirect blocks level by level (at most three rounds).
    fn walk_indirect_blocks(&self, out: &mut Out) {
        let per = self.bs / 4;
        for _round in 0..MAX_INDIRECT_LEVEL {
            let mut reqs = std::mem::take(&mut out.ind);
            if reqs.is_empty() {
                return;
            }
            reqs.sort_by_key(|r| r.block);
            let reqs = self.dedup(out, reqs, |r| r.block, "ext4 indirect block");
            let runs: Vec<(u64, u64, usize)> = reqs
                .iter()
                .enumerate()
                .map(|(i, r)| (r.block, 1, i))
                .collect();
            let bs = usize::try_from(self.bs).unwrap_or(usize::MAX);
            let mut ptrs: Vec<(u64, u64)> = Vec::new();
            self.read_runs(
                out,
                &runs,
                "ext4 indirect block",
                |out, i, _k, blk, bytes| {
                    let Some(r) = reqs.get(i) else { return };
                    let off = self.byte(blk);
                    out.runs
                        .push((blk, 1, Owner::Indirect { file: r.owned.ino }));
                    let ib = match IndirectBlock::from_bytes(bytes, bs, off) {
                        Ok(ib) => ib,
                        Err(e) => return out.warn(e),
                    };
                    // Logical blocks each pointer of this level covers.
                    let span = if r.level <= 1 {
                        1
                    } else {
                        per.saturating_pow(u32::from(r.level) - 1)
                    };
                    ptrs.clear();
                    for (idx, p) in ib.pointers() {
                        let logical = r.logical.saturating_add(idx.saturating_mul(span));
                        if r.level <= 1 {
                            ptrs.push((logical, u64::from(p)));
                        } else if u64::from(p) >= self.blocks_count() {
                            out.warn(Error::corrupt(
                                "ext4 indirect block",
                                off,
                                format!("inode {}: pointer {p} past the last block", r.owned.ino),
                            ));
                        } else {
                            out.ind.push(IndReq {
                                block: u64::from(p),
                                level: r.level - 1,
                                logical,
                                owned: r.owned,
                            });
                        }
                    }
                    self.pointer_runs(out, r.owned, &ptrs, off);
                },
            );
        }
        out.ind.clear();
    }

    /// Drops requests for a block already requested in this round.
    fn dedup<T: Copy>(
        &self,
        out: &mut Out,
        reqs: Vec<T>,
        key: impl Fn(&T) -> u64,
        structure: &'static str,
    ) -> Vec<T> {
        let mut kept: Vec<T> = Vec::with_capacity(reqs.len());
        for r in reqs {
            if kept.last().is_some_and(|l| key(l) == key(&r)) {
                out.warn(Error::corrupt(
                    structure,
                    self.byte(key(&r)),
                    "block referenced twice; read once",
                ));
                continue;
            }
            kept.push(r);
        }
        kept
    }

    /// Reads `runs` (`(first block, count, tag)`, sorted by block) in
    /// coalesced chunks of at most [`READ_CHUNK_BYTES`], calling `f(out,
    /// tag, index in run, block, bytes)` for every block.
    fn read_runs<T: Copy>(
        &self,
        out: &mut Out,
        runs: &[(u64, u64, T)],
        structure: &'static str,
        mut f: impl FnMut(&mut Out, T, u64, u64, &[u8]),
    ) {
        let bs = usize::try_from(self.bs).unwrap_or(usize::MAX);
        let chunk_blocks = (READ_CHUNK_BYTES / bs).max(1) as u64;
        let mut buf: Vec<u8> = Vec::new();
        // Pieces of the current batch: (tag, index of first block in run,
        // count).
        let mut pieces: Vec<(T, u64, u64)> = Vec::new();
        let mut batch_start = 0u64;
        let mut batch_len = 0u64;
        let mut flush = |out: &mut Out, pieces: &mut Vec<(T, u64, u64)>, start: u64, len: u64| {
            if len == 0 {
                return;
            }
            let bytes = usize::try_from(len).unwrap_or(0).saturating_mul(bs);
            buf.resize(bytes, 0);
            let off = self.byte(start);
            match self.dev.read_at(off, &mut buf) {
                Err(e) => out.warn(Error::corrupt(
                    structure,
                    off,
                    format!("{len} blocks unreadable: {e}"),
                )),
                Ok(()) => {
                    let mut blk = start;
                    let mut chunks = buf.chunks_exact(bs);
                    for &(tag, first, n) in pieces.iter() {
                        for k in 0..n {
                            let Some(bytes) = chunks.next() else { return };
                            f(out, tag, first + k, blk, bytes);
                            blk += 1;
                        }
                    }
                }
            }
            pieces.clear();
        };
        for &(start, len, tag) in runs {
            let mut done = 0u64;
            while done < len {
                let blk = start.saturating_add(done);
                let room = chunk_blocks - batch_len;
                if batch_len > 0 && (blk != batch_start + batch_len || room == 0) {
                    flush(out, &mut pieces, batch_start, batch_len);
                    batch_len = 0;
                }
                if batch_len == 0 {
                    batch_start = blk;
                }
                let n = (len - done).min(chunk_blocks - batch_len);
                pieces.push((tag, done, n));
                batch_len += n;
                done += n;
            }
        }
        flush(out, &mut pieces, batch_start, batch_len);
    }

    /// Reads every directory block once, in disk order, into `tree`.
    fn read_directories(&self, out: &mut Out, tree: &mut Tree) {
        let mut dirs = std::mem::take(&mut out.dirs);
        dirs.sort_by_key(|d| d.phys);
        // Trim blocks claimed by two directories: read them once.
        let mut runs: Vec<(u64, u64, u64)> = Vec::with_capacity(dirs.len());
        let mut end = 0u64;
        for d in dirs {
            let d_end = d.phys.saturating_add(d.len);
            if d_end <= end {
                continue;
            }
            let start = d.phys.max(end);
            runs.push((start, d_end - start, d.ino));
            end = d_end;
        }
        let bs = usize::try_from(self.bs).unwrap_or(usize::MAX);
        let max_ino = u64::from(self.sb.s_inodes_count);
        let filetype = self.filetype;
        self.read_runs(
            out,
            &runs,
            "ext4 directory block",
            |out, ino, _k, blk, bytes| {
                for e in DirBlock::from_bytes(bytes, self.byte(blk), filetype, bs) {
                    match e {
                        Ok(e) if e.inode == 0 || e.is_dot() => {}
                        Ok(e) if u64::from(e.inode) > max_ino => out.warn(Error::corrupt(
                            "ext4 directory entry",
                            self.byte(blk),
                            format!("inode {} past s_inodes_count {max_ino}", e.inode),
                        )),
                        Ok(e) => tree.add(ino, e.name, u64::from(e.inode)),
                        Err(err) => out.warn(err),
                    }
                }
            },
        );
    }

    /// Reads the targets of slow symlinks.
    fn read_slow_symlinks(&self, out: &mut Out, files: &mut BTreeMap<u64, FileRecord>) {
        let mut links = std::mem::take(&mut out.symlinks);
        links.sort_by_key(|l| l.1);
        let runs: Vec<(u64, u64, (u64, u64))> = links
            .iter()
            .map(|&(ino, blk, size)| (blk, 1, (ino, size)))
            .collect();
        self.read_runs(
            out,
            &runs,
            "ext4 symlink block",
            |out, (ino, size), _k, blk, bytes| {
                let len = usize::try_from(size).unwrap_or(usize::MAX);
                if len > bytes.len() {
                    out.warn(Error::corrupt(
                        "ext4 symlink block",
                        self.byte(blk),
                        format!("symlink {ino}: i_size {size} larger than a block"),
                    ));
                }
                let t = bytes.get(..len.min(bytes.len())).unwrap_or(&[]);
                if let Some(f) = files.get_mut(&ino) {
                    f.target = Some(t.into());
                }
            },
        );
    }

    /// Maps shared xattr blocks once each, to the first inode using them.
    fn map_xattr_blocks(&self, out: &mut Out) {
        let mut x = std::mem::take(&mut out.xattr_blocks);
        x.sort_unstable();
        x.dedup_by_key(|(b, _)| *b);
        for (b, ino) in x {
            out.runs.push((b, 1, Owner::Xattr { file: ino }));
        }
    }
}
