//! Following the jbd2 journal as the guest writes it: where the next
//! transaction starts, and which transaction a commit block closes.

use std::collections::BTreeMap;

use gammaray_core::blockmap::Owner;
use gammaray_core::{BlockDevice, Error, FsModel, Result};

use super::counters::Counters;
use crate::journal::{self, BlockKind, JournalSuperblock, Transaction};

/// A commit more than this many transactions ahead of the last one is
/// not followed.
const MAX_SEQUENCE_GAP: u32 = 1 << 16;

/// First blocks remembered for transactions not yet committed.
const MAX_OPEN_TXNS: usize = 256;

/// The journal's state as seen from its writes.
#[derive(Debug)]
pub struct JournalTracker {
    jsb: JournalSuperblock,
    /// `(first logical, first physical, count)`, by logical block.
    map: Vec<(u64, u64, u64)>,
    bs: u64,
    /// The last transaction applied.
    last: Option<u32>,
    /// Where the transaction after `last` starts.
    next_start: Option<u32>,
    /// First descriptor or revoke block seen per open transaction.
    first_seen: BTreeMap<u32, u32>,
}

/// `a` comes after `b` in jbd2's wrapping sequence space.
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl JournalTracker {
    /// Reads the journal superblock through the model's journal mapping.
    pub fn new(dev: &dyn BlockDevice, model: &FsModel, bs: u64) -> Result<Self> {
        let mut map: Vec<(u64, u64, u64)> = model
            .blocks
            .runs()
            .filter_map(|r| match r.owner {
                Owner::Journal { logical } => Some((logical, r.start, r.len)),
                _ => None,
            })
            .collect();
        map.sort_unstable();
        let mut t = JournalTracker {
            jsb: JournalSuperblock {
                block_size: 0,
                maxlen: 0,
                first: 0,
                sequence: 0,
                start: 0,
                compat: 0,
                incompat: 0,
                ro_compat: 0,
                uuid: [0; 16],
                num_fc_blocks: 0,
                csum_seed: 0,
            },
            map,
            bs,
            last: None,
            next_start: None,
            first_seen: BTreeMap::new(),
        };
        let p0 = t
            .phys(0)
            .ok_or_else(|| Error::corrupt("jbd2 superblock", 0, "journal block 0 not mapped"))?;
        let mut b = vec![0u8; bs as usize];
        dev.read_at(p0 * bs, &mut b)?;
        t.jsb = JournalSuperblock::from_bytes(&b, p0 * bs)?;
        if u64::from(t.jsb.block_size) != bs {
            return Err(Error::Unsupported {
                structure: "jbd2 superblock",
                detail: format!(
                    "journal block size {} differs from the file system's {bs}",
                    t.jsb.block_size
                ),
            });
        }
        t.resync_from_sb();
        Ok(t)
    }

    fn resync_from_sb(&mut self) {
        if self.jsb.start == 0 {
            // Empty log: the next transaction starts at s_first.
            self.next_start = Some(self.jsb.first);
            self.last = Some(self.jsb.sequence.wrapping_sub(1));
        } else {
            self.next_start = None;
        }
    }

    /// The journal superblock as last read.
    pub fn superblock(&self) -> &JournalSuperblock {
        &self.jsb
    }

    /// Starts following the log after the committed transactions that
    /// recovery replays ([`crate::recovery::scan_log`]): `last` is the
    /// last of them (`s_sequence - 1` when none), `next_start` the journal
    /// block where the next transaction starts.
    pub fn seed(&mut self, last: u32, next_start: u32) {
        self.last = Some(last);
        self.next_start = Some(next_start);
    }

    /// Physical block of journal logical block `l`.
    pub fn phys(&self, l: u64) -> Option<u64> {
        let idx = self.map.partition_point(|r| r.0 <= l);
        let &(ls, ps, n) = self.map.get(idx.checked_sub(1)?)?;
        (l < ls + n).then(|| ps + (l - ls))
    }

    /// Journal block `logical` (at `phys`) was written; `dev` already holds
    /// it. Returns the transaction it committed, if it is a commit block.
    pub fn on_block(
        &mut self,
        dev: &dyn BlockDevice,
        phys: u64,
        logical: u64,
        c: &mut Counters,
    ) -> Option<Transaction> {
        let bs = self.bs;
        let mut b = vec![0u8; bs as usize];
        dev.read_at(phys * bs, &mut b).ok()?;
        let l = u32::try_from(logical).ok()?;
        if l == 0 {
            match JournalSuperblock::from_bytes(&b, phys * bs) {
                Ok(jsb) if u64::from(jsb.block_size) == bs => {
                    let was_empty = self.jsb.start == 0;
                    self.jsb = jsb;
                    if jsb.start == 0 || was_empty {
                        self.resync_from_sb();
                    } else if self
                        .last
                        .is_some_and(|last| after(jsb.sequence, last.wrapping_add(1)))
                    {
                        // The log restarts past every transaction we know
                        // (jbd2 after a recovery: the next sequence is
                        // one more than the last replayed one's successor,
                        // from s_first): follow it from there.
                        self.last = Some(jsb.sequence.wrapping_sub(1));
                        self.next_start = Some(jsb.start);
                    }
                }
                Ok(_) | Err(_) => c.anomalies += 1,
            }
            return None;
        }
        let h = journal::header(&b)?;
        match h.kind {
            BlockKind::Descriptor | BlockKind::Revoke => {
                if self.first_seen.len() >= MAX_OPEN_TXNS {
                    self.first_seen.pop_first();
                }
                self.first_seen.entry(h.sequence).or_insert(l);
                None
            }
            BlockKind::Commit => self.on_commit(dev, h.sequence, l, c),
            BlockKind::SuperblockV1 | BlockKind::SuperblockV2 => None,
        }
    }

    fn on_commit(
        &mut self,
        dev: &dyn BlockDevice,
        seq: u32,
        commit: u32,
        c: &mut Counters,
    ) -> Option<Transaction> {
        if let Some(last) = self.last {
            if !after(seq, last) {
                c.journal_stale_commits += 1;
                return None;
            }
            if seq.wrapping_sub(last) > MAX_SEQUENCE_GAP {
                // jbd2 numbers transactions one by one: a commit far ahead
                // is forged (or garbage); following it would make every
                // real commit after it look stale.
                c.anomalies += 1;
                return None;
            }
        }
        let mut starts: Vec<u32> = Vec::new();
        if let Some(s) = self.next_start {
            starts.push(s);
        }
        if let Some(&s) = self.first_seen.get(&seq) {
            if !starts.contains(&s) {
                starts.push(s);
            }
        }
        // A commit with nothing logged (only a commit block).
        if !starts.contains(&commit) {
            starts.push(commit);
        }
        let bs = self.bs;
        let map = &self.map;
        let phys = |l: u32| -> Option<u64> {
            let l = u64::from(l);
            let idx = map.partition_point(|r| r.0 <= l);
            let &(ls, ps, n) = map.get(idx.checked_sub(1)?)?;
            (l < ls + n).then(|| ps + (l - ls))
        };
        let mut read = |l: u32, buf: &mut [u8]| -> Result<()> {
            let p = phys(l).ok_or_else(|| {
                Error::corrupt("jbd2 journal", 0, format!("log block {l} not mapped"))
            })?;
            dev.read_at(p * bs, buf)
        };
        let mut result = None;
        let mut last_err = None;
        for s in starts {
            match journal::walk_transaction(&self.jsb, s, seq, commit, &mut read) {
                Ok(t) => {
                    result = Some(t);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        self.first_seen.retain(|&s, _| after(s, seq));
        self.next_start = Some(self.jsb.next(commit));
        self.last = Some(seq);
        match result {
            Some(t) => {
                c.journal_revokes += t.revoked.len() as u64;
                c.journal_bad_checksums +=
                    u64::from(t.bad_block_checksums) + u64::from(t.bad_tag_checksums);
                Some(t)
            }
            None => {
                c.journal_txns_broken += 1;
                if let Some(e) = last_err {
                    tracing::warn!("jbd2 transaction {seq} not applied: {e}");
                }
                None
            }
        }
    }
}
