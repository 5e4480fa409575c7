//! The state listing of DESIGN.md: one JSON object per name, sorted by
//! partition then by the path's bytes.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};

/// One line of a state listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingEntry {
    /// Partition number as Linux numbers it (1 for an unpartitioned disk).
    pub part: u32,
    /// Absolute path inside the file system; the root is `/`.
    pub path: String,
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `chardev` or `blockdev`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits, `st_mode & 0o7777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Link count.
    pub nlink: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// SHA-256 of a regular file's contents, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The listing's `type` for a `st_mode`, or `None` for an unknown type.
pub fn type_name(st_mode: u32) -> Option<&'static str> {
    Some(match st_mode & 0o170000 {
        0o100000 => "file",
        0o040000 => "dir",
        0o120000 => "symlink",
        0o010000 => "fifo",
        0o140000 => "socket",
        0o020000 => "chardev",
        0o060000 => "blockdev",
        _ => return None,
    })
}

/// Sorts entries by partition, then path bytes.
pub fn sort(entries: &mut [ListingEntry]) {
    entries.sort_by(|a, b| (a.part, a.path.as_bytes()).cmp(&(b.part, b.path.as_bytes())));
}

/// Writes a listing (sorted first) as JSON lines.
pub fn write(path: &Path, entries: &[ListingEntry]) -> Result<()> {
    let mut sorted = entries.to_vec();
    sort(&mut sorted);
    let mut out = Vec::new();
    for e in &sorted {
        // OK to unwrap: the struct has only strings and integers.
        serde_json::to_writer(&mut out, e).expect("listing entries always serialize");
        out.push(b'\n');
    }
    let mut f = std::fs::File::create(path).ctx("creating", path)?;
    f.write_all(&out).ctx("writing", path)?;
    Ok(())
}

/// Reads a JSON-lines listing.
pub fn read(path: &Path) -> Result<Vec<ListingEntry>> {
    let text = std::fs::read_to_string(path).ctx("reading", path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| crate::Error::Truth {
                line: i + 1,
                message: "not a listing entry",
                text: format!("{l} ({e})"),
            })
        })
        .collect()
}
