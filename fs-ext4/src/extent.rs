//! Extent-tree nodes: a 12-byte `ext4_extent_header` followed by index
//! entries (`ext4_extent_idx`, interior nodes) or extents (`ext4_extent`,
//! leaves). The root sits in `i_block`; deeper nodes fill whole blocks.

use gammaray_core::{Error, Result};

use crate::bytes::{join64, le16, le32};

/// `eh_magic`.
pub const EXT4_EXT_MAGIC: u16 = 0xF30A;
/// Deepest tree the kernel builds (`EXT4_MAX_EXTENT_DEPTH`); deeper trees
/// are corrupt, and the cap bounds how many levels a crawl walks.
pub const MAX_EXTENT_DEPTH: u16 = 5;
/// Size of the header and of each entry.
pub const ENTRY_SIZE: usize = 12;
/// `ee_len` above this marks an unwritten (preallocated) extent.
pub const EXT_INIT_MAX_LEN: u16 = 32768;

/// One entry of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentEntry {
    /// Interior node: logical blocks from `ei_block` live under `ei_leaf`.
    Index {
        /// First logical block covered.
        ei_block: u32,
        /// Physical block of the child node.
        ei_leaf: u64,
    },
    /// Leaf: `len` blocks from logical `ee_block` at physical `ee_start`.
    Extent {
        /// First logical block.
        ee_block: u32,
        /// Number of blocks (1..=32768).
        len: u16,
        /// First physical block.
        ee_start: u64,
        /// Preallocated, reads as zeroes.
        unwritten: bool,
    },
}

/// A validated extent-tree node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentNode<'a> {
    /// `eh_entries`.
    pub eh_entries: u16,
    /// `eh_max`.
    pub eh_max: u16,
    /// `eh_depth`: 0 for leaves.
    pub eh_depth: u16,
    body: &'a [u8],
}

impl<'a> ExtentNode<'a> {
    /// Parses a node from `b` (the 60 bytes of `i_block`, or one block).
    /// `offset` is its byte offset on the device.
    pub fn from_bytes(b: &'a [u8], offset: u64) -> Result<Self> {
        let bad = |detail: String| Error::corrupt("ext4 extent node", offset, detail);
        if b.len() < ENTRY_SIZE {
            return Err(bad(format!("{} bytes, shorter than the header", b.len())));
        }
        let magic = le16(b, 0);
        if magic != EXT4_EXT_MAGIC {
            return Err(bad(format!(
                "eh_magic {magic:#06x}, expected {EXT4_EXT_MAGIC:#06x}"
            )));
        }
        let eh_entries = le16(b, 2);
        let eh_max = le16(b, 4);
        let eh_depth = le16(b, 6);
        if eh_depth > MAX_EXTENT_DEPTH {
            return Err(bad(format!(
                "eh_depth {eh_depth} above the maximum {MAX_EXTENT_DEPTH}"
            )));
        }
        let room = (b.len() / ENTRY_SIZE).saturating_sub(1);
        if usize::from(eh_max) > room || eh_entries > eh_max {
            return Err(bad(format!(
                "eh_entries {eh_entries} / eh_max {eh_max} do not fit {room} slots"
            )));
        }
        let end = ENTRY_SIZE.saturating_mul(usize::from(eh_entries).saturating_add(1));
        let body = b.get(ENTRY_SIZE..end).unwrap_or(&[]);
        Ok(ExtentNode {
            eh_entries,
            eh_max,
            eh_depth,
            body,
        })
    }

    /// The node's entries, in on-disk order.
    pub fn entries(&self) -> impl Iterator<Item = ExtentEntry> + 'a {
        let leaf = self.eh_depth == 0;
        self.body.chunks_exact(ENTRY_SIZE).map(move |e| {
            if leaf {
                let raw_len = le16(e, 4);
                let (len, unwritten) = if raw_len > EXT_INIT_MAX_LEN {
                    (raw_len - EXT_INIT_MAX_LEN, true)
                } else {
                    (raw_len, false)
                };
                ExtentEntry::Extent {
                    ee_block: le32(e, 0),
                    len,
                    ee_start: join64(le32(e, 8), u32::from(le16(e, 6))),
                    unwritten,
                }
            } else {
                ExtentEntry::Index {
                    ei_block: le32(e, 0),
                    ei_leaf: join64(le32(e, 4), u32::from(le16(e, 8))),
                }
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a node: header then entries, padded to `size`.
    pub(crate) fn node(depth: u16, entries: &[[u8; 12]], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[0..2].copy_from_slice(&EXT4_EXT_MAGIC.to_le_bytes());
        b[2..4].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        b[4..6].copy_from_slice(&((size / 12 - 1) as u16).to_le_bytes());
        b[6..8].copy_from_slice(&depth.to_le_bytes());
        for (i, e) in entries.iter().enumerate() {
            b[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
        }
        b
    }

    pub(crate) fn extent(logical: u32, len: u16, start: u64) -> [u8; 12] {
        let mut e = [0u8; 12];
        e[0..4].copy_from_slice(&logical.to_le_bytes());
        e[4..6].copy_from_slice(&len.to_le_bytes());
        e[6..8].copy_from_slice(&((start >> 32) as u16).to_le_bytes());
        e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
        e
    }

    pub(crate) fn index(logical: u32, leaf: u64) -> [u8; 12] {
        let mut e = [0u8; 12];
        e[0..4].copy_from_slice(&logical.to_le_bytes());
        e[4..8].copy_from_slice(&(leaf as u32).to_le_bytes());
        e[8..10].copy_from_slice(&((leaf >> 32) as u16).to_le_bytes());
        e
    }

    #[test]
    fn leaf_with_high_blocks_and_unwritten_extent() {
        let b = node(
            0,
            &[extent(0, 4, (5 << 32) + 7), extent(10, 32768 + 3, 99)],
            60,
        );
        let n = ExtentNode::from_bytes(&b, 0).unwrap();
        let e: Vec<_> = n.entries().collect();
        assert_eq!(
            e[0],
            ExtentEntry::Extent {
                ee_block: 0,
                len: 4,
                ee_start: (5 << 32) + 7,
                unwritten: false
            }
        );
        assert_eq!(
            e[1],
            ExtentEntry::Extent {
                ee_block: 10,
                len: 3,
                ee_start: 99,
                unwritten: true
            }
        );
    }

    #[test]
    fn depth_100_is_corrupt() {
        let b = node(100, &[index(0, 5)], 60);
        let err = ExtentNode::from_bytes(&b, 4242).unwrap_err();
        assert!(err.to_string().contains("eh_depth 100"), "{err}");
        assert!(err.to_string().contains("4242"), "{err}");
    }

    #[test]
    fn too_many_entries_is_corrupt() {
        let mut b = node(0, &[], 60);
        b[2..4].copy_from_slice(&9u16.to_le_bytes());
        b[4..6].copy_from_slice(&9u16.to_le_bytes());
        assert!(ExtentNode::from_bytes(&b, 0).is_err());
        assert!(ExtentNode::from_bytes(&b[..5], 0).is_err());
    }
}
