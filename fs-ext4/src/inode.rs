//! Inode records (`struct ext4_inode`), 128 bytes plus `i_extra_isize`.

use gammaray_core::{Error, FileType, Result, Timestamp};

use crate::bytes::{join32, join64, le16, le32};

/// Size of the fixed part of an inode (the ext2 "good old" record).
pub const GOOD_OLD_INODE_SIZE: usize = 128;
/// Bytes of `i_block`: 15 block pointers, or the extent root, or inline data.
pub const I_BLOCK_LEN: usize = 60;
/// The root directory's inode.
pub const EXT4_ROOT_INO: u32 = 2;
/// The resize inode (its blocks are the reserved GDT blocks).
pub const EXT4_RESIZE_INO: u32 = 7;

/// `i_flags`: the inode has a hashed index (htree directory).
pub const EXT4_INDEX_FL: u32 = 0x1000;
/// `i_flags`: `i_blocks` counts file-system blocks (huge_file).
pub const EXT4_HUGE_FILE_FL: u32 = 0x40000;
/// `i_flags`: `i_block` holds an extent tree.
pub const EXT4_EXTENTS_FL: u32 = 0x80000;
/// `i_flags`: the inode stores a large xattr value.
pub const EXT4_EA_INODE_FL: u32 = 0x200000;
/// `i_flags`: data is inline in `i_block` and the `system.data` xattr.
pub const EXT4_INLINE_DATA_FL: u32 = 0x1000_0000;

/// A validated inode, copied out of its table (no heap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inode {
    /// File mode (type and permission bits).
    pub i_mode: u16,
    /// Owner (`i_uid` | `l_i_uid_high` << 16).
    pub i_uid: u32,
    /// Group (`i_gid` | `l_i_gid_high` << 16).
    pub i_gid: u32,
    /// Size in bytes (`i_size_lo` | `i_size_high` << 32).
    pub i_size: u64,
    /// Access time.
    pub i_atime: Timestamp,
    /// Change time.
    pub i_ctime: Timestamp,
    /// Modification time.
    pub i_mtime: Timestamp,
    /// Creation time (zero when the inode is too small to hold it).
    pub i_crtime: Timestamp,
    /// Deletion time.
    pub i_dtime: u32,
    /// Hard links.
    pub i_links_count: u16,
    /// 512-byte sectors (or blocks with huge_file) in use, incl. xattr block.
    pub i_blocks: u64,
    /// Flags (`EXT4_*_FL`).
    pub i_flags: u32,
    /// Block map, extent root or inline data.
    pub i_block: [u8; I_BLOCK_LEN],
    /// Extended-attribute block (`i_file_acl_lo` | `l_i_file_acl_high`).
    pub i_file_acl: u64,
    /// Extra bytes after the first 128 (0 for 128-byte inodes).
    pub i_extra_isize: u16,
}

impl Inode {
    /// Parses an inode record of `inode_size` bytes (the slice may be that
    /// long or longer). `offset` is its byte offset on the device.
    pub fn from_bytes(b: &[u8], inode_size: usize, offset: u64) -> Result<Self> {
        let bad = |detail: String| Error::corrupt("ext4 inode", offset, detail);
        let rec = b
            .get(..inode_size)
            .filter(|r| r.len() >= GOOD_OLD_INODE_SIZE)
            .ok_or_else(|| {
                bad(format!(
                    "{} bytes, expected {inode_size} (at least {GOOD_OLD_INODE_SIZE})",
                    b.len()
                ))
            })?;
        let i_extra_isize = if rec.len() > GOOD_OLD_INODE_SIZE {
            le16(rec, 0x80)
        } else {
            0
        };
        let extra_end = GOOD_OLD_INODE_SIZE.saturating_add(usize::from(i_extra_isize));
        if extra_end > rec.len() || i_extra_isize % 4 != 0 {
            return Err(bad(format!(
                "i_extra_isize {i_extra_isize} does not fit a {inode_size}-byte inode"
            )));
        }
        // A field of the extra area exists when it lies below 128+extra.
        let has = |off: usize| off.saturating_add(4) <= extra_end;
        let time = |base: usize, extra: usize| {
            let lo = i64::from(le32(rec, base) as i32);
            if has(extra) {
                decode_extra_time(lo, le32(rec, extra))
            } else {
                Timestamp { sec: lo, nsec: 0 }
            }
        };
        let mut i_block = [0u8; I_BLOCK_LEN];
        if let Some(s) = rec.get(0x28..0x28 + I_BLOCK_LEN) {
            i_block.copy_from_slice(s);
        }
        let i_crtime = if has(0x90) {
            time(0x90, 0x94)
        } else {
            Timestamp::default()
        };
        Ok(Inode {
            i_mode: le16(rec, 0x0),
            i_uid: join32(le16(rec, 0x2), le16(rec, 0x78)),
            i_gid: join32(le16(rec, 0x18), le16(rec, 0x7A)),
            i_size: join64(le32(rec, 0x4), le32(rec, 0x6C)),
            i_atime: time(0x8, 0x8C),
            i_ctime: time(0xC, 0x84),
            i_mtime: time(0x10, 0x88),
            i_crtime,
            i_dtime: le32(rec, 0x14),
            i_links_count: le16(rec, 0x1A),
            i_blocks: join64(le32(rec, 0x1C), u32::from(le16(rec, 0x74))),
            i_flags: le32(rec, 0x20),
            i_block,
            i_file_acl: join64(le32(rec, 0x68), u32::from(le16(rec, 0x76))),
            i_extra_isize,
        })
    }

    /// The file type, or `None` for an invalid `S_IFMT`.
    pub fn file_type(&self) -> Option<FileType> {
        FileType::from_unix_mode(u32::from(self.i_mode))
    }

    /// True if the `flag` bit of `i_flags` is set.
    pub fn has_flag(&self, flag: u32) -> bool {
        self.i_flags & flag != 0
    }

    /// Byte range of the in-inode extended-attribute area
    /// (`128 + i_extra_isize .. inode_size`).
    pub fn xattr_area<'a>(&self, rec: &'a [u8], inode_size: usize) -> &'a [u8] {
        let start = GOOD_OLD_INODE_SIZE.saturating_add(usize::from(self.i_extra_isize));
        rec.get(start..inode_size).unwrap_or(&[])
    }
}

/// Decodes a 32-bit seconds field plus its `_extra` word: the low two bits
/// extend the seconds past 2038, the rest are nanoseconds.
pub fn decode_extra_time(sec: i64, extra: u32) -> Timestamp {
    let epoch = i64::from(extra & 3) << 32;
    Timestamp {
        sec: sec.saturating_add(epoch),
        nsec: (extra >> 2).min(999_999_999),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_fields_and_extra_times() {
        let mut b = vec![0u8; 256];
        b[0..2].copy_from_slice(&0o100644u16.to_le_bytes());
        b[2..4].copy_from_slice(&1000u16.to_le_bytes());
        b[0x78..0x7A].copy_from_slice(&1u16.to_le_bytes());
        b[4..8].copy_from_slice(&5u32.to_le_bytes());
        b[0x6C..0x70].copy_from_slice(&1u32.to_le_bytes());
        b[0x10..0x14].copy_from_slice(&1_700_000_000u32.to_le_bytes());
        b[0x80..0x82].copy_from_slice(&32u16.to_le_bytes());
        b[0x88..0x8C].copy_from_slice(&((123u32 << 2) | 1).to_le_bytes());
        let ino = Inode::from_bytes(&b, 256, 0).unwrap();
        assert_eq!(ino.file_type(), Some(FileType::File));
        assert_eq!(ino.i_uid, 65536 + 1000);
        assert_eq!(ino.i_size, (1 << 32) + 5);
        assert_eq!({ ino.i_mtime.sec }, 1_700_000_000 + (1 << 32));
        assert_eq!(ino.i_mtime.nsec, 123);
    }

    #[test]
    fn pre_1970_times_are_negative() {
        let mut b = vec![0u8; 128];
        b[0x10..0x14].copy_from_slice(&(-5i32).to_le_bytes());
        let ino = Inode::from_bytes(&b, 128, 0).unwrap();
        assert_eq!({ ino.i_mtime.sec }, -5);
    }

    #[test]
    fn extra_isize_past_the_record_is_corrupt() {
        let mut b = vec![0u8; 256];
        b[0x80..0x82].copy_from_slice(&200u16.to_le_bytes());
        assert!(Inode::from_bytes(&b, 256, 7).is_err());
        assert!(Inode::from_bytes(&b[..100], 256, 7).is_err());
    }
}
