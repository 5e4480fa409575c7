//! The state listing: one JSON object per name, sorted by partition then
//! path, as DESIGN.md specifies.
//!
//! ```text
//! {"part":1,"path":"/etc/passwd","type":"file","mode":420,"uid":0,"gid":0,"size":1234,"nlink":1,"mtime":1700000000,"sha256":"…"}
//! ```

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::content::ContentIndex;
use crate::device::BlockDevice;
use crate::error::Error;
use crate::model::{FileId, FileType, FsModel};

/// Deepest directory nesting listed; deeper trees (or cycles that evade the
/// visited set) are cut with a warning. Linux's PATH_MAX of 4096 bytes allows
/// at most 2048 levels.
pub const MAX_DEPTH: usize = 2048;

/// One line of the state listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingEntry {
    /// Partition number (Linux numbering).
    pub part: u32,
    /// Absolute path inside the file system; the root is `/`.
    pub path: String,
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `chardev`, `blockdev`.
    #[serde(rename = "type")]
    pub ftype: String,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Symlink target.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
    /// SHA-256 of a regular file's contents (with `--hash`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    /// The file's id in the model (not part of the JSON line).
    #[serde(skip)]
    pub file: FileId,
}

/// Builds the listing of one file system. Names whose file is missing from
/// the model, directory cycles and over-deep trees are skipped and reported
/// in the returned warnings.
pub fn list(model: &FsModel, part: u32) -> (Vec<ListingEntry>, Vec<Error>) {
    let mut out = Vec::with_capacity(model.files.len() + 1);
    let mut warnings = Vec::new();
    let mut visited: HashSet<FileId> = HashSet::new();
    // (path, dir id, depth)
    let mut stack: Vec<(String, FileId, usize)> = Vec::new();
    if let Some(rec) = model.files.get(&model.root) {
        out.push(entry(part, "/".to_string(), rec));
        visited.insert(model.root);
        stack.push((String::new(), model.root, 0));
    } else {
        warnings.push(Error::corrupt(
            "root directory",
            0,
            format!("root {} is not in the model", model.root),
        ));
    }
    while let Some((prefix, dir, depth)) = stack.pop() {
        for e in model.tree.entries(dir) {
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
            let Some(rec) = model.files.get(&e.child) else {
                warnings.push(Error::corrupt(
                    "directory entry",
                    0,
                    format!("{path} names file {} which is not in use", e.child),
                ));
                continue;
            };
            out.push(entry(part, path.clone(), rec));
            if rec.ftype == FileType::Dir {
                if depth + 1 >= MAX_DEPTH {
                    warnings.push(Error::corrupt(
                        "directory tree",
                        0,
                        format!("{path} is nested deeper than {MAX_DEPTH}; not descended"),
                    ));
                } else if visited.insert(e.child) {
                    stack.push((path, e.child, depth + 1));
                } else {
                    warnings.push(Error::corrupt(
                        "directory tree",
                        0,
                        format!("{path} is a second name for directory {}; not descended (cycle or hard-linked directory)", e.child),
                    ));
                }
            }
        }
    }
    out.sort_unstable_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    (out, warnings)
}

fn entry(part: u32, path: String, rec: &crate::model::FileRecord) -> ListingEntry {
    ListingEntry {
        part,
        path,
        ftype: rec.ftype.as_str().to_string(),
        mode: u32::from(rec.mode),
        uid: rec.uid,
        gid: rec.gid,
        size: rec.size,
        nlink: rec.nlink,
        mtime: rec.mtime.sec,
        target: rec
            .target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
        sha256: None,
        file: rec.id,
    }
}

/// Fills `sha256` for every regular file in `entries` by reading its
/// contents through the model's block map. Files that cannot be read get a
/// warning and no hash.
pub fn add_hashes(
    entries: &mut [ListingEntry],
    model: &FsModel,
    dev: &dyn BlockDevice,
) -> Vec<Error> {
    let index = ContentIndex::build(model);
    let mut warnings = Vec::new();
    // Hard links share one hash: compute once per file.
    let mut done: HashMap<FileId, String> = HashMap::new();
    for e in entries.iter_mut().filter(|e| e.ftype == "file") {
        let id = e.file;
        if let Some(h) = done.get(&id) {
            e.sha256 = Some(h.clone());
            continue;
        }
        match index.sha256(dev, model, id, e.size) {
            Ok(Some(h)) => {
                let h = hex::encode(h);
                done.insert(id, h.clone());
                e.sha256 = Some(h);
            }
            Ok(None) => {}
            Err(err) => warnings.push(err),
        }
    }
    warnings
}

/// Writes entries as JSON lines.
pub fn write_lines(entries: &[ListingEntry], out: &mut dyn std::io::Write) -> std::io::Result<()> {
    for e in entries {
        serde_json::to_writer(&mut *out, e)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FileRecord, Timestamp};

    fn rec(id: FileId, ftype: FileType) -> FileRecord {
        FileRecord {
            id,
            ftype,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 1,
            atime: Timestamp::default(),
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 5,
            },
            ctime: Timestamp::default(),
            crtime: Timestamp::default(),
            target: None,
        }
    }

    #[test]
    fn listing_is_sorted_and_survives_a_directory_cycle() {
        let mut m = FsModel::new("test", 4096, 2);
        m.files.insert(2, rec(2, FileType::Dir));
        m.files.insert(11, rec(11, FileType::Dir));
        m.files.insert(12, rec(12, FileType::File));
        m.tree.add(2, b"b", 12);
        m.tree.add(2, b"a", 11);
        m.tree.add(11, b"loop", 2); // hostile: points back at the root
        m.tree.add(11, b"ghost", 99); // names a file not in use
        let (entries, warnings) = list(&m, 1);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/", "/a", "/a/loop", "/b"]);
        assert_eq!(warnings.len(), 2);
        let mut line = Vec::new();
        write_lines(&entries[3..], &mut line).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"part\":1,\"path\":\"/b\",\"type\":\"file\",\"mode\":420,\"uid\":0,\"gid\":0,\"size\":0,\"nlink\":1,\"mtime\":1700000000}\n"
        );
    }
}
