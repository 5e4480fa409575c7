//! The block-owner map: for any file-system block, what it holds.
//!
//! Kept as a sorted vector of non-overlapping runs, which costs one run per
//! extent (not per block) and answers a lookup with a binary search.

use crate::model::FileId;

/// What a run of blocks holds. Variants that carry a `logical` block number
/// give the number of the run's first block; the run's `n`-th block is
/// `logical + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    /// Data of a regular file or slow symlink.
    FileData {
        /// The file.
        file: FileId,
        /// Logical block of the run's first block.
        logical: u64,
    },
    /// Allocated but unwritten file data (reads as zeroes).
    Unwritten {
        /// The file.
        file: FileId,
        /// Logical block of the run's first block.
        logical: u64,
    },
    /// A directory's data block.
    DirData {
        /// The directory.
        file: FileId,
        /// Logical block of the run's first block.
        logical: u64,
    },
    /// An extent-tree index or leaf block of a file.
    ExtentTree {
        /// The file.
        file: FileId,
    },
    /// An ext2/3 indirect, double- or triple-indirect block of a file.
    Indirect {
        /// The file.
        file: FileId,
    },
    /// An extended-attribute block.
    Xattr {
        /// The first file seen using it.
        file: FileId,
    },
    /// Part of an inode table (ext) or of the MFT (NTFS).
    InodeTable {
        /// Block group (ext) or 0 (NTFS).
        group: u64,
    },
    /// A block-allocation bitmap.
    BlockBitmap {
        /// Block group.
        group: u64,
    },
    /// An inode-allocation bitmap.
    InodeBitmap {
        /// Block group.
        group: u64,
    },
    /// Group descriptor blocks (primary or backup, incl. reserved GDT).
    GroupDescriptors {
        /// Block group whose copy this is.
        group: u64,
    },
    /// The primary superblock (or boot sector).
    Superblock,
    /// A backup superblock.
    SuperblockBackup {
        /// Block group holding the backup.
        group: u64,
    },
    /// The journal (jbd2, `$LogFile`).
    Journal {
        /// Journal block of the run's first block.
        logical: u64,
    },
    /// Other file-system metadata.
    OtherMetadata,
}

impl Owner {
    /// The owner of the block `n` blocks into a run with this owner.
    pub fn advance(self, n: u64) -> Owner {
        match self {
            Owner::FileData { file, logical } => Owner::FileData {
                file,
                logical: logical.saturating_add(n),
            },
            Owner::Unwritten { file, logical } => Owner::Unwritten {
                file,
                logical: logical.saturating_add(n),
            },
            Owner::DirData { file, logical } => Owner::DirData {
                file,
                logical: logical.saturating_add(n),
            },
            Owner::Journal { logical } => Owner::Journal {
                logical: logical.saturating_add(n),
            },
            other => other,
        }
    }

    /// The file this block belongs to, if any.
    pub fn file(self) -> Option<FileId> {
        match self {
            Owner::FileData { file, .. }
            | Owner::Unwritten { file, .. }
            | Owner::DirData { file, .. }
            | Owner::ExtentTree { file }
            | Owner::Indirect { file }
            | Owner::Xattr { file } => Some(file),
            _ => None,
        }
    }

    /// True if `next` continues a run of `self` that is `len` blocks long.
    fn continues(self, len: u64, next: Owner) -> bool {
        self.advance(len) == next
    }
}

/// A run of `len` consecutive blocks from `start` with one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First block.
    pub start: u64,
    /// Number of blocks (at least 1).
    pub len: u64,
    /// What the run holds.
    pub owner: Owner,
}

impl Run {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Two claims on the same blocks, found when the map was finished. The first
/// claim (lower start, then first pushed) is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    /// The run that was kept.
    pub kept: Run,
    /// The run (or the part of it) that was dropped.
    pub dropped: Run,
}

/// Runs per chunk after [`BlockMap::finish`]; a chunk that grows past twice
/// this is split.
const CHUNK_RUNS: usize = 1024;

/// The block-owner interval map.
///
/// The runs are sorted and kept in chunks of about [`CHUNK_RUNS`], so that a
/// lookup is two binary searches and a change ([`BlockMap::set`],
/// [`BlockMap::clear`]) moves at most a chunk's worth of runs, not the whole
/// map (a file system of millions of files has millions of runs).
#[derive(Debug, Clone, Default)]
pub struct BlockMap {
    /// Sorted, non-overlapping runs; every chunk is non-empty.
    chunks: Vec<Vec<Run>>,
    /// Runs pushed since the last [`BlockMap::finish`].
    staged: Vec<Run>,
    sorted: bool,
    count: usize,
}

impl PartialEq for BlockMap {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.staged == other.staged && self.runs().eq(other.runs())
    }
}

impl Eq for BlockMap {}

impl BlockMap {
    /// An empty map.
    pub fn new() -> Self {
        BlockMap {
            chunks: Vec::new(),
            staged: Vec::new(),
            sorted: true,
            count: 0,
        }
    }

    /// Adds a run during a crawl, in any order. Call [`BlockMap::finish`]
    /// before looking anything up. Empty runs are ignored.
    pub fn push(&mut self, start: u64, len: u64, owner: Owner) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.staged.last() {
            if last.start > start {
                self.sorted = false;
            }
        }
        self.staged.push(Run { start, len, owner });
    }

    /// Sorts the runs, merges runs that continue each other, and drops
    /// overlapping claims (a corrupt or hostile image can give two files the
    /// same block). Returns the conflicts found.
    pub fn finish(&mut self) -> Vec<Conflict> {
        let mut all: Vec<Run> = Vec::with_capacity(self.count + self.staged.len());
        for c in self.chunks.drain(..) {
            all.extend(c);
        }
        let staged = std::mem::take(&mut self.staged);
        if !all.is_empty() || !self.sorted {
            all.extend(staged);
            // Stable: among equal starts the first pushed claim wins.
            all.sort_by_key(|r| r.start);
        } else {
            all = staged;
        }
        self.sorted = true;
        let mut conflicts = Vec::new();
        let mut out: Vec<Run> = Vec::with_capacity(all.len());
        for mut run in all {
            if let Some(last) = out.last_mut() {
                let last_end = last.end();
                if run.start < last_end {
                    // Overlap: keep the earlier claim, trim the later one.
                    let overlap = (last_end - run.start).min(run.len);
                    conflicts.push(Conflict {
                        kept: *last,
                        dropped: Run {
                            start: run.start,
                            len: overlap,
                            owner: run.owner,
                        },
                    });
                    if overlap == run.len {
                        continue;
                    }
                    run.owner = run.owner.advance(overlap);
                    run.start += overlap;
                    run.len -= overlap;
                }
                if run.start == last.end() && last.owner.continues(last.len, run.owner) {
                    last.len += run.len;
                    continue;
                }
            }
            out.push(run);
        }
        self.count = out.len();
        self.chunks = out.chunks(CHUNK_RUNS).map(<[Run]>::to_vec).collect();
        conflicts
    }

    /// Index of the chunk holding the last run that starts at or before
    /// `block`.
    fn chunk_of(&self, block: u64) -> Option<usize> {
        let ci = self
            .chunks
            .partition_point(|c| c.first().is_some_and(|r| r.start <= block));
        ci.checked_sub(1)
    }

    /// Position of the first run that ends after `block`.
    fn first_ending_after(&self, block: u64) -> (usize, usize) {
        let ci = self.chunk_of(block).unwrap_or(0);
        let Some(c) = self.chunks.get(ci) else {
            return (self.chunks.len(), 0);
        };
        let ri = c.partition_point(|r| r.end() <= block);
        if ri < c.len() {
            (ci, ri)
        } else {
            (ci + 1, 0)
        }
    }

    /// The run containing `block`, if any.
    pub fn run_at(&self, block: u64) -> Option<&Run> {
        debug_assert!(self.staged.is_empty(), "BlockMap::finish not called");
        let c = self.chunks.get(self.chunk_of(block)?)?;
        let ri = c.partition_point(|r| r.start <= block).checked_sub(1)?;
        let run = c.get(ri)?;
        (block < run.end()).then_some(run)
    }

    /// The owner of `block` (with its logical number), or `None` when no
    /// known structure claims it (free, or not yet known).
    pub fn owner(&self, block: u64) -> Option<Owner> {
        self.run_at(block)
            .map(|run| run.owner.advance(block - run.start))
    }

    /// Claims `[start, start+len)` for `owner`, replacing whatever held
    /// those blocks before.
    pub fn set(&mut self, start: u64, len: u64, owner: Owner) {
        if len == 0 {
            return;
        }
        self.clear(start, len);
        let run = Run { start, len, owner };
        self.count += 1;
        let ci = self
            .chunks
            .partition_point(|c| c.first().is_some_and(|r| r.start < start))
            .saturating_sub(1);
        let Some(c) = self.chunks.get_mut(ci) else {
            self.chunks.push(vec![run]);
            return;
        };
        let ri = c.partition_point(|r| r.start < start);
        c.insert(ri, run);
        if c.len() > 2 * CHUNK_RUNS {
            let tail = c.split_off(CHUNK_RUNS);
            self.chunks.insert(ci + 1, tail);
        }
    }

    /// Forgets every claim on `[start, start+len)` (blocks freed).
    pub fn clear(&mut self, start: u64, len: u64) {
        debug_assert!(self.staged.is_empty(), "BlockMap::finish not called");
        let end = start.saturating_add(len);
        let (mut ci, first) = self.first_ending_after(start);
        let mut ri = first;
        while let Some(c) = self.chunks.get_mut(ci) {
            let mut i = ri;
            let mut pieces: Vec<Run> = Vec::new();
            while let Some(&r) = c.get(i) {
                if r.start >= end {
                    break;
                }
                if r.start < start {
                    pieces.push(Run {
                        start: r.start,
                        len: start - r.start,
                        owner: r.owner,
                    });
                }
                if r.end() > end {
                    pieces.push(Run {
                        start: end,
                        len: r.end() - end,
                        owner: r.owner.advance(end - r.start),
                    });
                }
                i += 1;
            }
            let reached_end = i < c.len();
            let removed = i - ri;
            let added = pieces.len();
            c.splice(ri..i, pieces);
            self.count = (self.count + added).saturating_sub(removed);
            if c.is_empty() {
                self.chunks.remove(ci);
            } else {
                ci += 1;
            }
            if reached_end {
                break;
            }
            ri = 0;
        }
    }

    /// Splits `[start, end)` into pieces that each have one owner:
    /// `(first block, one past the last, owner of the first block)`, with
    /// `None` for blocks nobody claims. Pieces are in block order and cover
    /// the whole range.
    pub fn segments(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<Owner>)> {
        let mut out = Vec::new();
        let mut b = start;
        let (ci, ri) = self.first_ending_after(start);
        let mut it = self
            .chunks
            .iter()
            .skip(ci)
            .enumerate()
            .flat_map(|(k, c)| c.iter().skip(if k == 0 { ri } else { 0 }))
            .peekable();
        while b < end {
            match it.peek() {
                Some(r) if r.start <= b => {
                    let e = r.end().min(end);
                    out.push((b, e, Some(r.owner.advance(b - r.start))));
                    b = e;
                    it.next();
                }
                Some(r) => {
                    let e = r.start.min(end);
                    out.push((b, e, None));
                    b = e;
                }
                None => {
                    out.push((b, end, None));
                    b = end;
                }
            }
        }
        out
    }

    /// Every run, in block order.
    pub fn runs(&self) -> impl Iterator<Item = &Run> + '_ {
        self.chunks.iter().flatten()
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(file: u64, logical: u64) -> Owner {
        Owner::FileData { file, logical }
    }

    #[test]
    fn lookup_advances_logical_block_inside_a_run() {
        let mut m = BlockMap::new();
        m.push(100, 10, data(12, 0));
        m.push(10, 1, Owner::Superblock);
        m.finish();
        assert_eq!(m.owner(105), Some(data(12, 5)));
        assert_eq!(m.owner(10), Some(Owner::Superblock));
        assert_eq!(m.owner(110), None);
        assert_eq!(m.owner(99), None);
        assert_eq!(m.owner(0), None);
    }

    #[test]
    fn finish_merges_contiguous_runs_and_reports_overlaps() {
        let mut m = BlockMap::new();
        m.push(0, 4, data(1, 0));
        m.push(4, 4, data(1, 4));
        m.push(6, 4, data(2, 0));
        let conflicts = m.finish();
        assert_eq!(m.len(), 2);
        assert_eq!(m.runs().next().unwrap().len, 8);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].dropped.len, 2);
        assert_eq!(m.owner(8), Some(data(2, 2)));
    }

    #[test]
    fn segments_cover_the_range_with_gaps() {
        let mut m = BlockMap::new();
        m.push(10, 5, data(1, 0));
        m.push(20, 2, Owner::Superblock);
        m.finish();
        let s = m.segments(8, 21);
        assert_eq!(
            s,
            vec![
                (8, 10, None),
                (10, 15, Some(data(1, 0))),
                (15, 20, None),
                (20, 21, Some(Owner::Superblock)),
            ]
        );
        assert_eq!(m.segments(12, 13), vec![(12, 13, Some(data(1, 2)))]);
    }

    /// Many edits across chunk boundaries agree with a plain per-block
    /// model.
    #[test]
    fn chunked_edits_match_a_per_block_model() {
        let n = 20_000u64;
        let mut m = BlockMap::new();
        for b in (0..n).step_by(2) {
            m.push(b, 1, data(b, 0));
        }
        m.finish();
        assert!(m.chunks.len() > 5);
        let mut truth: Vec<Option<Owner>> = (0..n + 100)
            .map(|b| (b % 2 == 0 && b < n).then(|| data(b, 0)))
            .collect();
        let mut x = 12345u64;
        for _ in 0..3000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let s = (x >> 33) % n;
            let l = 1 + (x >> 20) % 3000;
            if x & 1 == 0 {
                m.clear(s, l);
                for b in s..(s + l).min(n + 100) {
                    truth[b as usize] = None;
                }
            } else {
                let o = data(7, s);
                m.set(s, l, o);
                for b in s..(s + l).min(n + 100) {
                    truth[b as usize] = Some(o.advance(b - s));
                }
            }
        }
        for (b, t) in truth.iter().enumerate() {
            assert_eq!(m.owner(b as u64), *t, "block {b}");
        }
        let segs = m.segments(0, n + 100);
        let mut b = 0u64;
        for (s, e, o) in segs {
            assert_eq!(s, b);
            assert_eq!(o, truth[s as usize]);
            b = e;
        }
        assert_eq!(m.len(), m.runs().count());
        assert!(m
            .runs()
            .zip(m.runs().skip(1))
            .all(|(a, b)| a.end() <= b.start));
    }

    #[test]
    fn set_and_clear_split_runs() {
        let mut m = BlockMap::new();
        m.push(0, 10, data(1, 0));
        m.finish();
        m.set(3, 2, data(9, 0));
        assert_eq!(m.owner(2), Some(data(1, 2)));
        assert_eq!(m.owner(4), Some(data(9, 1)));
        assert_eq!(m.owner(5), Some(data(1, 5)));
        m.clear(0, 4);
        assert_eq!(m.owner(3), None);
        assert_eq!(m.owner(4), Some(data(9, 1)));
        assert_eq!(m.len(), 2);
    }
}
