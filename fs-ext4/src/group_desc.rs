//! Block group descriptors (32 bytes, or `s_desc_size` with 64bit) and
//! where the descriptor table and its backups lie.

use gammaray_core::{Error, Result};

use crate::bytes::{join32, join64, le16, le32};
use crate::csum::{crc16, crc32c_raw};
use crate::superblock::{incompat, ro_compat, Superblock};

/// `bg_flags`: the inode table and bitmap are not initialised.
pub const EXT4_BG_INODE_UNINIT: u16 = 0x1;
/// `bg_flags`: the block bitmap is not initialised.
pub const EXT4_BG_BLOCK_UNINIT: u16 = 0x2;

/// One validated group descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupDesc {
    /// Block bitmap location.
    pub bg_block_bitmap: u64,
    /// Inode bitmap location.
    pub bg_inode_bitmap: u64,
    /// First block of the inode table.
    pub bg_inode_table: u64,
    /// Group flags (`EXT4_BG_*`).
    pub bg_flags: u16,
    /// Unused inodes at the end of the table (with group checksums).
    pub bg_itable_unused: u32,
    /// `bg_checksum` matches (always true without group checksums). When
    /// false, `bg_flags` and `bg_itable_unused` are not trusted.
    pub csum_ok: bool,
}

impl GroupDesc {
    /// Parses one descriptor of `desc_size` bytes (32 without 64bit).
    /// `offset` is its byte offset on the device.
    pub fn from_bytes(b: &[u8], sb: &Superblock, group: u64, offset: u64) -> Result<Self> {
        let want = usize::from(sb.s_desc_size);
        if b.len() < want || want < 32 {
            return Err(Error::corrupt(
                "ext4 group descriptor",
                offset,
                format!("{} bytes, expected {want}", b.len()),
            ));
        }
        let wide = sb.is_64bit() && want >= 64;
        let hi32 = |off: usize| if wide { le32(b, off) } else { 0 };
        let hi16 = |off: usize| if wide { le16(b, off) } else { 0 };
        let gd = GroupDesc {
            bg_block_bitmap: join64(le32(b, 0x0), hi32(0x20)),
            bg_inode_bitmap: join64(le32(b, 0x4), hi32(0x24)),
            bg_inode_table: join64(le32(b, 0x8), hi32(0x28)),
            bg_flags: le16(b, 0x12),
            bg_itable_unused: join32(le16(b, 0x1C), hi16(0x32)),
            csum_ok: checksum_ok(b.get(..want).unwrap_or(&[]), sb, group),
        };
        let blocks = sb.s_blocks_count;
        for (name, v) in [
            ("bg_block_bitmap", gd.bg_block_bitmap),
            ("bg_inode_bitmap", gd.bg_inode_bitmap),
            ("bg_inode_table", gd.bg_inode_table),
        ] {
            if v == 0 || v >= blocks {
                return Err(Error::corrupt(
                    "ext4 group descriptor",
                    offset,
                    format!("{name} {v} outside 1..{blocks}"),
                ));
            }
        }
        Ok(gd)
    }

    /// How many inodes of this group's table may be in use: all of them,
    /// fewer when checksummed descriptors say the tail is unused, none when
    /// the table is uninitialised.
    pub fn used_inodes(&self, sb: &Superblock) -> u32 {
        let ipg = sb.s_inodes_per_group;
        if !sb.has_group_csums() {
            return ipg;
        }
        if !self.csum_ok {
            return ipg;
        }
        if self.bg_flags & EXT4_BG_INODE_UNINIT != 0 {
            return 0;
        }
        ipg.saturating_sub(self.bg_itable_unused)
    }
}

/// Offset of `bg_checksum` in a descriptor.
const BG_CHECKSUM: usize = 0x1E;

/// Verifies `bg_checksum` of descriptor `d` (exactly `s_desc_size` bytes)
/// of `group`: crc32c with metadata_csum, crc16 with gdt_csum, else true.
fn checksum_ok(d: &[u8], sb: &Superblock, group: u64) -> bool {
    let stored = le16(d, BG_CHECKSUM);
    // Group numbers are 32-bit on disk.
    let g = (group as u32).to_le_bytes();
    let head = d.get(..BG_CHECKSUM).unwrap_or(&[]);
    let tail = d.get(BG_CHECKSUM + 2..).unwrap_or(&[]);
    if sb.has_ro_compat(ro_compat::METADATA_CSUM) {
        let mut crc = crc32c_raw(sb.csum_seed, &g);
        crc = crc32c_raw(crc, head);
        crc = crc32c_raw(crc, &[0, 0]);
        crc = crc32c_raw(crc, tail);
        (crc & 0xFFFF) as u16 == stored
    } else if sb.has_ro_compat(ro_compat::GDT_CSUM) {
        let mut crc = crc16(!0, &sb.s_uuid);
        crc = crc16(crc, &g);
        crc = crc16(crc, head);
        if sb.is_64bit() {
            crc = crc16(crc, tail);
        }
        crc == stored
    } else {
        true
    }
}

/// Layout facts derived from the superblock.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Block size in bytes.
    pub block_size: u64,
    /// Descriptors per block.
    pub descs_per_block: u64,
    /// Number of groups.
    pub groups: u64,
    /// Blocks the whole descriptor table takes.
    pub gdt_blocks: u64,
}

impl Layout {
    /// Computes the layout.
    pub fn new(sb: &Superblock) -> Self {
        let block_size = u64::from(sb.block_size());
        let descs_per_block = (block_size / u64::from(sb.s_desc_size.max(1))).max(1);
        let groups = sb.group_count();
        Layout {
            block_size,
            descs_per_block,
            groups,
            gdt_blocks: groups.div_ceil(descs_per_block),
        }
    }

    /// The block holding the primary superblock (byte 1024): 1 with
    /// 1 KiB blocks, else 0. The descriptor table follows it.
    pub fn sb_block(&self) -> u64 {
        crate::superblock::SUPERBLOCK_OFFSET / self.block_size.max(1)
    }

    /// First block of group `g`.
    pub fn group_first_block(&self, sb: &Superblock, g: u64) -> u64 {
        u64::from(sb.s_first_data_block)
            .saturating_add(g.saturating_mul(u64::from(sb.s_blocks_per_group)))
    }

    /// The block holding descriptor block `i` (0-based index into the
    /// table) in its primary copy.
    pub fn primary_desc_block(&self, sb: &Superblock, i: u64) -> u64 {
        let first_meta = u64::from(sb.s_first_meta_bg);
        if !sb.has_incompat(incompat::META_BG) || i < first_meta {
            return self.sb_block().saturating_add(1).saturating_add(i);
        }
        // meta_bg: descriptor block i lives in the first group of meta
        // group i, after that group's superblock backup if it has one.
        let g = i.saturating_mul(self.descs_per_block);
        self.group_first_block(sb, g)
            .saturating_add(u64::from(sb.group_has_super(g)))
    }

    /// Every run of descriptor blocks (primary and backups, plus reserved
    /// GDT blocks): `(group, first block, count)`.
    pub fn desc_runs(&self, sb: &Superblock) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        let meta = sb.has_incompat(incompat::META_BG);
        let old_blocks = if meta {
            self.gdt_blocks.min(u64::from(sb.s_first_meta_bg))
        } else {
            self.gdt_blocks
        };
        let reserved = u64::from(sb.s_reserved_gdt_blocks);
        for g in 0..self.groups {
            if sb.group_has_super(g) {
                let first = self.group_first_block(sb, g).saturating_add(1);
                let first = if g == 0 {
                    self.sb_block().saturating_add(1)
                } else {
                    first
                };
                out.push((g, first, old_blocks.saturating_add(reserved)));
            }
        }
        if meta {
            let dpb = self.descs_per_block;
            let mut i = u64::from(sb.s_first_meta_bg);
            while i < self.gdt_blocks {
                let first_g = i.saturating_mul(dpb);
                for g in [
                    first_g,
                    first_g.saturating_add(1),
                    first_g.saturating_add(dpb - 1),
                ] {
                    if g < self.groups {
                        let blk = self
                            .group_first_block(sb, g)
                            .saturating_add(u64::from(sb.group_has_super(g)));
                        out.push((g, blk, 1));
                    }
                }
                i += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superblock::tests::sample;

    #[test]
    fn descriptor_pointing_past_the_end_is_corrupt() {
        let sb = Superblock::from_bytes(&sample(), 1024).unwrap();
        let mut d = [0u8; 32];
        d[0..4].copy_from_slice(&10u32.to_le_bytes());
        d[4..8].copy_from_slice(&11u32.to_le_bytes());
        d[8..12].copy_from_slice(&12u32.to_le_bytes());
        let gd = GroupDesc::from_bytes(&d, &sb, 0, 4096).unwrap();
        assert_eq!(gd.bg_inode_table, 12);
        d[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(GroupDesc::from_bytes(&d, &sb, 0, 4096).is_err());
        assert!(GroupDesc::from_bytes(&d[..16], &sb, 0, 4096).is_err());
    }
}
