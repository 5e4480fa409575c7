//! Writes to blocks that no committed metadata owns yet.
//!
//! With delayed allocation, ext4 writes a file's data before the
//! transaction that gives the blocks to the file commits. Such writes are
//! held here, per block, until their owner appears. The hold is bounded by
//! a TTL and a byte budget; what falls out is remembered as lost (bounded
//! too), so that the owner's events can say which range was not seen.

use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

use bytes::Bytes;
use gammaray_core::LostReason;

/// At most this many lost-block marks are remembered.
pub const MAX_LOST_MARKS: usize = 1 << 20;

/// One held block: the bytes written to it (`off` bytes into the block).
#[derive(Debug, Clone)]
pub struct Held {
    /// Write time.
    pub ts_ns: u64,
    /// Offset of `data` inside the block.
    pub off: u32,
    /// The bytes (a slice of the write, not a copy).
    pub data: Bytes,
    stamp: u64,
}

/// The holder.
#[derive(Debug, Default)]
pub struct Pending {
    held: HashMap<u64, Held>,
    order: VecDeque<(u64, u64)>,
    lost: HashMap<u64, LostReason>,
    bytes: u64,
    stamp: u64,
    /// Bytes that expired after the TTL.
    pub expired_bytes: u64,
    /// Bytes evicted by the budget.
    pub evicted_bytes: u64,
    /// Lost marks forgotten because of [`MAX_LOST_MARKS`].
    pub marks_dropped: u64,
}

impl Pending {
    /// Holds `data` written at `off` into unowned `block`.
    pub fn hold(&mut self, block: u64, off: u32, data: Bytes, ts_ns: u64, budget: u64) {
        self.stamp += 1;
        let len = data.len() as u64;
        let held = Held {
            ts_ns,
            off,
            data,
            stamp: self.stamp,
        };
        if let Some(old) = self.held.insert(block, held) {
            self.bytes = self.bytes.saturating_sub(old.data.len() as u64);
        }
        self.lost.remove(&block);
        self.bytes += len;
        self.order.push_back((block, self.stamp));
        while self.bytes > budget {
            if !self.evict_oldest(LostReason::UnknownBudget) {
                break;
            }
        }
        if self.order.len() > 2 * self.held.len() + 1024 {
            let held = &self.held;
            self.order
                .retain(|(b, s)| held.get(b).is_some_and(|h| h.stamp == *s));
        }
    }

    /// Expires what was written before `now_ns - ttl_ns`.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64) {
        let cutoff = now_ns.saturating_sub(ttl_ns);
        while let Some(&(b, s)) = self.order.front() {
            match self.held.get(&b) {
                Some(h) if h.stamp == s => {
                    if h.ts_ns == 0 || h.ts_ns >= cutoff {
                        return;
                    }
                    self.evict_oldest(LostReason::UnknownTtl);
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }

    fn evict_oldest(&mut self, why: LostReason) -> bool {
        while let Some((b, s)) = self.order.pop_front() {
            if self.held.get(&b).is_some_and(|h| h.stamp == s) {
                if let Some(h) = self.held.remove(&b) {
                    let n = h.data.len() as u64;
                    self.bytes = self.bytes.saturating_sub(n);
                    match why {
                        LostReason::UnknownTtl => self.expired_bytes += n,
                        _ => self.evicted_bytes += n,
                    }
                    self.mark_lost(b, why);
                }
                return true;
            }
        }
        false
    }

    /// `block` was written but its data is not kept (data-drop policy):
    /// forget any held copy and remember it as lost.
    pub fn drop_block(&mut self, block: u64, why: LostReason) {
        let _ = self.take(block);
        self.mark_lost(block, why);
    }

    fn mark_lost(&mut self, block: u64, why: LostReason) {
        if self.lost.len() >= MAX_LOST_MARKS {
            self.marks_dropped += 1;
            return;
        }
        self.lost.insert(block, why);
    }

    /// The owner of `block` appeared: returns what was held for it, or why
    /// it was lost.
    pub fn take(&mut self, block: u64) -> (Option<Held>, Option<LostReason>) {
        let held = self.held.remove(&block);
        if let Some(h) = &held {
            self.bytes = self.bytes.saturating_sub(h.data.len() as u64);
        }
        (held, self.lost.remove(&block))
    }

    /// Forgets `block` (it became metadata, or was discarded).
    pub fn forget(&mut self, block: u64) {
        let _ = self.take(block);
    }

    /// Forgets blocks `[start, end)` (a discard).
    pub fn forget_range(&mut self, start: u64, end: u64) {
        if end.saturating_sub(start) > (self.held.len() + self.lost.len()) as u64 {
            let mut freed = 0u64;
            self.held.retain(|b, h| {
                let keep = !(start..end).contains(b);
                if !keep {
                    freed += h.data.len() as u64;
                }
                keep
            });
            self.bytes = self.bytes.saturating_sub(freed);
            self.lost.retain(|b, _| !(start..end).contains(b));
        } else {
            for b in start..end {
                self.forget(b);
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_evicts_oldest_and_marks_it_lost() {
        let mut p = Pending::default();
        p.hold(1, 0, Bytes::from(vec![1u8; 100]), 0, 250);
        p.hold(2, 0, Bytes::from(vec![2u8; 100]), 0, 250);
        p.hold(3, 0, Bytes::from(vec![3u8; 100]), 0, 250);
        assert_eq!(p.bytes(), 200);
        let (h, l) = p.take(1);
        assert!(h.is_none());
        assert_eq!(l, Some(LostReason::UnknownBudget));
        let (h, l) = p.take(3);
        assert_eq!(h.map(|h| h.data.len()), Some(100));
        assert_eq!(l, None);
        assert_eq!(p.evicted_bytes, 100);
    }

    #[test]
    fn ttl_expires_old_writes_only() {
        let mut p = Pending::default();
        p.hold(1, 0, Bytes::from_static(b"a"), 1_000, u64::MAX);
        p.hold(2, 0, Bytes::from_static(b"b"), 5_000, u64::MAX);
        p.expire(6_000, 2_000);
        assert_eq!(p.take(1).1, Some(LostReason::UnknownTtl));
        assert!(p.take(2).0.is_some());
    }

    #[test]
    fn rewriting_a_block_keeps_one_copy() {
        let mut p = Pending::default();
        for _ in 0..10_000 {
            p.hold(7, 0, Bytes::from_static(b"xy"), 0, 1 << 20);
        }
        assert_eq!(p.bytes(), 2);
        assert!(p.order.len() < 3000);
    }
}
