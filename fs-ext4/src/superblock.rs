//! The ext2/3/4 superblock (1024 bytes at byte 1024 of the file system).

use gammaray_core::{Error, Result};

use crate::bytes::{join64, le16, le32};
use crate::csum::crc32c_raw;

/// Byte offset of the primary superblock from the start of the file system.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// Size of the superblock record.
pub const SUPERBLOCK_SIZE: usize = 1024;
/// `s_magic`.
pub const EXT4_SUPER_MAGIC: u16 = 0xEF53;

/// Largest `s_log_block_size`: the kernel supports blocks up to 64 KiB
/// (`1024 << 6`).
pub const MAX_LOG_BLOCK_SIZE: u32 = 6;
/// Largest bigalloc cluster, in blocks, as a power of two (the kernel
/// allows clusters of up to 2^16 blocks).
pub const MAX_CLUSTER_RATIO_BITS: u32 = 16;
/// Smallest on-disk inode record (the ext2 "good old" size).
pub const MIN_INODE_SIZE: u16 = 128;
/// Largest group descriptor the kernel accepts (`EXT4_MAX_DESC_SIZE`).
pub const MAX_DESC_SIZE: u16 = 1024;

/// `s_feature_compat` bits.
pub mod compat {
    /// A jbd2 journal exists (`s_journal_inum`).
    pub const HAS_JOURNAL: u32 = 0x4;
    /// Extended attributes.
    pub const EXT_ATTR: u32 = 0x8;
    /// Reserved GDT blocks for online resize (inode 7).
    pub const RESIZE_INODE: u32 = 0x10;
    /// Hashed directory indexes.
    pub const DIR_INDEX: u32 = 0x20;
    /// Backup superblocks only in the groups named by `s_backup_bgs`.
    pub const SPARSE_SUPER2: u32 = 0x200;
    /// Orphan tracking in a hidden file (`s_orphan_file_inum`).
    pub const ORPHAN_FILE: u32 = 0x1000;
}

/// `s_feature_incompat` bits.
pub mod incompat {
    /// Compressed files (never merged; not supported).
    pub const COMPRESSION: u32 = 0x1;
    /// Directory entries record the file type.
    pub const FILETYPE: u32 = 0x2;
    /// The journal needs recovery.
    pub const RECOVER: u32 = 0x4;
    /// This is an external journal device, not a file system.
    pub const JOURNAL_DEV: u32 = 0x8;
    /// Meta block groups (group descriptors spread over the disk).
    pub const META_BG: u32 = 0x10;
    /// Files use extent trees.
    pub const EXTENTS: u32 = 0x40;
    /// Block numbers above 2^32; 64-byte group descriptors.
    pub const BIT64: u32 = 0x80;
    /// Multiple mount protection.
    pub const MMP: u32 = 0x100;
    /// Flexible block groups.
    pub const FLEX_BG: u32 = 0x200;
    /// Large extended attributes in inodes.
    pub const EA_INODE: u32 = 0x400;
    /// Data in directory entries (Lustre; not supported).
    pub const DIRDATA: u32 = 0x1000;
    /// Checksum seed in the superblock.
    pub const CSUM_SEED: u32 = 0x2000;
    /// Directories over 2 GiB and 3-level htrees.
    pub const LARGEDIR: u32 = 0x4000;
    /// Small files and directories stored in the inode.
    pub const INLINE_DATA: u32 = 0x8000;
    /// Encrypted inodes.
    pub const ENCRYPT: u32 = 0x10000;
    /// Case-folded names.
    pub const CASEFOLD: u32 = 0x20000;
}

/// `s_feature_ro_compat` bits.
pub mod ro_compat {
    /// Backup superblocks only in groups 0, 1 and powers of 3, 5, 7.
    pub const SPARSE_SUPER: u32 = 0x1;
    /// Files over 2 GiB.
    pub const LARGE_FILE: u32 = 0x2;
    /// Unused btree directories.
    pub const BTREE_DIR: u32 = 0x4;
    /// `i_blocks` in file-system blocks.
    pub const HUGE_FILE: u32 = 0x8;
    /// Group descriptor checksums (`uninit_bg`).
    pub const GDT_CSUM: u32 = 0x10;
    /// Over 65000 subdirectories.
    pub const DIR_NLINK: u32 = 0x20;
    /// Large inodes carry extra fields.
    pub const EXTRA_ISIZE: u32 = 0x40;
    /// Quota inodes.
    pub const QUOTA: u32 = 0x100;
    /// Project ids.
    pub const PROJECT: u32 = 0x2000;
    /// Allocation in clusters.
    pub const BIGALLOC: u32 = 0x200;
    /// crc32c checksums on all metadata.
    pub const METADATA_CSUM: u32 = 0x400;
}

/// A validated superblock. Only the fields gammaray uses are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Total inodes.
    pub s_inodes_count: u32,
    /// Total blocks (`s_blocks_count_lo` + `_hi` on 64bit).
    pub s_blocks_count: u64,
    /// First data block (1 for 1 KiB blocks, else 0).
    pub s_first_data_block: u32,
    /// Block size is `1024 << s_log_block_size`.
    pub s_log_block_size: u32,
    /// Cluster size is `1024 << s_log_cluster_size` (bigalloc; else equal
    /// to the block size).
    pub s_log_cluster_size: u32,
    /// Blocks per group.
    pub s_blocks_per_group: u32,
    /// Inodes per group.
    pub s_inodes_per_group: u32,
    /// Magic, `0xEF53`.
    pub s_magic: u16,
    /// Revision (0 = fixed 128-byte inodes, first inode 11).
    pub s_rev_level: u32,
    /// First non-reserved inode.
    pub s_first_ino: u32,
    /// Inode record size.
    pub s_inode_size: u16,
    /// Compatible features.
    pub s_feature_compat: u32,
    /// Incompatible features.
    pub s_feature_incompat: u32,
    /// Read-only compatible features.
    pub s_feature_ro_compat: u32,
    /// Where the file system was last mounted (NUL-trimmed).
    pub s_last_mounted: Vec<u8>,
    /// Reserved GDT blocks after the group descriptors.
    pub s_reserved_gdt_blocks: u16,
    /// The journal's inode.
    pub s_journal_inum: u32,
    /// Group descriptor size (32 unless 64bit).
    pub s_desc_size: u16,
    /// First meta block group (meta_bg).
    pub s_first_meta_bg: u32,
    /// Extra inode bytes every inode has.
    pub s_min_extra_isize: u16,
    /// Groups holding backups with sparse_super2.
    pub s_backup_bgs: [u32; 2],
    /// The hidden orphan file's inode (orphan_file feature), else 0.
    pub s_orphan_file_inum: u32,
    /// Quota inodes (user, group, project) with the quota feature, else 0.
    pub s_quota_inums: [u32; 3],
    /// File-system UUID.
    pub s_uuid: [u8; 16],
    /// Seed of every metadata checksum (`s_checksum_seed` with csum_seed,
    /// else the crc32c of the UUID).
    pub csum_seed: u32,
    /// False when metadata_csum is on and `s_checksum` does not match.
    pub csum_ok: bool,
}

impl Superblock {
    /// Parses and validates the 1024-byte superblock record. `offset` is its
    /// byte offset on the device, for errors.
    pub fn from_bytes(b: &[u8], offset: u64) -> Result<Self> {
        let bad = |detail: String| Error::corrupt("ext4 superblock", offset, detail);
        if b.len() < SUPERBLOCK_SIZE {
            return Err(bad(format!(
                "{} bytes, expected {SUPERBLOCK_SIZE}",
                b.len()
            )));
        }
        let s_magic = le16(b, 0x38);
        if s_magic != EXT4_SUPER_MAGIC {
            return Err(bad(format!(
                "s_magic {s_magic:#06x}, expected {EXT4_SUPER_MAGIC:#06x}"
            )));
        }
        let s_feature_incompat = le32(b, 0x60);
        let bit64 = s_feature_incompat & incompat::BIT64 != 0;
        let s_rev_level = le32(b, 0x4C);
        let (s_first_ino, s_inode_size) = if s_rev_level == 0 {
            (11, MIN_INODE_SIZE)
        } else {
            (le32(b, 0x54), le16(b, 0x58))
        };
        let mut last = b.get(0x88..0xC8).unwrap_or(&[]).to_vec();
        if let Some(nul) = last.iter().position(|&c| c == 0) {
            last.truncate(nul);
        }
        let mut s_uuid = [0u8; 16];
        if let Some(u) = b.get(0x68..0x78) {
            s_uuid.copy_from_slice(u);
        }
        let metadata_csum = le32(b, 0x64) & ro_compat::METADATA_CSUM != 0;
        let csum_seed = if s_feature_incompat & incompat::CSUM_SEED != 0 {
            le32(b, 0x270)
        } else {
            crc32c_raw(!0, &s_uuid)
        };
        let csum_ok =
            !metadata_csum || crc32c_raw(!0, b.get(..0x3FC).unwrap_or(&[])) == le32(b, 0x3FC);
        let sb = Superblock {
            s_inodes_count: le32(b, 0x0),
            s_blocks_count: join64(le32(b, 0x4), if bit64 { le32(b, 0x150) } else { 0 }),
            s_first_data_block: le32(b, 0x14),
            s_log_block_size: le32(b, 0x18),
            s_log_cluster_size: if le32(b, 0x64) & ro_compat::BIGALLOC != 0 {
                le32(b, 0x1C)
            } else {
                le32(b, 0x18)
            },
            s_blocks_per_group: le32(b, 0x20),
            s_inodes_per_group: le32(b, 0x28),
            s_magic,
            s_rev_level,
            s_first_ino,
            s_inode_size,
            s_feature_compat: le32(b, 0x5C),
            s_feature_incompat,
            s_feature_ro_compat: le32(b, 0x64),
            s_last_mounted: last,
            s_reserved_gdt_blocks: le16(b, 0xCE),
            s_journal_inum: le32(b, 0xE0),
            s_desc_size: if bit64 { le16(b, 0xFE) } else { 32 },
            s_first_meta_bg: le32(b, 0x104),
            s_min_extra_isize: le16(b, 0x15C),
            s_backup_bgs: [le32(b, 0x24C), le32(b, 0x250)],
            s_uuid,
            csum_seed,
            csum_ok,
            s_quota_inums: if le32(b, 0x64) & ro_compat::QUOTA != 0 {
                [le32(b, 0x240), le32(b, 0x244), le32(b, 0x26C)]
            } else {
                [0; 3]
            },
            s_orphan_file_inum: if le32(b, 0x5C) & compat::ORPHAN_FILE != 0 {
                le32(b, 0x280)
            } else {
                0
            },
        };
        sb.validate().map_err(bad)?;
        Ok(sb)
    }

    fn validate(&self) -> Result<(), String> {
        if self.s_log_block_size > MAX_LOG_BLOCK_SIZE {
            return Err(format!(
                "s_log_block_size {} above {MAX_LOG_BLOCK_SIZE} (64 KiB blocks)",
                self.s_log_block_size
            ));
        }
        let bs = self.block_size();
        let bits_per_block = bs.saturating_mul(8);
        // 1 KiB blocks start at block 1 (block 0 is the boot block), except
        // with bigalloc; larger blocks hold the superblock in block 0.
        if self.s_first_data_block > 1 || (bs > 1024 && self.s_first_data_block != 0) {
            return Err(format!(
                "s_first_data_block {} with {bs}-byte blocks",
                self.s_first_data_block
            ));
        }
        // A group's bitmap is one block: one bit per cluster.
        let ratio_bits = self.s_log_cluster_size.wrapping_sub(self.s_log_block_size);
        if ratio_bits > MAX_CLUSTER_RATIO_BITS {
            return Err(format!(
                "s_log_cluster_size {} not in {}..={}",
                self.s_log_cluster_size,
                self.s_log_block_size,
                self.s_log_block_size + MAX_CLUSTER_RATIO_BITS
            ));
        }
        let max_bpg = u64::from(bits_per_block) << ratio_bits;
        if self.s_blocks_per_group == 0 || u64::from(self.s_blocks_per_group) > max_bpg {
            return Err(format!(
                "s_blocks_per_group {} not in 1..={max_bpg}",
                self.s_blocks_per_group
            ));
        }
        if self.s_inodes_per_group == 0 || self.s_inodes_per_group > bits_per_block {
            return Err(format!(
                "s_inodes_per_group {} not in 1..={bits_per_block}",
                self.s_inodes_per_group
            ));
        }
        let isz = self.s_inode_size;
        if isz < MIN_INODE_SIZE || !isz.is_power_of_two() || u32::from(isz) > bs {
            return Err(format!(
                "s_inode_size {isz} not a power of two in {MIN_INODE_SIZE}..={bs}"
            ));
        }
        let ds = self.s_desc_size;
        if self.is_64bit() && (!(32..=MAX_DESC_SIZE).contains(&ds) || !ds.is_power_of_two()) {
            return Err(format!(
                "s_desc_size {ds} not a power of two in 32..={MAX_DESC_SIZE}"
            ));
        }
        if self.s_blocks_count <= u64::from(self.s_first_data_block) {
            return Err(format!("s_blocks_count {} too small", self.s_blocks_count));
        }
        let groups = self.group_count();
        let expected = groups.saturating_mul(u64::from(self.s_inodes_per_group));
        if u64::from(self.s_inodes_count) != expected {
            return Err(format!(
                "s_inodes_count {}, expected {expected} ({groups} groups of {})",
                self.s_inodes_count, self.s_inodes_per_group
            ));
        }
        if self.s_first_ino < 3 || self.s_first_ino > self.s_inodes_count {
            return Err(format!("s_first_ino {} out of range", self.s_first_ino));
        }
        for bad in [
            incompat::COMPRESSION,
            incompat::JOURNAL_DEV,
            incompat::DIRDATA,
        ] {
            if self.s_feature_incompat & bad != 0 {
                return Err(format!(
                    "unsupported incompatible feature {bad:#x} (s_feature_incompat {:#x})",
                    self.s_feature_incompat
                ));
            }
        }
        Ok(())
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u32 {
        // Cannot overflow: validated to at most 1024 << 6.
        1024u32 << self.s_log_block_size.min(MAX_LOG_BLOCK_SIZE)
    }

    /// Number of block groups.
    pub fn group_count(&self) -> u64 {
        let data = self
            .s_blocks_count
            .saturating_sub(u64::from(self.s_first_data_block));
        data.div_ceil(u64::from(self.s_blocks_per_group.max(1)))
    }

    /// True with the 64bit feature.
    pub fn is_64bit(&self) -> bool {
        self.s_feature_incompat & incompat::BIT64 != 0
    }

    /// Whether `flag` of `s_feature_incompat` is set.
    pub fn has_incompat(&self, flag: u32) -> bool {
        self.s_feature_incompat & flag != 0
    }

    /// Whether `flag` of `s_feature_ro_compat` is set.
    pub fn has_ro_compat(&self, flag: u32) -> bool {
        self.s_feature_ro_compat & flag != 0
    }

    /// Whether `flag` of `s_feature_compat` is set.
    pub fn has_compat(&self, flag: u32) -> bool {
        self.s_feature_compat & flag != 0
    }

    /// True when group descriptors carry checksums, which makes
    /// `bg_itable_unused` and the `*_UNINIT` flags meaningful.
    pub fn has_group_csums(&self) -> bool {
        self.has_ro_compat(ro_compat::GDT_CSUM) || self.has_ro_compat(ro_compat::METADATA_CSUM)
    }

    /// "ext2", "ext3" or "ext4", the way blkid tells them apart: ext4 when
    /// any feature beyond ext3's set is on, ext3 with a journal, else ext2.
    pub fn fs_type(&self) -> &'static str {
        const EXT3_INCOMPAT: u32 = incompat::FILETYPE | incompat::RECOVER | incompat::META_BG;
        const EXT3_RO_COMPAT: u32 =
            ro_compat::SPARSE_SUPER | ro_compat::LARGE_FILE | ro_compat::BTREE_DIR;
        if self.s_feature_incompat & !EXT3_INCOMPAT != 0
            || self.s_feature_ro_compat & !EXT3_RO_COMPAT != 0
        {
            "ext4"
        } else if self.has_compat(compat::HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        }
    }

    /// Whether group `g` holds a backup (or, for 0, the primary)
    /// superblock and group descriptors.
    pub fn group_has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.has_compat(compat::SPARSE_SUPER2) {
            return self
                .s_backup_bgs
                .iter()
                .any(|&b| b != 0 && u64::from(b) == g);
        }
        if !self.has_ro_compat(ro_compat::SPARSE_SUPER) {
            return true;
        }
        g == 1 || is_power_of(g, 3) || is_power_of(g, 5) || is_power_of(g, 7)
    }
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    if n == 0 {
        return false;
    }
    while n.checked_rem(base) == Some(0) {
        n /= base;
    }
    n == 1
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid superblock: 4 KiB blocks, 2 groups.
    pub(crate) fn sample() -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_SIZE];
        let put = |b: &mut Vec<u8>, off: usize, v: u32| {
            b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut b, 0x0, 2 * 8192);
        put(&mut b, 0x4, 65536);
        put(&mut b, 0x18, 2);
        put(&mut b, 0x20, 32768);
        put(&mut b, 0x28, 8192);
        b[0x38..0x3A].copy_from_slice(&EXT4_SUPER_MAGIC.to_le_bytes());
        put(&mut b, 0x4C, 1);
        put(&mut b, 0x54, 11);
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        b[0x88..0x8C].copy_from_slice(b"/mnt");
        b
    }

    #[test]
    fn parses_a_valid_superblock() {
        let sb = Superblock::from_bytes(&sample(), 1024).unwrap();
        assert_eq!(sb.block_size(), 4096);
        assert_eq!(sb.group_count(), 2);
        assert_eq!(sb.s_last_mounted, b"/mnt");
        assert_eq!(sb.fs_type(), "ext2");
    }

    #[test]
    fn huge_log_block_size_is_corrupt() {
        let mut b = sample();
        b[0x18..0x1C].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = Superblock::from_bytes(&b, 1024).unwrap_err();
        assert!(err.to_string().contains("s_log_block_size"), "{err}");
    }

    #[test]
    fn inconsistent_inode_count_is_corrupt() {
        let mut b = sample();
        b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = Superblock::from_bytes(&b, 1024).unwrap_err();
        assert!(err.to_string().contains("s_inodes_count"), "{err}");
    }

    #[test]
    fn short_or_wrong_magic_is_corrupt() {
        assert!(Superblock::from_bytes(&[0u8; 100], 1024).is_err());
        let mut b = sample();
        b[0x38] = 0;
        assert!(Superblock::from_bytes(&b, 1024).is_err());
    }

    #[test]
    fn sparse_super_backup_groups() {
        let mut b = sample();
        b[0x64] = ro_compat::SPARSE_SUPER as u8;
        let sb = Superblock::from_bytes(&b, 1024).unwrap();
        let with: Vec<u64> = (0..50).filter(|&g| sb.group_has_super(g)).collect();
        assert_eq!(with, vec![0, 1, 3, 5, 7, 9, 25, 27, 49]);
    }
}
