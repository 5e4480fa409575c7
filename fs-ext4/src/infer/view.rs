//! Metadata as the guest sees it: the disk, with the committed journal
//! copies that are not yet written home laid over their home blocks, and
//! optionally a transaction's blocks (old or new contents) on top.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use gammaray_core::{BlockDevice, Result};

/// Above this many journal copies kept in memory (because their journal
/// block was reused before the home write came), the oldest are dropped.
pub const MAX_MATERIALIZED: usize = 16_384;

const JBD2_MAGIC_BE: [u8; 4] = 0xC03B_3998u32.to_be_bytes();

/// Where the newest committed copy of a home block is.
#[derive(Debug, Clone)]
enum Copy {
    /// In the journal, at this physical block (escaped: first 4 bytes must
    /// be restored to the jbd2 magic).
    Journal { phys: u64, escaped: bool },
    /// In memory, because its journal block has been reused.
    Mem(Arc<[u8]>),
}

/// Committed but not yet checkpointed metadata blocks.
#[derive(Debug, Default)]
pub struct JournalOverlay {
    by_home: HashMap<u64, Copy>,
    by_phys: HashMap<u64, u64>,
    materialized: usize,
    /// Copies dropped because of [`MAX_MATERIALIZED`].
    pub dropped: u64,
}

impl JournalOverlay {
    /// Records that the newest copy of `home` is journal block `phys`.
    pub fn insert(&mut self, home: u64, phys: u64, escaped: bool) {
        self.remove(home);
        if let Some(old_home) = self.by_phys.insert(phys, home) {
            if old_home != home {
                self.by_home.remove(&old_home);
            }
        }
        self.by_home.insert(home, Copy::Journal { phys, escaped });
    }

    /// Forgets `home` (written home, or revoked).
    pub fn remove(&mut self, home: u64) {
        match self.by_home.remove(&home) {
            Some(Copy::Journal { phys, .. }) => {
                self.by_phys.remove(&phys);
            }
            Some(Copy::Mem(_)) => self.materialized = self.materialized.saturating_sub(1),
            None => {}
        }
    }

    /// True if `home` has a pending copy.
    pub fn contains(&self, home: u64) -> bool {
        self.by_home.contains_key(&home)
    }

    /// Number of pending copies.
    pub fn len(&self) -> usize {
        self.by_home.len()
    }

    /// Journal block `phys` is about to be overwritten: keep the copy it
    /// holds (read from `dev`, the disk before the write) in memory.
    pub fn before_journal_write(&mut self, dev: &dyn BlockDevice, phys: u64, bs: u64) {
        let Some(home) = self.by_phys.remove(&phys) else {
            return;
        };
        let Some(Copy::Journal { escaped, .. }) = self.by_home.get(&home).cloned() else {
            return;
        };
        if self.materialized >= MAX_MATERIALIZED {
            self.by_home.remove(&home);
            self.dropped += 1;
            return;
        }
        let Ok(n) = usize::try_from(bs) else { return };
        let mut buf = vec![0u8; n];
        if dev.read_at(phys.saturating_mul(bs), &mut buf).is_err() {
            self.by_home.remove(&home);
            self.dropped += 1;
            return;
        }
        if escaped {
            unescape(&mut buf);
        }
        self.by_home.insert(home, Copy::Mem(buf.into()));
        self.materialized += 1;
    }

    fn read_copy(
        &self,
        dev: &dyn BlockDevice,
        home: u64,
        bs: u64,
        out: &mut [u8],
    ) -> Option<Result<()>> {
        match self.by_home.get(&home)? {
            Copy::Mem(b) => {
                let n = out.len().min(b.len());
                if let (Some(d), Some(s)) = (out.get_mut(..n), b.get(..n)) {
                    d.copy_from_slice(s);
                }
                Some(Ok(()))
            }
            Copy::Journal { phys, escaped } => {
                let r = dev.read_at(phys.saturating_mul(bs), out);
                if r.is_ok() && *escaped {
                    unescape(out);
                }
                Some(r)
            }
        }
    }
}

/// Restores the jbd2 magic at the start of an escaped journal copy.
pub fn unescape(b: &mut [u8]) {
    if let Some(h) = b.get_mut(..4) {
        h.copy_from_slice(&JBD2_MAGIC_BE);
    }
}

/// A [`BlockDevice`] reading metadata as of one moment: `blocks` (a
/// transaction's old or new contents) first, then the journal overlay,
/// then the disk.
pub struct View<'a> {
    /// The disk.
    pub dev: &'a dyn BlockDevice,
    /// Committed journal copies.
    pub journal: &'a JournalOverlay,
    /// Whole blocks that override both.
    pub blocks: Option<&'a HashMap<u64, Arc<[u8]>>>,
    /// Block size.
    pub bs: u64,
}

impl View<'_> {
    fn overrides(&self, block: u64) -> bool {
        self.blocks.is_some_and(|m| m.contains_key(&block)) || self.journal.contains(block)
    }
}

impl BlockDevice for View<'_> {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        gammaray_core::device::check_range(offset, buf.len() as u64, self.size())?;
        let none = self.blocks.is_none_or(HashMap::is_empty) && self.journal.len() == 0;
        if none || self.bs == 0 {
            return self.dev.read_at(offset, buf);
        }
        let bs = self.bs;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        // Plain stretch not yet read: [plain, pos).
        let mut plain = offset;
        let mut block_buf: Vec<u8> = Vec::new();
        while pos < end {
            let block = pos / bs;
            let block_end = ((block + 1) * bs).min(end);
            if self.overrides(block) {
                if plain < pos {
                    let (a, b) = ((plain - offset) as usize, (pos - offset) as usize);
                    if let Some(dst) = buf.get_mut(a..b) {
                        self.dev.read_at(plain, dst)?;
                    }
                }
                block_buf.resize(bs as usize, 0);
                if let Some(b) = self.blocks.and_then(|m| m.get(&block)) {
                    let n = block_buf.len().min(b.len());
                    block_buf[..n].copy_from_slice(&b[..n]);
                } else if let Some(r) = self.journal.read_copy(self.dev, block, bs, &mut block_buf)
                {
                    r?;
                }
                let within = (pos - block * bs) as usize;
                let n = (block_end - pos) as usize;
                let a = (pos - offset) as usize;
                if let (Some(dst), Some(src)) =
                    (buf.get_mut(a..a + n), block_buf.get(within..within + n))
                {
                    dst.copy_from_slice(src);
                }
                plain = block_end;
            }
            pos = block_end;
        }
        if plain < end {
            let a = (plain - offset) as usize;
            if let Some(dst) = buf.get_mut(a..) {
                self.dev.read_at(plain, dst)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_layers_blocks_over_journal_over_disk() {
        let mut disk = vec![0u8; 64];
        disk[48..56].copy_from_slice(&[0xC0, 0, 0, 0, 5, 5, 5, 5]);
        let mut j = JournalOverlay::default();
        j.insert(1, 6, true); // home block 1 (bytes 8..16) lives at block 6
        let mut over = HashMap::default();
        over.insert(2u64, Arc::<[u8]>::from(vec![9u8; 8]));
        let v = View {
            dev: &disk,
            journal: &j,
            blocks: Some(&over),
            bs: 8,
        };
        let mut buf = [1u8; 20];
        v.read_at(4, &mut buf).unwrap();
        assert_eq!(&buf[..4], &[0, 0, 0, 0]);
        assert_eq!(&buf[4..12], &[0xC0, 0x3B, 0x39, 0x98, 5, 5, 5, 5]);
        assert_eq!(&buf[12..20], &[9; 8]);
        // The journal block is reused: the copy survives in memory.
        j.before_journal_write(&disk, 6, 8);
        let mut disk2 = disk.clone();
        disk2[48..56].fill(7);
        let v = View {
            dev: &disk2,
            journal: &j,
            blocks: None,
            bs: 8,
        };
        let mut b = [0u8; 8];
        v.read_at(8, &mut b).unwrap();
        assert_eq!(b, [0xC0, 0x3B, 0x39, 0x98, 5, 5, 5, 5]);
        j.remove(1);
        assert_eq!(j.len(), 0);
    }
}
