//! ext2/3 block maps: 12 direct pointers in `i_block`, then one indirect,
//! one double- and one triple-indirect block, each a block of `u32`
//! physical block numbers (0 = hole).

use gammaray_core::{Error, Result};

use crate::bytes::le32;

/// Direct pointers in `i_block`.
pub const EXT4_NDIR_BLOCKS: usize = 12;
/// Index in `i_block` of the indirect pointer.
pub const EXT4_IND_BLOCK: usize = 12;
/// Index of the double-indirect pointer.
pub const EXT4_DIND_BLOCK: usize = 13;
/// Index of the triple-indirect pointer.
pub const EXT4_TIND_BLOCK: usize = 14;

/// A validated indirect block.
#[derive(Debug, Clone, Copy)]
pub struct IndirectBlock<'a> {
    body: &'a [u8],
}

impl<'a> IndirectBlock<'a> {
    /// Wraps one block; it must be exactly `block_size` bytes long.
    pub fn from_bytes(b: &'a [u8], block_size: usize, offset: u64) -> Result<Self> {
        if b.len() != block_size || block_size & 3 != 0 {
            return Err(Error::corrupt(
                "ext4 indirect block",
                offset,
                format!("{} bytes, expected {block_size}", b.len()),
            ));
        }
        Ok(IndirectBlock { body: b })
    }

    /// `(index, physical block)` of every non-zero pointer.
    pub fn pointers(&self) -> impl Iterator<Item = (u64, u32)> + 'a {
        self.body.chunks_exact(4).enumerate().filter_map(|(i, c)| {
            let p = le32(c, 0);
            (p != 0).then_some((i as u64, p))
        })
    }
}

/// The direct and indirect pointers of an `i_block` block map:
/// `(i_block index, physical block)` for every non-zero pointer.
pub fn root_pointers(i_block: &[u8]) -> impl Iterator<Item = (usize, u32)> + '_ {
    i_block
        .chunks_exact(4)
        .take(EXT4_TIND_BLOCK + 1)
        .enumerate()
        .filter_map(|(i, c)| {
            let p = le32(c, 0);
            (p != 0).then_some((i, p))
        })
}

/// First logical block mapped through the `i_block` slot `slot` (12, 13,
/// 14), with `per` pointers per block; and the logical blocks each pointer
/// of that slot's top block covers.
pub fn slot_span(slot: usize, per: u64) -> (u64, u64) {
    let n = EXT4_NDIR_BLOCKS as u64;
    let p2 = per.saturating_mul(per);
    match slot {
        EXT4_IND_BLOCK => (n, 1),
        EXT4_DIND_BLOCK => (n.saturating_add(per), per),
        _ => (n.saturating_add(per).saturating_add(p2), p2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_holes_and_rejects_short_blocks() {
        let mut b = vec![0u8; 1024];
        b[8..12].copy_from_slice(&77u32.to_le_bytes());
        let ib = IndirectBlock::from_bytes(&b, 1024, 0).unwrap();
        assert_eq!(ib.pointers().collect::<Vec<_>>(), vec![(2, 77)]);
        assert!(IndirectBlock::from_bytes(&b[..1000], 1024, 0).is_err());
    }

    #[test]
    fn slot_spans() {
        assert_eq!(slot_span(12, 256), (12, 1));
        assert_eq!(slot_span(13, 256), (268, 256));
        assert_eq!(slot_span(14, 256), (268 + 65536, 65536));
    }
}
