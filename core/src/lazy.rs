//! The lazy-load store: one file system's per-file metadata kept in a
//! scratch file on the host, read back one file at a time.
//!
//! Under the lazy-load policy (the paper's section VI-B) an inference keeps
//! resident only the block-owner map and the metadata of the files being
//! written; everything else lives here and is loaded when a write needs it.
//! [`MetaStore::create`] writes every file's [`FileMeta`] once, from a crawl
//! or index; [`MetaStore::save`] appends a newer version of one file (an
//! evicted file that changed while resident).
//!
//! # Layout
//!
//! The file starts with a slot table indexed by file id: slot `id` is 12
//! bytes at `id * 12`, the little-endian offset (`u64`, 0 for none) and
//! length (`u32`) of the file's record. Records follow the table, each a
//! sequence of varints (see [`crate::varint`]). A saved version is
//! appended and its slot rewritten; ids above the largest one written at
//! creation have no slot and are found through a map held in memory (one
//! entry per such file saved). The file only grows: every saved version
//! takes its own bytes (a long-lived engine whose guest churns through
//! many files grows it; it is not compacted).
//!
//! The scratch file is created in a directory of the host and unlinked at
//! once: it disappears with the process. It is read back with the same
//! bounds checks as guest data (a damaged scratch file gives an error, not
//! a panic).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::model::{Entry, FileId, FileRecord, FileType, FsModel, Timestamp};
use crate::name::Name;
use crate::varint::{self, Reader};
use crate::{Error, Result};

/// Bytes of one slot of the table.
const SLOT: u64 = 12;

/// Largest record read back (a directory of a million long names is far
/// below this).
pub const MAX_RECORD_BYTES: u32 = 1 << 30;

/// Slots are written in runs of at most this many bytes.
const TABLE_CHUNK: usize = 1 << 20;

/// Everything the model holds about one file, as the store keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    /// Its record (`None`: the id names no file in use).
    pub record: Option<FileRecord>,
    /// The directories that name it, with the names.
    pub names: Vec<(FileId, Name)>,
    /// Its names, if it is a directory.
    pub entries: Vec<Entry>,
    /// Contents stored inside the metadata (inline data), if any.
    pub inline: Option<Vec<u8>>,
}

impl FileMeta {
    /// Whether it holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.record.is_none()
            && self.names.is_empty()
            && self.entries.is_empty()
            && self.inline.is_none()
    }

    /// A rough count of the bytes it takes when resident in a model (for
    /// the resident-memory budget); see [`resident_estimate`].
    pub fn resident_bytes(&self) -> u64 {
        resident_estimate(
            self.record.as_ref(),
            &self.names,
            &self.entries,
            self.inline.as_deref(),
        )
    }
}

/// A rough count of the heap and inline bytes one file's metadata takes
/// when resident in a model: the record, its names both ways (a name of up
/// to 22 bytes lives inside its 24-byte value), inline data, and the map
/// slots that hold them.
pub fn resident_estimate(
    record: Option<&FileRecord>,
    names: &[(FileId, Name)],
    entries: &[Entry],
    inline: Option<&[u8]>,
) -> u64 {
    let rec = record.map_or(0, |r| {
        std::mem::size_of::<FileRecord>() + 16 + r.target.as_ref().map_or(0, |t| t.len())
    });
    let long = |n: &Name| if n.len() > 22 { n.len() } else { 0 };
    let names: usize = names.iter().map(|(_, n)| 40 + long(n)).sum();
    let entries: usize = entries.iter().map(|e| 40 + long(&e.name)).sum();
    let inline = inline.map_or(0, |v| v.len() + 40);
    (96 + rec + names + entries + inline) as u64
}

/// The scratch file of one file system's metadata. See the module docs.
#[derive(Debug)]
pub struct MetaStore {
    file: File,
    /// Slots in the table (ids `0..slots`).
    slots: u64,
    /// Where the saved ids past the table are.
    moved: HashMap<FileId, (u64, u32)>,
    /// End of the file: where the next record goes.
    end: u64,
    path: PathBuf,
}

impl MetaStore {
    /// Writes the metadata of every file in `ids` (ascending, without
    /// repeats), as `meta_of` gives it, to a new scratch file in `dir`.
    /// `meta_of` may move the metadata out of the caller's maps: nothing is
    /// kept here but where each record lies.
    pub fn create(
        dir: &Path,
        ids: &[FileId],
        mut meta_of: impl FnMut(FileId) -> FileMeta,
    ) -> Result<Self> {
        let (file, path) = scratch_file(dir)?;
        if ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(store_err(&path, "file ids not ascending"));
        }
        let slots = ids.last().map_or(0, |m| m.saturating_add(1));
        let table_len = slots
            .checked_mul(SLOT)
            .ok_or_else(|| store_err(&path, "file ids too large for the slot table"))?;
        let mut store = MetaStore {
            file,
            slots,
            moved: HashMap::new(),
            end: table_len,
            path,
        };
        // Records, buffered; slots gathered in runs of consecutive ids.
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &store.file);
        std::io::Seek::seek(&mut w, std::io::SeekFrom::Start(table_len))
            .map_err(|e| io_err(&store.path, table_len, e))?;
        let mut table: Vec<u8> = Vec::new();
        let mut table_first = 0u64;
        let mut buf = Vec::new();
        let mut next_id = 0u64;
        for &id in ids {
            let len = encode_record(&meta_of(id), &mut buf, &store.path)?;
            w.write_all(&buf)
                .map_err(|e| io_err(&store.path, store.end, e))?;
            if id != next_id || table.len() >= TABLE_CHUNK {
                write_table(&store.file, &store.path, table_first, &table)?;
                table.clear();
                table_first = id;
            }
            table.extend_from_slice(&slot(store.end, len));
            next_id = id.saturating_add(1);
            store.end += u64::from(len);
        }
        w.flush().map_err(|e| io_err(&store.path, store.end, e))?;
        drop(w);
        write_table(&store.file, &store.path, table_first, &table)?;
        Ok(store)
    }

    /// Writes every file of `model` (records, names both ways, inline
    /// data) to a new scratch file in `dir`, leaving `model` as it is.
    pub fn from_model(dir: &Path, model: &FsModel) -> Result<Self> {
        let mut metas: std::collections::BTreeMap<FileId, FileMeta> = Default::default();
        for (id, r) in &model.files {
            metas.entry(*id).or_default().record = Some(r.clone());
        }
        for (dir_id, entries) in model.tree.dirs() {
            metas.entry(dir_id).or_default().entries = entries.to_vec();
            for e in entries {
                metas
                    .entry(e.child)
                    .or_default()
                    .names
                    .push((dir_id, e.name.clone()));
            }
        }
        for (id, v) in &model.inline {
            metas.entry(*id).or_default().inline = Some(v.clone());
        }
        let ids: Vec<FileId> = metas.keys().copied().collect();
        MetaStore::create(dir, &ids, |id| metas.remove(&id).unwrap_or_default())
    }

    /// The metadata of file `id` (empty when the store has none).
    pub fn load(&self, id: FileId) -> Result<FileMeta> {
        let (off, len) = match self.moved.get(&id) {
            Some(&loc) => loc,
            None if id < self.slots => {
                let mut slot = [0u8; SLOT as usize];
                let at = id * SLOT;
                self.file
                    .read_exact_at(&mut slot, at)
                    .map_err(|e| io_err(&self.path, at, e))?;
                let (o, l) = slot.split_at(8);
                let off = u64::from_le_bytes(o.try_into().unwrap_or([0; 8]));
                let len = u32::from_le_bytes(l.try_into().unwrap_or([0; 4]));
                (off, len)
            }
            None => return Ok(FileMeta::default()),
        };
        if off == 0 || len == 0 {
            return Ok(FileMeta::default());
        }
        if len > MAX_RECORD_BYTES || off.saturating_add(u64::from(len)) > self.end {
            return Err(store_err(
                &self.path,
                format!("slot of file {id} points outside the store"),
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, off)
            .map_err(|e| io_err(&self.path, off, e))?;
        decode(id, &buf).map_err(|e| store_err(&self.path, format!("file {id}: {e}")))
    }

    /// Stores a newer version of file `id`'s metadata.
    pub fn save(&mut self, id: FileId, meta: &FileMeta) -> Result<()> {
        let mut buf = Vec::new();
        let len = encode_record(meta, &mut buf, &self.path)?;
        self.file
            .write_all_at(&buf, self.end)
            .map_err(|e| io_err(&self.path, self.end, e))?;
        if id < self.slots {
            // Its slot now points at the new version: nothing in memory.
            write_table(&self.file, &self.path, id, &slot(self.end, len))?;
        } else {
            self.moved.insert(id, (self.end, len));
        }
        self.end += u64::from(len);
        Ok(())
    }

    /// Every id the store may hold something for, ascending.
    pub fn ids(&self) -> Result<Vec<FileId>> {
        let mut ids: Vec<FileId> = self.moved.keys().copied().collect();
        let mut buf = vec![0u8; TABLE_CHUNK - TABLE_CHUNK % SLOT as usize];
        let per = (buf.len() as u64) / SLOT;
        let mut first = 0u64;
        while first < self.slots {
            let n = per.min(self.slots - first);
            let chunk = buf
                .get_mut(..(n * SLOT) as usize)
                .ok_or_else(|| store_err(&self.path, "slot table chunk"))?;
            self.file
                .read_exact_at(chunk, first * SLOT)
                .map_err(|e| io_err(&self.path, first * SLOT, e))?;
            for (k, slot) in chunk.chunks_exact(SLOT as usize).enumerate() {
                if slot.iter().any(|&b| b != 0) {
                    ids.push(first + k as u64);
                }
            }
            first += n;
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Bytes of the scratch file.
    pub fn file_bytes(&self) -> u64 {
        self.end
    }

    /// Files saved whose ids have no slot (the map held in memory).
    pub fn saved_files(&self) -> usize {
        self.moved.len()
    }
}

fn scratch_file(dir: &Path) -> Result<(File, PathBuf)> {
    let pid = std::process::id();
    for k in 0..1000u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(".gammaray-lazy-{pid}-{nanos:x}-{k}"));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                // Unlinked at once: it goes away with the process.
                std::fs::remove_file(&path).map_err(|e| io_err(&path, 0, e))?;
                return Ok((f, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&path, 0, e)),
        }
    }
    Err(store_err(dir, "no free scratch file name"))
}

/// `meta` encoded into `buf` (cleared first); its length.
fn encode_record(meta: &FileMeta, buf: &mut Vec<u8>, path: &Path) -> Result<u32> {
    buf.clear();
    encode(meta, buf);
    u32::try_from(buf.len())
        .ok()
        .filter(|&l| l <= MAX_RECORD_BYTES)
        .ok_or_else(|| store_err(path, "one file's metadata is too large"))
}

/// A slot of the table: where a record lies and its length.
fn slot(off: u64, len: u32) -> [u8; SLOT as usize] {
    let mut s = [0u8; SLOT as usize];
    s[..8].copy_from_slice(&off.to_le_bytes());
    s[8..].copy_from_slice(&len.to_le_bytes());
    s
}

fn write_table(file: &File, path: &Path, first: FileId, table: &[u8]) -> Result<()> {
    if table.is_empty() {
        return Ok(());
    }
    let at = first.saturating_mul(SLOT);
    file.write_all_at(table, at)
        .map_err(|e| io_err(path, at, e))
}

fn io_err(path: &Path, offset: u64, source: std::io::Error) -> Error {
    Error::Index {
        path: path.display().to_string(),
        detail: format!("lazy-load store: I/O error at byte {offset}: {source}"),
    }
}

fn store_err(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Index {
        path: path.display().to_string(),
        detail: format!("lazy-load store: {detail}"),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    varint::put(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    let (sec, nsec) = (t.sec, t.nsec);
    varint::put_signed(out, sec);
    varint::put(out, u64::from(nsec));
}

fn encode(m: &FileMeta, out: &mut Vec<u8>) {
    let flags = u64::from(m.record.is_some())
        | u64::from(m.record.as_ref().is_some_and(|r| r.target.is_some())) << 1
        | u64::from(m.inline.is_some()) << 2;
    varint::put(out, flags);
    if let Some(r) = &m.record {
        varint::put(out, r.ftype as u64);
        varint::put(out, u64::from(r.mode));
        varint::put(out, u64::from(r.uid));
        varint::put(out, u64::from(r.gid));
        varint::put(out, r.size);
        varint::put(out, u64::from(r.nlink));
        for t in [r.atime, r.mtime, r.ctime, r.crtime] {
            put_time(out, t);
        }
        if let Some(t) = &r.target {
            put_bytes(out, t);
        }
    }
    varint::put(out, m.names.len() as u64);
    for (d, n) in &m.names {
        varint::put(out, *d);
        put_bytes(out, n);
    }
    varint::put(out, m.entries.len() as u64);
    for e in &m.entries {
        varint::put(out, e.child);
        put_bytes(out, &e.name);
    }
    if let Some(v) = &m.inline {
        put_bytes(out, v);
    }
}

fn next_len(r: &mut Reader<'_>, max: usize) -> Result<usize> {
    let n = r.next_u64()?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| Error::Index {
            path: String::new(),
            detail: format!("length {n} exceeds the record"),
        })
}

fn next_u32(r: &mut Reader<'_>, what: &str) -> Result<u32> {
    let v = r.next_u64()?;
    u32::try_from(v).map_err(|_| Error::Index {
        path: String::new(),
        detail: format!("{what} {v} out of range"),
    })
}

fn next_time(r: &mut Reader<'_>) -> Result<Timestamp> {
    let sec = r.next_signed()?;
    let nsec = next_u32(r, "nanoseconds")?;
    Ok(Timestamp { sec, nsec })
}

fn decode(id: FileId, bytes: &[u8]) -> Result<FileMeta> {
    let mut r = Reader::new(bytes, "lazy-load record");
    let max = bytes.len();
    let flags = r.next_u64()?;
    let mut m = FileMeta::default();
    if flags & 1 != 0 {
        let code = r.next_u64()?;
        let ftype = u8::try_from(code)
            .ok()
            .and_then(FileType::from_code)
            .ok_or_else(|| Error::Index {
                path: String::new(),
                detail: format!("file type code {code}"),
            })?;
        let mode = u16::try_from(r.next_u64()?).map_err(|_| Error::Index {
            path: String::new(),
            detail: "mode out of range".into(),
        })?;
        let uid = next_u32(&mut r, "uid")?;
        let gid = next_u32(&mut r, "gid")?;
        let size = r.next_u64()?;
        let nlink = next_u32(&mut r, "nlink")?;
        let atime = next_time(&mut r)?;
        let mtime = next_time(&mut r)?;
        let ctime = next_time(&mut r)?;
        let crtime = next_time(&mut r)?;
        let target = if flags & 2 != 0 {
            let n = next_len(&mut r, max)?;
            Some(Box::from(r.bytes(n)?))
        } else {
            None
        };
        m.record = Some(FileRecord {
            id,
            ftype,
            mode,
            uid,
            gid,
            size,
            nlink,
            atime,
            mtime,
            ctime,
            crtime,
            target,
        });
    }
    let n = next_len(&mut r, max)?;
    m.names.reserve(n);
    for _ in 0..n {
        let d = r.next_u64()?;
        let len = next_len(&mut r, max)?;
        m.names.push((d, Name::from(r.bytes(len)?)));
    }
    let n = next_len(&mut r, max)?;
    m.entries.reserve(n);
    for _ in 0..n {
        let child = r.next_u64()?;
        let len = next_len(&mut r, max)?;
        m.entries.push(Entry {
            name: Name::from(r.bytes(len)?),
            child,
        });
    }
    if flags & 4 != 0 {
        let len = next_len(&mut r, max)?;
        m.inline = Some(r.bytes(len)?.to_vec());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: FileId, ftype: FileType, size: u64) -> FileRecord {
        FileRecord {
            id,
            ftype,
            mode: 0o644,
            uid: 4_000_000_000,
            gid: 7,
            size,
            nlink: 1,
            atime: Timestamp { sec: -5, nsec: 9 },
            mtime: Timestamp {
                sec: 1_700_000_000,
                nsec: 999_999_999,
            },
            ctime: Timestamp::default(),
            crtime: Timestamp { sec: 1, nsec: 0 },
            target: None,
        }
    }

    fn model() -> FsModel {
        let mut m = FsModel::new("ext4", 4096, 2);
        m.files.insert(2, rec(2, FileType::Dir, 4096));
        m.files.insert(11, rec(11, FileType::Dir, 4096));
        m.files.insert(12, rec(12, FileType::File, 10));
        let mut link = rec(40_000, FileType::Symlink, 3);
        link.target = Some(Box::from(&b"a/b"[..]));
        m.files.insert(40_000, link);
        m.tree.add(2, b"etc", 11);
        m.tree.add(11, b"passwd", 12);
        m.tree.add(2, b"pw-hardlink-with-a-name-longer-than-22", 12);
        m.tree.add(2, b"l", 40_000);
        m.inline.insert(12, b"root:x:0:0".to_vec());
        m
    }

    #[test]
    fn every_file_round_trips_and_saves_win() {
        let dir = tempfile::tempdir().unwrap();
        let m = model();
        let mut s = MetaStore::from_model(dir.path(), &m).unwrap();
        // Unlinked at once.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let pw = s.load(12).unwrap();
        assert_eq!(pw.record.as_ref(), m.files.get(&12));
        assert_eq!(pw.inline.as_deref(), Some(&b"root:x:0:0"[..]));
        let mut names: Vec<(u64, Vec<u8>)> =
            pw.names.iter().map(|(d, n)| (*d, n.to_vec())).collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                (2, b"pw-hardlink-with-a-name-longer-than-22".to_vec()),
                (11, b"passwd".to_vec())
            ]
        );
        let root = s.load(2).unwrap();
        assert_eq!(root.entries.len(), 3);
        assert_eq!(root.record.as_ref(), m.files.get(&2));
        assert_eq!(
            s.load(40_000).unwrap().record.as_ref(),
            m.files.get(&40_000)
        );
        // Ids with nothing, inside and past the table.
        assert!(s.load(13).unwrap().is_empty());
        assert!(s.load(1 << 40).unwrap().is_empty());
        assert_eq!(s.ids().unwrap(), vec![2, 11, 12, 40_000]);

        let mut newer = pw.clone();
        newer.record.as_mut().unwrap().size = 99;
        newer.inline = None;
        s.save(12, &newer).unwrap();
        let mut far = newer.clone();
        far.record.as_mut().unwrap().id = 1 << 40;
        s.save(1 << 40, &far).unwrap();
        assert_eq!(s.load(12).unwrap(), newer);
        assert_eq!(s.load(1 << 40).unwrap(), far);
        assert_eq!(s.ids().unwrap(), vec![2, 11, 12, 40_000, 1 << 40]);
        // File 12's slot was rewritten in place; only the id past the
        // table is in memory.
        assert_eq!(s.saved_files(), 1);
        // An id inside the table that had no slot gets one.
        let mut mid = newer.clone();
        mid.record.as_mut().unwrap().id = 13;
        s.save(13, &mid).unwrap();
        assert_eq!(s.load(13).unwrap(), mid);
        assert_eq!(s.ids().unwrap(), vec![2, 11, 12, 13, 40_000, 1 << 40]);
        assert_eq!(s.saved_files(), 1);
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let full = {
            let mut b = Vec::new();
            let m = model();
            let mut meta = FileMeta {
                record: m.files.get(&40_000).cloned(),
                ..FileMeta::default()
            };
            meta.names.push((2, Name::from(&b"l"[..])));
            meta.inline = Some(vec![1, 2, 3]);
            encode(&meta, &mut b);
            b
        };
        assert!(decode(40_000, &full).is_ok());
        for cut in 0..full.len() {
            assert!(decode(40_000, &full[..cut]).is_err(), "cut at {cut}");
        }
        // A huge length.
        let mut b = Vec::new();
        varint::put(&mut b, 0);
        varint::put(&mut b, u64::MAX);
        assert!(decode(1, &b).is_err());
    }
}
