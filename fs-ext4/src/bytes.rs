//! Little-endian field readers over byte slices.
//!
//! Every reader returns 0 when the field lies outside the slice instead of
//! panicking. Structures check their length once in `from_bytes`, so inside
//! a validated structure the fallback never happens; it only keeps a bug
//! from turning into a panic on guest data.

/// Reads a `u8` at `off`.
pub(crate) fn le8(b: &[u8], off: usize) -> u8 {
    b.get(off).copied().unwrap_or(0)
}

/// Reads a little-endian `u16` at `off`.
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = off.checked_add(2).and_then(|end| b.get(off..end)) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

/// Reads a little-endian `u32` at `off`.
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = off.checked_add(4).and_then(|end| b.get(off..end)) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// `lo | hi << 32`.
pub(crate) fn join64(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// `lo | hi << 16`.
pub(crate) fn join32(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// `base + off` for byte offsets on the device (saturating: an offset that
/// does not fit only ever feeds an error message or a failing read).
pub(crate) fn at(base: u64, off: usize) -> u64 {
    base.saturating_add(u64::try_from(off).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_return_zero_outside_the_slice() {
        let b = [1u8, 2, 3, 4, 5];
        assert_eq!(le16(&b, 0), 0x0201);
        assert_eq!(le32(&b, 1), 0x0504_0302);
        assert_eq!(le32(&b, 2), 0);
        assert_eq!(le16(&b, usize::MAX), 0);
        assert_eq!(le8(&b, 5), 0);
        assert_eq!(join64(1, 2), 0x2_0000_0001);
    }
}
