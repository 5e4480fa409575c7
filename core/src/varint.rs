//! LEB128 varints and zigzag deltas: the column encoding of the index.

use crate::error::{Error, Result};

/// Appends `v` as an unsigned LEB128 varint.
pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a signed value, zigzag-encoded.
pub fn put_signed(out: &mut Vec<u8>, v: i64) {
    put(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads varints from a byte column, failing (not panicking) on truncation.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    column: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`, named `column` in errors.
    pub fn new(bytes: &'a [u8], column: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            column,
        }
    }

    fn err(&self, detail: &str) -> Error {
        Error::Index {
            path: String::new(),
            detail: format!("column {}: {detail} at byte {}", self.column, self.pos),
        }
    }

    /// The next unsigned varint.
    pub fn next_u64(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or_else(|| self.err("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// The next zigzag-encoded signed varint.
    pub fn next_signed(&mut self) -> Result<i64> {
        let u = self.next_u64()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// The next `n` raw bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.err("truncated bytes"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes() {
        let mut b = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            put(&mut b, v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            put_signed(&mut b, v);
        }
        let mut r = Reader::new(&b, "t");
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(r.next_u64().unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(r.next_signed().unwrap(), v);
        }
        assert!(r.next_u64().is_err());
    }
}
