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

/// The block-owner interval map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockMap {
    runs: Vec<Run>,
    sorted: bool,
}

impl BlockMap {
    /// An empty map.
    pub fn new() -> Self {
        BlockMap {
            runs: Vec::new(),
            sorted: true,
        }
    }

    /// Adds a run during a crawl, in any order. Call [`BlockMap::finish`]
    /// before looking anything up. Empty runs are ignored.
    pub fn push(&mut self, start: u64, len: u64, owner: Owner) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.runs.last() {
            if last.start > start {
                self.sorted = false;
            }
        }
        self.runs.push(Run { start, len, owner });
    }

    /// Sorts the runs, merges runs that continue each other, and drops
    /// overlapping claims (a corrupt or hostile image can give two files the
    /// same block). Returns the conflicts found.
    pub fn finish(&mut self) -> Vec<Conflict> {
        if !self.sorted {
            // Stable: among equal starts the first pushed claim wins.
            self.runs.sort_by_key(|r| r.start);
            self.sorted = true;
        }
        let mut conflicts = Vec::new();
        let mut out: Vec<Run> = Vec::with_capacity(self.runs.len());
        for mut run in self.runs.drain(..) {
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
        out.shrink_to_fit();
        self.runs = out;
        conflicts
    }

    /// The run containing `block`, if any.
    pub fn run_at(&self, block: u64) -> Option<&Run> {
        debug_assert!(self.sorted, "BlockMap::finish not called");
        let idx = self.runs.partition_point(|r| r.start <= block);
        let run = self.runs.get(idx.checked_sub(1)?)?;
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
        let idx = self.runs.partition_point(|r| r.start < start);
        self.runs.insert(idx, Run { start, len, owner });
    }

    /// Forgets every claim on `[start, start+len)` (blocks freed).
    pub fn clear(&mut self, start: u64, len: u64) {
        debug_assert!(self.sorted, "BlockMap::finish not called");
        let end = start.saturating_add(len);
        let first = self.runs.partition_point(|r| r.end() <= start);
        let mut i = first;
        let mut pieces: Vec<Run> = Vec::new();
        while i < self.runs.len() && self.runs[i].start < end {
            let r = self.runs[i];
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
        self.runs.splice(first..i, pieces);
    }

    /// Splits `[start, end)` into pieces that each have one owner:
    /// `(first block, one past the last, owner of the first block)`, with
    /// `None` for blocks nobody claims. Pieces are in block order and cover
    /// the whole range.
    pub fn segments(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<Owner>)> {
        let mut out = Vec::new();
        let mut b = start;
        let mut idx = self.runs.partition_point(|r| r.end() <= start);
        while b < end {
            match self.runs.get(idx) {
                Some(r) if r.start <= b => {
                    let e = r.end().min(end);
                    out.push((b, e, Some(r.owner.advance(b - r.start))));
                    b = e;
                    idx += 1;
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
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// True when nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
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
        assert_eq!(m.runs().len(), 2);
        assert_eq!(m.runs()[0].len, 8);
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
        assert_eq!(m.runs().len(), 2);
    }
}
