//! The index: a disk's partitions and file-system models, saved beside the
//! disk (`DISK.gammaray`) so that a VM's metadata can be loaded at start
//! without crawling again.
//!
//! # Format (version 1)
//!
//! A gzip stream of BSON documents, one after another. Each document has a
//! `kind`:
//!
//! - `header` (first): `magic` = `"gammaray-index"`, `version`, `disk_size`,
//!   `scheme`, `partitions` (array of `{number, start, len, scheme, type_id}`);
//! - `fs`: one file system: `part`, `fs_type`, `block_size`, `root`,
//!   optional `mount_hint`;
//! - `files`, `names`, `blocks`: chunks of at most [`CHUNK_ROWS`] rows of
//!   that file system's files, directory entries and block-map runs, stored
//!   *column-wise*: each column is one BSON binary of LEB128 varints, with
//!   sorted keys delta-encoded and other numbers zigzag-delta-encoded against
//!   the previous row. Columns of similar numbers compress far better under
//!   gzip than one document per file would;
//! - `inline`: one file's inline contents;
//! - `end` (last): counts, so a truncated index is detected.
//!
//! Unknown document kinds are skipped, so later versions can add kinds
//! without breaking older readers; a change to an existing kind bumps
//! `version`.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use bson::{doc, spec::BinarySubtype, Binary, Bson, Document, RawDocumentBuf};
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::blockmap::Owner;
use crate::error::{Error, Result};
use crate::model::{FileRecord, FileType, FsModel, Timestamp};
use crate::partition::{Partition, Scheme};
use crate::varint::{self, Reader};

/// The magic string in the header document.
pub const MAGIC: &str = "gammaray-index";
/// The format version this code writes and reads.
pub const VERSION: i32 = 1;
/// Rows per column chunk.
pub const CHUNK_ROWS: usize = 65536;
/// Largest document accepted when reading (a corrupt length must not
/// allocate gigabytes).
pub const MAX_DOC_BYTES: usize = 256 << 20;

/// A disk's index: its partition table and one model per file system found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIndex {
    /// Size of the disk image in bytes.
    pub disk_size: u64,
    /// Partition table kind.
    pub scheme: Scheme,
    /// All partitions, with or without a recognised file system.
    pub partitions: Vec<Partition>,
    /// (partition number, model) for each indexed file system.
    pub filesystems: Vec<(u32, FsModel)>,
}

fn bin(bytes: Vec<u8>) -> Bson {
    Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    })
}

fn err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Index {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn owner_code(o: Owner) -> (u8, u64, u64) {
    match o {
        Owner::FileData { file, logical } => (0, file, logical),
        Owner::Unwritten { file, logical } => (1, file, logical),
        Owner::DirData { file, logical } => (2, file, logical),
        Owner::ExtentTree { file } => (3, file, 0),
        Owner::Indirect { file } => (4, file, 0),
        Owner::Xattr { file } => (5, file, 0),
        Owner::InodeTable { group } => (6, group, 0),
        Owner::BlockBitmap { group } => (7, group, 0),
        Owner::InodeBitmap { group } => (8, group, 0),
        Owner::GroupDescriptors { group } => (9, group, 0),
        Owner::Superblock => (10, 0, 0),
        Owner::SuperblockBackup { group } => (11, group, 0),
        Owner::Journal { logical } => (12, 0, logical),
        Owner::OtherMetadata => (13, 0, 0),
    }
}

fn owner_from_code(code: u8, a: u64, b: u64) -> Option<Owner> {
    Some(match code {
        0 => Owner::FileData {
            file: a,
            logical: b,
        },
        1 => Owner::Unwritten {
            file: a,
            logical: b,
        },
        2 => Owner::DirData {
            file: a,
            logical: b,
        },
        3 => Owner::ExtentTree { file: a },
        4 => Owner::Indirect { file: a },
        5 => Owner::Xattr { file: a },
        6 => Owner::InodeTable { group: a },
        7 => Owner::BlockBitmap { group: a },
        8 => Owner::InodeBitmap { group: a },
        9 => Owner::GroupDescriptors { group: a },
        10 => Owner::Superblock,
        11 => Owner::SuperblockBackup { group: a },
        12 => Owner::Journal { logical: b },
        13 => Owner::OtherMetadata,
        _ => return None,
    })
}

/// Writes `index` to `path` (via a temporary file, renamed into place) and
/// returns the index's size in bytes.
pub fn write_index(path: &Path, index: &DiskIndex) -> Result<u64> {
    let tmp = path.with_extension("gammaray.tmp");
    let io = |e: std::io::Error| err(path, e.to_string());
    let file = File::create(&tmp).map_err(io)?;
    let mut gz = GzEncoder::new(BufWriter::with_capacity(1 << 20, file), Compression::new(6));
    let mut put = |d: Document| -> Result<()> {
        let bytes = d.to_vec().map_err(|e| err(path, e.to_string()))?;
        gz.write_all(&bytes).map_err(io)
    };
    let parts: Vec<Bson> = index
        .partitions
        .iter()
        .map(|p| {
            Bson::Document(doc! {
                "number": i64::from(p.number),
                "start": p.start as i64,
                "len": p.len as i64,
                "scheme": p.scheme.as_str(),
                "type_id": p.type_id.clone(),
            })
        })
        .collect();
    put(doc! {
        "kind": "header",
        "magic": MAGIC,
        "version": VERSION,
        "disk_size": index.disk_size as i64,
        "scheme": index.scheme.as_str(),
        "partitions": parts,
    })?;
    let mut totals = (0i64, 0i64, 0i64);
    for (part, m) in &index.filesystems {
        let part = i64::from(*part);
        let mut fs = doc! {
            "kind": "fs",
            "part": part,
            "fs_type": m.fs_type.clone(),
            "block_size": i64::from(m.block_size),
            "root": m.root as i64,
        };
        if let Some(h) = &m.mount_hint {
            fs.insert("mount_hint", h.clone());
        }
        put(fs)?;
        let files: Vec<&FileRecord> = m.files.values().collect();
        for chunk in files.chunks(CHUNK_ROWS) {
            put(files_doc(part, chunk))?;
        }
        totals.0 += files.len() as i64;
        let mut dirs: Vec<_> = m.tree.dirs().collect();
        dirs.sort_unstable_by_key(|(d, _)| *d);
        let mut rows: Vec<(u64, &crate::model::Entry)> = Vec::with_capacity(m.tree.len());
        for (d, entries) in dirs {
            rows.extend(entries.iter().map(|e| (d, e)));
        }
        for chunk in rows.chunks(CHUNK_ROWS) {
            put(names_doc(part, chunk))?;
        }
        totals.1 += rows.len() as i64;
        let mut chunk: Vec<crate::blockmap::Run> = Vec::with_capacity(CHUNK_ROWS);
        for run in m.blocks.runs() {
            chunk.push(*run);
            if chunk.len() == CHUNK_ROWS {
                put(blocks_doc(part, &chunk))?;
                chunk.clear();
            }
        }
        if !chunk.is_empty() {
            put(blocks_doc(part, &chunk))?;
        }
        totals.2 += m.blocks.len() as i64;
        let mut inline: Vec<_> = m.inline.iter().collect();
        inline.sort_unstable_by_key(|(f, _)| **f);
        for (file, data) in inline {
            put(
                doc! {"kind": "inline", "part": part, "file": *file as i64, "data": bin(data.clone())},
            )?;
        }
    }
    put(doc! {"kind": "end", "files": totals.0, "names": totals.1, "runs": totals.2})?;
    let mut w = gz.finish().map_err(io)?;
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(std::fs::metadata(path).map_err(io)?.len())
}

fn files_doc(part: i64, files: &[&FileRecord]) -> Document {
    let mut id = Vec::new();
    let mut ftype = Vec::with_capacity(files.len());
    let (mut mode, mut uid, mut gid, mut size, mut nlink) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut secs: [Vec<u8>; 4] = Default::default();
    let mut nsecs: [Vec<u8>; 4] = Default::default();
    let (mut trow, mut tlen, mut tbytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut prev_id = 0u64;
    let mut prev_sec = [0i64; 4];
    let (mut prev_uid, mut prev_gid) = (0i64, 0i64);
    for (row, f) in files.iter().enumerate() {
        varint::put(&mut id, f.id.wrapping_sub(prev_id));
        prev_id = f.id;
        ftype.push(f.ftype as u8);
        varint::put(&mut mode, u64::from(f.mode));
        varint::put_signed(&mut uid, i64::from(f.uid) - prev_uid);
        prev_uid = i64::from(f.uid);
        varint::put_signed(&mut gid, i64::from(f.gid) - prev_gid);
        prev_gid = i64::from(f.gid);
        varint::put(&mut size, f.size);
        varint::put(&mut nlink, u64::from(f.nlink));
        for (i, t) in [f.atime, f.mtime, f.ctime, f.crtime].iter().enumerate() {
            varint::put_signed(&mut secs[i], t.sec.wrapping_sub(prev_sec[i]));
            prev_sec[i] = t.sec;
            varint::put(&mut nsecs[i], u64::from(t.nsec));
        }
        if let Some(t) = &f.target {
            varint::put(&mut trow, row as u64);
            varint::put(&mut tlen, t.len() as u64);
            tbytes.extend_from_slice(t);
        }
    }
    let [as_, ms, cs, crs] = secs;
    let [an, mn, cn, crn] = nsecs;
    doc! {
        "kind": "files", "part": part, "n": files.len() as i64,
        "id": bin(id), "type": bin(ftype), "mode": bin(mode), "uid": bin(uid), "gid": bin(gid),
        "size": bin(size), "nlink": bin(nlink),
        "atime": bin(as_), "atime_ns": bin(an), "mtime": bin(ms), "mtime_ns": bin(mn),
        "ctime": bin(cs), "ctime_ns": bin(cn), "crtime": bin(crs), "crtime_ns": bin(crn),
        "target_row": bin(trow), "target_len": bin(tlen), "target": bin(tbytes),
    }
}

fn names_doc(part: i64, rows: &[(u64, &crate::model::Entry)]) -> Document {
    let (mut dir, mut child, mut len, mut names) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut prev_dir, mut prev_child) = (0u64, 0i64);
    for (d, e) in rows {
        varint::put(&mut dir, d.wrapping_sub(prev_dir));
        prev_dir = *d;
        varint::put_signed(&mut child, (e.child as i64).wrapping_sub(prev_child));
        prev_child = e.child as i64;
        varint::put(&mut len, e.name.len() as u64);
        names.extend_from_slice(&e.name);
    }
    doc! {
        "kind": "names", "part": part, "n": rows.len() as i64,
        "dir": bin(dir), "child": bin(child), "name_len": bin(len), "name": bin(names),
    }
}

fn blocks_doc(part: i64, runs: &[crate::blockmap::Run]) -> Document {
    let (mut start, mut len, mut tag, mut a, mut b) = (
        Vec::new(),
        Vec::new(),
        Vec::with_capacity(runs.len()),
        Vec::new(),
        Vec::new(),
    );
    let (mut prev_end, mut prev_a, mut prev_b) = (0u64, 0i64, 0i64);
    for r in runs {
        varint::put(&mut start, r.start.wrapping_sub(prev_end));
        prev_end = r.end();
        varint::put(&mut len, r.len);
        let (t, x, y) = owner_code(r.owner);
        tag.push(t);
        varint::put_signed(&mut a, (x as i64).wrapping_sub(prev_a));
        prev_a = x as i64;
        varint::put_signed(&mut b, (y as i64).wrapping_sub(prev_b));
        prev_b = y as i64;
    }
    doc! {
        "kind": "blocks", "part": part, "n": runs.len() as i64,
        "start": bin(start), "len": bin(len), "tag": bin(tag), "a": bin(a), "b": bin(b),
    }
}

/// Reads an index written by [`write_index`].
pub fn read_index(path: &Path) -> Result<DiskIndex> {
    let io = |e: std::io::Error| err(path, e.to_string());
    let file = File::open(path).map_err(io)?;
    let mut r = MultiGzDecoder::new(BufReader::with_capacity(1 << 20, file));
    let mut header: Option<DiskIndex> = None;
    let mut ended = false;
    let mut buf = Vec::new();
    // Files are gathered per partition and the maps built in one go at the
    // end: a bulk-built BTreeMap has full nodes, one built by repeated
    // inserts has half-empty ones (twice the memory).
    let mut pending: Vec<(u32, Vec<(u64, FileRecord)>)> = Vec::new();
    while read_doc(&mut r, &mut buf).map_err(|d| err(path, d))? {
        let raw = RawDocumentBuf::from_bytes(std::mem::take(&mut buf))
            .map_err(|e| err(path, format!("bad BSON document: {e}")))?;
        let kind = raw
            .get_str("kind")
            .map_err(|e| err(path, format!("document without kind: {e}")))?;
        if kind == "header" {
            header = Some(read_header(&raw).map_err(|d| err(path, d))?);
            continue;
        }
        let Some(index) = header.as_mut() else {
            return Err(err(path, "not a gammaray index (no header document first)"));
        };
        let result = match kind {
            "fs" => read_fs(&raw).map(|(p, m)| index.filesystems.push((p, m))),
            "files" => {
                let part = get_u32(&raw, "part").map_err(|d| err(path, d))?;
                let slot = match pending.iter_mut().find(|(p, _)| *p == part) {
                    Some(slot) => slot,
                    None => {
                        pending.push((part, Vec::new()));
                        pending.last_mut().ok_or_else(|| err(path, "unreachable"))?
                    }
                };
                read_files(&raw, &mut slot.1)
            }
            "names" => with_fs(index, &raw).and_then(|m| read_names(&raw, m)),
            "blocks" => with_fs(index, &raw).and_then(|m| read_blocks(&raw, m)),
            "inline" => with_fs(index, &raw).and_then(|m| {
                let file = get_u64(&raw, "file")?;
                let data = get_bin(&raw, "data")?.to_vec();
                m.inline.insert(file, data);
                Ok(())
            }),
            "end" => {
                ended = true;
                Ok(())
            }
            _ => Ok(()), // a newer writer's extra kind: skip
        };
        result.map_err(|d| err(path, format!("{kind} document: {d}")))?;
        buf = raw.into_bytes();
    }
    let Some(mut index) = header else {
        return Err(err(path, "empty file: no header document"));
    };
    if !ended {
        return Err(err(path, "truncated: no end document"));
    }
    for (part, m) in &mut index.filesystems {
        m.blocks.finish();
        m.tree.shrink_to_fit();
        if let Some(pos) = pending.iter().position(|(p, _)| p == part) {
            let (_, files) = pending.swap_remove(pos);
            m.files = files.into_iter().collect();
        }
    }
    Ok(index)
}

/// Reads one length-prefixed BSON document into `buf`; false at a clean
/// end of stream.
fn read_doc(r: &mut impl Read, buf: &mut Vec<u8>) -> std::result::Result<bool, String> {
    let mut len = [0u8; 4];
    match r.read(&mut len[..1]) {
        Ok(0) => return Ok(false),
        Ok(_) => {}
        Err(e) => return Err(e.to_string()),
    }
    r.read_exact(&mut len[1..]).map_err(|e| e.to_string())?;
    let n = i32::from_le_bytes(len);
    let n = usize::try_from(n).map_err(|_| format!("negative document length {n}"))?;
    if !(5..=MAX_DOC_BYTES).contains(&n) {
        return Err(format!("document length {n} outside 5..={MAX_DOC_BYTES}"));
    }
    buf.clear();
    buf.extend_from_slice(&len);
    buf.resize(n, 0);
    r.read_exact(&mut buf[4..])
        .map_err(|e| format!("truncated document: {e}"))?;
    Ok(true)
}

fn get_u64(d: &bson::RawDocument, key: &str) -> std::result::Result<u64, String> {
    let v = match d.get(key).map_err(|e| e.to_string())? {
        Some(bson::RawBsonRef::Int64(v)) => v,
        Some(bson::RawBsonRef::Int32(v)) => i64::from(v),
        other => return Err(format!("field {key}: expected an integer, found {other:?}")),
    };
    u64::try_from(v).map_err(|_| format!("field {key}: negative value {v}"))
}

fn get_bin<'a>(d: &'a bson::RawDocument, key: &str) -> std::result::Result<&'a [u8], String> {
    d.get_binary(key)
        .map(|b| b.bytes)
        .map_err(|e| format!("field {key}: {e}"))
}

fn get_u32(d: &bson::RawDocument, key: &str) -> std::result::Result<u32, String> {
    let v = get_u64(d, key)?;
    u32::try_from(v).map_err(|_| format!("field {key}: {v} does not fit in 32 bits"))
}

fn scheme_from(s: &str) -> std::result::Result<Scheme, String> {
    match s {
        "none" => Ok(Scheme::None),
        "mbr" => Ok(Scheme::Mbr),
        "gpt" => Ok(Scheme::Gpt),
        other => Err(format!("unknown partition scheme {other:?}")),
    }
}

fn read_header(d: &bson::RawDocument) -> std::result::Result<DiskIndex, String> {
    let magic = d.get_str("magic").map_err(|e| e.to_string())?;
    if magic != MAGIC {
        return Err(format!("magic {magic:?}, expected {MAGIC:?}"));
    }
    let version = d.get_i32("version").map_err(|e| e.to_string())?;
    if version != VERSION {
        return Err(format!(
            "index version {version}; this gammaray reads version {VERSION} (re-crawl the disk)"
        ));
    }
    let mut partitions = Vec::new();
    for p in d.get_array("partitions").map_err(|e| e.to_string())? {
        let p = p.map_err(|e| e.to_string())?;
        let p = p
            .as_document()
            .ok_or_else(|| "partition is not a document".to_string())?;
        partitions.push(Partition {
            number: get_u32(p, "number")?,
            start: get_u64(p, "start")?,
            len: get_u64(p, "len")?,
            scheme: scheme_from(p.get_str("scheme").map_err(|e| e.to_string())?)?,
            type_id: p.get_str("type_id").map_err(|e| e.to_string())?.to_string(),
        });
    }
    Ok(DiskIndex {
        disk_size: get_u64(d, "disk_size")?,
        scheme: scheme_from(d.get_str("scheme").map_err(|e| e.to_string())?)?,
        partitions,
        filesystems: Vec::new(),
    })
}

fn read_fs(d: &bson::RawDocument) -> std::result::Result<(u32, FsModel), String> {
    let mut m = FsModel::new(
        d.get_str("fs_type").map_err(|e| e.to_string())?,
        get_u32(d, "block_size")?,
        get_u64(d, "root")?,
    );
    m.mount_hint = d.get_str("mount_hint").ok().map(str::to_string);
    Ok((get_u32(d, "part")?, m))
}

fn with_fs<'a>(
    index: &'a mut DiskIndex,
    d: &bson::RawDocument,
) -> std::result::Result<&'a mut FsModel, String> {
    let part = get_u32(d, "part")?;
    index
        .filesystems
        .iter_mut()
        .rev()
        .find(|(p, _)| *p == part)
        .map(|(_, m)| m)
        .ok_or_else(|| format!("data for partition {part} before its fs document"))
}

fn rows(d: &bson::RawDocument) -> std::result::Result<usize, String> {
    let n = get_u64(d, "n")?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= CHUNK_ROWS)
        .ok_or_else(|| format!("chunk of {n} rows, at most {CHUNK_ROWS} allowed"))
}

fn col<'a>(d: &'a bson::RawDocument, key: &'static str) -> std::result::Result<Reader<'a>, String> {
    Ok(Reader::new(get_bin(d, key)?, key))
}

fn read_files(
    d: &bson::RawDocument,
    out: &mut Vec<(u64, FileRecord)>,
) -> std::result::Result<(), String> {
    let n = rows(d)?;
    let e = |e: Error| e.to_string();
    let ftype = get_bin(d, "type")?;
    if ftype.len() != n {
        return Err(format!(
            "type column has {} rows, expected {n}",
            ftype.len()
        ));
    }
    let (mut id, mut mode, mut uid, mut gid, mut size, mut nlink) = (
        col(d, "id")?,
        col(d, "mode")?,
        col(d, "uid")?,
        col(d, "gid")?,
        col(d, "size")?,
        col(d, "nlink")?,
    );
    let mut secs = [
        col(d, "atime")?,
        col(d, "mtime")?,
        col(d, "ctime")?,
        col(d, "crtime")?,
    ];
    let mut nsecs = [
        col(d, "atime_ns")?,
        col(d, "mtime_ns")?,
        col(d, "ctime_ns")?,
        col(d, "crtime_ns")?,
    ];
    let (mut trow, mut tlen, mut tbytes) = (
        col(d, "target_row")?,
        col(d, "target_len")?,
        col(d, "target")?,
    );
    let mut next_target = trow.next_u64().ok();
    let mut prev_id = 0u64;
    let mut prev_sec = [0i64; 4];
    let (mut prev_uid, mut prev_gid) = (0i64, 0i64);
    for (row, &code) in ftype.iter().enumerate() {
        let fid = prev_id.wrapping_add(id.next_u64().map_err(e)?);
        prev_id = fid;
        prev_uid = prev_uid.wrapping_add(uid.next_signed().map_err(e)?);
        prev_gid = prev_gid.wrapping_add(gid.next_signed().map_err(e)?);
        let mut t = [Timestamp::default(); 4];
        for i in 0..4 {
            prev_sec[i] = prev_sec[i].wrapping_add(secs[i].next_signed().map_err(e)?);
            t[i] = Timestamp {
                sec: prev_sec[i],
                nsec: u32::try_from(nsecs[i].next_u64().map_err(e)?)
                    .map_err(|_| "nanoseconds out of range".to_string())?,
            };
        }
        let target = if next_target == Some(row as u64) {
            let len = usize::try_from(tlen.next_u64().map_err(e)?).map_err(|e| e.to_string())?;
            let bytes = tbytes.bytes(len).map_err(e)?;
            next_target = trow.next_u64().ok();
            Some(bytes.into())
        } else {
            None
        };
        let rec = FileRecord {
            id: fid,
            ftype: FileType::from_code(code).ok_or_else(|| format!("file type code {code}"))?,
            mode: u16::try_from(mode.next_u64().map_err(e)?).map_err(|_| "mode out of range")?,
            uid: u32::try_from(prev_uid).map_err(|_| "uid out of range")?,
            gid: u32::try_from(prev_gid).map_err(|_| "gid out of range")?,
            size: size.next_u64().map_err(e)?,
            nlink: u32::try_from(nlink.next_u64().map_err(e)?).map_err(|_| "nlink out of range")?,
            atime: t[0],
            mtime: t[1],
            ctime: t[2],
            crtime: t[3],
            target,
        };
        out.push((fid, rec));
    }
    Ok(())
}

fn read_names(d: &bson::RawDocument, m: &mut FsModel) -> std::result::Result<(), String> {
    let n = rows(d)?;
    let e = |e: Error| e.to_string();
    let (mut dir, mut child, mut len, mut names) = (
        col(d, "dir")?,
        col(d, "child")?,
        col(d, "name_len")?,
        col(d, "name")?,
    );
    let (mut prev_dir, mut prev_child) = (0u64, 0i64);
    for _ in 0..n {
        prev_dir = prev_dir.wrapping_add(dir.next_u64().map_err(e)?);
        prev_child = prev_child.wrapping_add(child.next_signed().map_err(e)?);
        let l = usize::try_from(len.next_u64().map_err(e)?).map_err(|e| e.to_string())?;
        m.tree
            .add(prev_dir, names.bytes(l).map_err(e)?, prev_child as u64);
    }
    Ok(())
}

fn read_blocks(d: &bson::RawDocument, m: &mut FsModel) -> std::result::Result<(), String> {
    let n = rows(d)?;
    let e = |e: Error| e.to_string();
    let tags = get_bin(d, "tag")?;
    if tags.len() != n {
        return Err(format!("tag column has {} rows, expected {n}", tags.len()));
    }
    let (mut start, mut len, mut a, mut b) =
        (col(d, "start")?, col(d, "len")?, col(d, "a")?, col(d, "b")?);
    let (mut prev_end, mut prev_a, mut prev_b) = (0u64, 0i64, 0i64);
    for &tag in tags {
        let s = prev_end.wrapping_add(start.next_u64().map_err(e)?);
        let l = len.next_u64().map_err(e)?;
        prev_end = s.saturating_add(l);
        prev_a = prev_a.wrapping_add(a.next_signed().map_err(e)?);
        prev_b = prev_b.wrapping_add(b.next_signed().map_err(e)?);
        let owner = owner_from_code(tag, prev_a as u64, prev_b as u64)
            .ok_or_else(|| format!("unknown block owner tag {tag}"))?;
        m.blocks.push(s, l, owner);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DiskIndex {
        let mut m = FsModel::new("ext4", 4096, 2);
        m.mount_hint = Some("/".into());
        for id in [2u64, 11, 12, 4000] {
            m.files.insert(
                id,
                FileRecord {
                    id,
                    ftype: if id == 12 {
                        FileType::Symlink
                    } else {
                        FileType::Dir
                    },
                    mode: 0o755,
                    uid: 1000,
                    gid: 4_000_000_000,
                    size: id * 3,
                    nlink: 2,
                    atime: Timestamp {
                        sec: -5,
                        nsec: 999_999_999,
                    },
                    mtime: Timestamp {
                        sec: 1_700_000_000,
                        nsec: 1,
                    },
                    ctime: Timestamp {
                        sec: 1_600_000_000,
                        nsec: 0,
                    },
                    crtime: Timestamp::default(),
                    target: (id == 12).then(|| b"/etc/\xffpasswd".to_vec().into()),
                },
            );
        }
        m.tree.add(2, b"lost+found", 11);
        m.tree.add(2, b"link", 12);
        m.tree.add(11, b"deep", 4000);
        m.blocks.push(0, 1, Owner::Superblock);
        m.blocks.push(
            100,
            5,
            Owner::FileData {
                file: 4000,
                logical: 7,
            },
        );
        m.blocks.push(50, 2, Owner::InodeTable { group: 3 });
        m.blocks.push(1 << 40, 2, Owner::Journal { logical: 9 });
        m.blocks.finish();
        m.inline.insert(11, b"tiny".to_vec());
        DiskIndex {
            disk_size: 1 << 30,
            scheme: Scheme::Gpt,
            partitions: vec![Partition {
                number: 2,
                start: 1 << 20,
                len: 1 << 29,
                scheme: Scheme::Gpt,
                type_id: "0fc63daf-8483-4772-8e79-3d69d8477de4".into(),
            }],
            filesystems: vec![(2, m)],
        }
    }

    #[test]
    fn index_round_trips_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.gammaray");
        let index = sample();
        write_index(&path, &index).unwrap();
        let back = read_index(&path).unwrap();
        // Tree entry order inside a directory is not preserved by HashMap
        // iteration; compare sorted entries.
        let sorted = |m: &FsModel| {
            let mut v: Vec<_> = m
                .tree
                .dirs()
                .flat_map(|(d, es)| es.iter().map(move |e| (d, e.name.clone(), e.child)))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            sorted(&back.filesystems[0].1),
            sorted(&index.filesystems[0].1)
        );
        assert_eq!(back.filesystems[0].1.files, index.filesystems[0].1.files);
        assert_eq!(back.filesystems[0].1.blocks, index.filesystems[0].1.blocks);
        assert_eq!(back.filesystems[0].1.inline, index.filesystems[0].1.inline);
        assert_eq!(back.partitions, index.partitions);
        assert_eq!(back.disk_size, index.disk_size);
    }

    #[test]
    fn truncated_index_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.gammaray");
        write_index(&path, &sample()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 9] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(read_index(&path).is_err(), "cut at {cut}");
        }
    }
}
