//! One write (or flush, discard, ...) that a guest sent to its virtual disk.

use bytes::Bytes;

bitflags::bitflags! {
    /// What kind of request a [`DiskWrite`] is. Flags combine: a write may
    /// carry `FUA`, and a flush may come with a write (as in dm-log-writes).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct WriteFlags: u32 {
        /// A flush (cache barrier): everything before it is durable.
        const FLUSH = 1;
        /// Forced unit access: this write is durable when it completes.
        const FUA = 2;
        /// A discard (TRIM) of `len` bytes at `offset`; `data` is empty.
        const DISCARD = 4;
        /// A mark entry of a dm-log-writes trace; `data` holds its label.
        const MARK = 8;
        /// Write zeroes over `len` bytes at `offset`; `data` is empty.
        const ZEROES = 16;
    }
}

/// One request from a guest to its disk, in guest byte space.
///
/// Writes carry their bytes (`data.len() == len`). Flushes have `len == 0`.
/// Discards and write-zeroes carry a range but no data. `data` is a
/// reference-counted [`Bytes`] so that queues can hand writes on without
/// copying them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskWrite {
    /// Sequence number, increasing by one per request from one source.
    pub seq: u64,
    /// Arrival time, nanoseconds since the Unix epoch (0 when unknown, as in
    /// traces that do not record time).
    pub ts_ns: u64,
    /// Byte offset on the guest disk.
    pub offset: u64,
    /// Bytes affected.
    pub len: u64,
    /// The bytes written (empty unless this is a plain write).
    pub data: Bytes,
    /// The request's kind.
    pub flags: WriteFlags,
}

impl DiskWrite {
    /// A plain data write.
    pub fn write(seq: u64, offset: u64, data: Bytes) -> Self {
        DiskWrite {
            seq,
            ts_ns: 0,
            offset,
            len: data.len() as u64,
            data,
            flags: WriteFlags::empty(),
        }
    }

    /// A flush with no data.
    pub fn flush(seq: u64) -> Self {
        DiskWrite {
            seq,
            flags: WriteFlags::FLUSH,
            ..Default::default()
        }
    }

    /// True when the request carries bytes to apply at `offset`.
    pub fn has_data(&self) -> bool {
        !self.data.is_empty()
    }

    /// The part of this request inside `[start, start+len)`, with its offset
    /// made relative to `start` (a partition's window). Flushes and marks,
    /// which have no range, are passed on whole; requests wholly outside
    /// return `None`. The data is sliced, not copied.
    pub fn clip(&self, start: u64, len: u64) -> Option<DiskWrite> {
        if self.len == 0 {
            return Some(DiskWrite {
                offset: 0,
                ..self.clone()
            });
        }
        let end = start.saturating_add(len);
        let w_end = self.offset.saturating_add(self.len);
        let lo = self.offset.max(start);
        let hi = w_end.min(end);
        if lo >= hi {
            return None;
        }
        let data = if self.data.is_empty() {
            self.data.clone()
        } else {
            let a = usize::try_from(lo - self.offset).ok()?;
            let b = usize::try_from(hi - self.offset).ok()?;
            if b > self.data.len() {
                return None;
            }
            self.data.slice(a..b)
        };
        Some(DiskWrite {
            seq: self.seq,
            ts_ns: self.ts_ns,
            offset: lo - start,
            len: hi - lo,
            data,
            flags: self.flags,
        })
    }

    /// True for a flush (with or without data).
    pub fn is_flush(&self) -> bool {
        self.flags.contains(WriteFlags::FLUSH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_slices_and_rebases() {
        let w = DiskWrite::write(1, 1000, Bytes::from(vec![7u8; 100]));
        let c = w.clip(1050, 1000).unwrap();
        assert_eq!((c.offset, c.len, c.data.len()), (0, 50, 50));
        let c = w.clip(0, 1010).unwrap();
        assert_eq!((c.offset, c.len, c.data.len()), (1000, 10, 10));
        assert!(w.clip(2000, 10).is_none());
        assert_eq!(
            DiskWrite::flush(3).clip(5, 5).unwrap().flags,
            WriteFlags::FLUSH
        );
    }
}
