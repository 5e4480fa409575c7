//! Directory entries (`ext4_dir_entry_2`): linear directory blocks, the
//! leaves of htree directories, and inline directories.
//!
//! htree interior blocks need no special case: the root's `..` entry and
//! each interior node's fake entry span the rest of the block, so a linear
//! reader sees only `.`, `..` and entries with inode 0.

use gammaray_core::{Error, Result};

use crate::bytes::{le16, le32, le8};

/// Size of the entry header (inode, rec_len, name_len, file_type).
pub const DIRENT_HEADER: usize = 8;
/// Longest name (`EXT4_NAME_LEN`).
pub const EXT4_NAME_LEN: usize = 255;

/// One directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The inode named, 0 for an unused entry.
    pub inode: u32,
    /// `rec_len` as decoded.
    pub rec_len: usize,
    /// File type code (with the filetype feature), else 0.
    pub file_type: u8,
    /// The name.
    pub name: &'a [u8],
}

impl DirEntry<'_> {
    /// True for `.` and `..`.
    pub fn is_dot(&self) -> bool {
        self.name == b"." || self.name == b".."
    }
}

/// Iterates the entries of one directory block (or inline area). Yields at
/// most one error, then stops; each step moves forward by at least the
/// header size, so it always ends.
#[derive(Debug, Clone)]
pub struct DirBlock<'a> {
    b: &'a [u8],
    pos: usize,
    offset: u64,
    filetype: bool,
    block_size: usize,
    failed: bool,
}

impl<'a> DirBlock<'a> {
    /// Walks `b`. `offset` is its byte offset on the device; `filetype`
    /// says whether the name length is one byte (filetype feature) or two.
    /// `block_size` decodes the 64 KiB `rec_len` special case.
    pub fn from_bytes(b: &'a [u8], offset: u64, filetype: bool, block_size: usize) -> Self {
        DirBlock {
            b,
            pos: 0,
            offset,
            filetype,
            block_size,
            failed: false,
        }
    }

    fn bad(&mut self, detail: String) -> Option<Result<DirEntry<'a>>> {
        self.failed = true;
        let off = self.offset.saturating_add(self.pos as u64);
        Some(Err(Error::corrupt("ext4 directory entry", off, detail)))
    }
}

impl<'a> Iterator for DirBlock<'a> {
    type Item = Result<DirEntry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.b.len() {
            return None;
        }
        let rest = self.b.get(self.pos..).unwrap_or(&[]);
        if rest.len() < DIRENT_HEADER {
            return self.bad(format!(
                "{} trailing bytes, no room for an entry",
                rest.len()
            ));
        }
        let inode = le32(rest, 0);
        let raw = le16(rest, 4);
        let rec_len = if self.block_size >= 65536 && (raw == 0 || raw == 65535) {
            65536
        } else {
            usize::from(raw)
        };
        let (name_len, file_type) = if self.filetype {
            (usize::from(le8(rest, 6)), le8(rest, 7))
        } else {
            (usize::from(le16(rest, 6)), 0)
        };
        if rec_len < DIRENT_HEADER || rec_len % 4 != 0 || rec_len > rest.len() {
            return self.bad(format!(
                "rec_len {rec_len} (need a multiple of 4 in {DIRENT_HEADER}..={})",
                rest.len()
            ));
        }
        if inode != 0 && (name_len == 0 || name_len > EXT4_NAME_LEN) {
            return self.bad(format!("name_len {name_len} not in 1..={EXT4_NAME_LEN}"));
        }
        if name_len > rec_len - DIRENT_HEADER {
            return self.bad(format!("name_len {name_len} runs past rec_len {rec_len}"));
        }
        let name = rest
            .get(DIRENT_HEADER..DIRENT_HEADER + name_len)
            .unwrap_or(&[]);
        self.pos += rec_len;
        Some(Ok(DirEntry {
            inode,
            rec_len,
            file_type,
            name,
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn dirent(inode: u32, rec_len: u16, name: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; usize::from(rec_len).max(8 + name.len())];
        e[0..4].copy_from_slice(&inode.to_le_bytes());
        e[4..6].copy_from_slice(&rec_len.to_le_bytes());
        e[6] = name.len() as u8;
        e[7] = 1;
        e[8..8 + name.len()].copy_from_slice(name);
        e
    }

    #[test]
    fn walks_entries_and_skips_nothing_valid() {
        let mut b = dirent(2, 12, b".");
        b.extend(dirent(2, 12, b".."));
        b.extend(dirent(12, 16, b"hello"));
        b.extend(dirent(0, 1024 - 40, b""));
        let names: Vec<_> = DirBlock::from_bytes(&b, 0, true, 1024)
            .map(|e| e.unwrap())
            .filter(|e| e.inode != 0 && !e.is_dot())
            .map(|e| e.name.to_vec())
            .collect();
        assert_eq!(names, vec![b"hello".to_vec()]);
    }

    #[test]
    fn rec_len_zero_yields_one_error_and_stops() {
        let mut b = dirent(12, 12, b"a");
        b.extend(vec![0u8; 1012]);
        let all: Vec<_> = DirBlock::from_bytes(&b, 4096, true, 1024).collect();
        assert_eq!(all.len(), 2);
        let err = all[1].as_ref().unwrap_err();
        assert!(err.to_string().contains("rec_len 0"), "{err}");
        assert!(err.to_string().contains("4108"), "{err}");
    }

    #[test]
    fn name_len_past_record_is_corrupt() {
        let mut b = dirent(12, 12, b"abcd");
        b[6] = 200;
        b.resize(1024, 0);
        let first = DirBlock::from_bytes(&b, 0, true, 1024).next().unwrap();
        assert!(first.is_err());
    }
}
