//! Extended attributes stored in the inode body (after `i_extra_isize`),
//! which is where inline data keeps its `system.data` part.

use gammaray_core::{Error, Result};

use crate::bytes::{le16, le32, le8};

/// `h_magic` of an in-inode attribute area (and of xattr blocks).
pub const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;
/// Name index of `system.*` attributes.
pub const EXT4_XATTR_INDEX_SYSTEM: u8 = 7;
/// Size of an entry header (`ext4_xattr_entry` without its name).
pub const ENTRY_HEADER: usize = 16;

/// A validated in-inode attribute area.
#[derive(Debug, Clone, Copy)]
pub struct InodeXattrs<'a> {
    /// Entries and values, after the 4-byte magic; value offsets count from
    /// here.
    body: &'a [u8],
    offset: u64,
}

/// One attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xattr<'a> {
    /// `e_name_index` (prefix: 1 user, 7 system, ...).
    pub e_name_index: u8,
    /// Name without its prefix.
    pub name: &'a [u8],
    /// The value, when stored in the inode (not in an EA inode).
    pub value: &'a [u8],
}

impl<'a> InodeXattrs<'a> {
    /// Parses the area after `128 + i_extra_isize`. Returns `None` when it
    /// holds no attributes (no magic). `offset` is the area's byte offset on
    /// the device.
    pub fn from_bytes(area: &'a [u8], offset: u64) -> Option<Self> {
        if area.len() < 4 || le32(area, 0) != EXT4_XATTR_MAGIC {
            return None;
        }
        Some(InodeXattrs {
            body: area.get(4..).unwrap_or(&[]),
            offset: offset.saturating_add(4),
        })
    }

    /// Every attribute, stopping at the first damaged entry (reported as
    /// the last item).
    pub fn iter(&self) -> impl Iterator<Item = Result<Xattr<'a>>> + 'a {
        let body = self.body;
        let offset = self.offset;
        let mut pos = 0usize;
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let e = body.get(pos..)?;
            // End of list: four zero bytes, or the area ends.
            if e.len() < 4 || le32(e, 0) == 0 {
                return None;
            }
            let bad = |detail: String| {
                Error::corrupt(
                    "ext4 xattr entry",
                    offset.saturating_add(pos as u64),
                    detail,
                )
            };
            if e.len() < ENTRY_HEADER {
                done = true;
                return Some(Err(bad(format!("{} bytes left, entry needs 16", e.len()))));
            }
            let name_len = usize::from(le8(e, 0));
            let e_name_index = le8(e, 1);
            let value_offs = usize::from(le16(e, 2));
            let value_inum = le32(e, 4);
            let value_size = usize::try_from(le32(e, 8)).unwrap_or(usize::MAX);
            let Some(name) = e.get(ENTRY_HEADER..ENTRY_HEADER + name_len) else {
                done = true;
                return Some(Err(bad(format!("e_name_len {name_len} past the area"))));
            };
            let value = if value_inum != 0 {
                &[][..]
            } else {
                match value_offs
                    .checked_add(value_size)
                    .and_then(|end| body.get(value_offs..end))
                {
                    Some(v) => v,
                    None => {
                        done = true;
                        return Some(Err(bad(format!(
                            "value {value_offs}+{value_size} past the {}-byte area",
                            body.len()
                        ))));
                    }
                }
            };
            // Entries are padded to 4 bytes; this always moves forward.
            pos = pos.saturating_add((ENTRY_HEADER + name_len + 3) & !3);
            Some(Ok(Xattr {
                e_name_index,
                name,
                value,
            }))
        })
    }

    /// The value of `system.data` (inline data past `i_block`), if present.
    pub fn system_data(&self) -> Result<Option<&'a [u8]>> {
        for x in self.iter() {
            let x = x?;
            if x.e_name_index == EXT4_XATTR_INDEX_SYSTEM && x.name == b"data" {
                return Ok(Some(x.value));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(entries: &[(u8, &[u8], &[u8])]) -> Vec<u8> {
        let mut a = vec![0u8; 100];
        a[0..4].copy_from_slice(&EXT4_XATTR_MAGIC.to_le_bytes());
        let mut pos = 4;
        let mut vpos = 96usize;
        for (idx, name, value) in entries {
            vpos -= (value.len() + 3) & !3;
            a[pos] = name.len() as u8;
            a[pos + 1] = *idx;
            a[pos + 2..pos + 4].copy_from_slice(&((vpos - 4) as u16).to_le_bytes());
            a[pos + 8..pos + 12].copy_from_slice(&(value.len() as u32).to_le_bytes());
            a[pos + 16..pos + 16 + name.len()].copy_from_slice(name);
            a[vpos..vpos + value.len()].copy_from_slice(value);
            pos += (16 + name.len() + 3) & !3;
        }
        a
    }

    #[test]
    fn finds_system_data() {
        let a = area(&[(1, b"foo", b"bar"), (7, b"data", b"hello world")]);
        let x = InodeXattrs::from_bytes(&a, 0).unwrap();
        assert_eq!(x.system_data().unwrap(), Some(&b"hello world"[..]));
    }

    #[test]
    fn value_past_the_area_is_corrupt() {
        let mut a = area(&[(7, b"data", b"x")]);
        a[4 + 8..4 + 12].copy_from_slice(&1000u32.to_le_bytes());
        let x = InodeXattrs::from_bytes(&a, 0).unwrap();
        assert!(x.system_data().is_err());
        assert!(InodeXattrs::from_bytes(&[0u8; 8], 0).is_none());
    }
}
