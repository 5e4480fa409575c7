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

/// Human-readable differences between an expected listing (the guest's
/// ground truth) and an actual one (for example gammaray's `--state`):
/// names missing, names extra, and fields that differ, in path order. An
/// empty result means the listings agree.
pub fn diff(expected: &[ListingEntry], actual: &[ListingEntry]) -> Vec<String> {
    use std::collections::BTreeMap;
    let key = |e: &ListingEntry| (e.part, e.path.clone());
    let exp: BTreeMap<_, _> = expected.iter().map(|e| (key(e), e)).collect();
    let act: BTreeMap<_, _> = actual.iter().map(|e| (key(e), e)).collect();
    let mut out = Vec::new();
    for (k, e) in &exp {
        let Some(a) = act.get(k) else {
            out.push(format!("missing: part {} {}", k.0, k.1));
            continue;
        };
        let mut fields = Vec::new();
        let mut cmp = |name: &str, x: String, y: String| {
            if x != y {
                fields.push(format!("{name} {x} != {y}"));
            }
        };
        cmp("type", e.kind.clone(), a.kind.clone());
        cmp("mode", format!("{:o}", e.mode), format!("{:o}", a.mode));
        cmp("uid", e.uid.to_string(), a.uid.to_string());
        cmp("gid", e.gid.to_string(), a.gid.to_string());
        cmp("size", e.size.to_string(), a.size.to_string());
        cmp("nlink", e.nlink.to_string(), a.nlink.to_string());
        cmp("mtime", e.mtime.to_string(), a.mtime.to_string());
        cmp(
            "target",
            format!("{:?}", e.target),
            format!("{:?}", a.target),
        );
        if a.sha256.is_some() {
            cmp(
                "sha256",
                format!("{:?}", e.sha256),
                format!("{:?}", a.sha256),
            );
        }
        if !fields.is_empty() {
            out.push(format!(
                "differs: part {} {}: {}",
                k.0,
                k.1,
                fields.join(", ")
            ));
        }
    }
    for k in act.keys().filter(|k| !exp.contains_key(*k)) {
        out.push(format!("extra: part {} {}", k.0, k.1));
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, size: u64) -> ListingEntry {
        ListingEntry {
            part: 1,
            path: path.into(),
            kind: "file".into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            mtime: 0,
            target: None,
            sha256: None,
        }
    }

    #[test]
    fn diff_reports_missing_extra_and_changed() {
        let d = diff(&[e("/a", 1), e("/b", 2)], &[e("/b", 3), e("/c", 0)]);
        assert_eq!(
            d,
            vec![
                "missing: part 1 /a".to_string(),
                "differs: part 1 /b: size 2 != 3".to_string(),
                "extra: part 1 /c".to_string(),
            ]
        );
    }

    #[test]
    fn sort_is_by_path_bytes() {
        let mut v = vec![e("/b", 0), e("/a b", 0), e("/a", 0), e("/a/x", 0)];
        sort(&mut v);
        let p: Vec<&str> = v.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(p, vec!["/a", "/a b", "/a/x", "/b"]);
    }
}
