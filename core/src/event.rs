//! File events: what gammaray tells subscribers about a guest's files.
//!
//! A [`FileEvent`] is produced by a file system's inference (see
//! [`crate::infer`]); the engine adds the VM's identity and a sequence number
//! and hands it to sinks. [`FileEvent::to_json`] gives the JSON-lines shape
//! of DESIGN.md; [`FileEvent::to_bson`] the same fields as a BSON document
//! (Redis payloads), with the data as BSON binary instead of base64.

use bytes::Bytes;
use serde::Serialize;

use crate::model::{FileId, FileType};

/// What happened to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A new name: a new file, directory, symlink, or a hard link.
    Create,
    /// A name went away.
    Delete,
    /// Contents or size changed.
    Modify,
    /// Metadata changed (mode, owner, times, link count).
    Attrib,
    /// A name moved (rename); `old_path` says from where.
    Move,
    /// A range of a file's data was not observed.
    Lost,
}

impl EventKind {
    /// The name used in JSON and in `--events` filters.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Delete => "delete",
            EventKind::Modify => "modify",
            EventKind::Attrib => "attrib",
            EventKind::Move => "move",
            EventKind::Lost => "lost",
        }
    }
}

/// Why a `lost` event was emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// Data writes were dropped under pressure (data-drop policy).
    DataDrop,
    /// A write to a not-yet-owned block was held longer than the TTL.
    UnknownTtl,
    /// A write to a not-yet-owned block was evicted by the byte budget.
    UnknownBudget,
    /// A sink could not keep up and dropped events.
    SinkOverflow,
    /// The bytes could not be read back from the disk.
    Unreadable,
}

impl LostReason {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::DataDrop => "data_drop",
            LostReason::UnknownTtl => "unknown_ttl",
            LostReason::UnknownBudget => "unknown_budget",
            LostReason::SinkOverflow => "sink_overflow",
            LostReason::Unreadable => "unreadable",
        }
    }
}

/// One change to one file, before the engine stamps it with host, VM and
/// sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    /// Partition number (Linux numbering, 1 for an unpartitioned disk).
    pub part: u32,
    /// What happened.
    pub kind: EventKind,
    /// The file's path (for `delete`, the path it had; for `move`, the new
    /// one). Non-UTF-8 bytes are replaced.
    pub path: String,
    /// For `move`: the path before.
    pub old_path: Option<String>,
    /// File type.
    pub ftype: FileType,
    /// Inode (or MFT record) number.
    pub inode: FileId,
    /// The file's size after the change, where known.
    pub size: Option<u64>,
    /// For `modify` with data and for `lost`: first byte of the range.
    pub offset: Option<u64>,
    /// Length of the range.
    pub len: Option<u64>,
    /// For `modify`: the bytes of the range (clipped to the file size).
    pub data: Option<Bytes>,
    /// For `attrib`: the fields that changed.
    pub changed: Vec<&'static str>,
    /// For `lost`: why.
    pub reason: Option<LostReason>,
    /// Time of the write that completed this change (ns since the epoch,
    /// 0 when unknown).
    pub ts_ns: u64,
}

impl FileEvent {
    /// An event with only the identifying fields set.
    pub fn new(part: u32, kind: EventKind, path: String, ftype: FileType, inode: FileId) -> Self {
        FileEvent {
            part,
            kind,
            path,
            old_path: None,
            ftype,
            inode,
            size: None,
            offset: None,
            len: None,
            data: None,
            changed: Vec::new(),
            reason: None,
            ts_ns: 0,
        }
    }

    /// The event as one line of JSON (no newline), in DESIGN.md's shape.
    pub fn to_json(&self, seq: u64, host: &str, vm: &str) -> String {
        use base64::Engine as _;
        let json = EventJson {
            seq,
            host,
            vm,
            part: self.part,
            path: &self.path,
            old_path: self.old_path.as_deref(),
            event: self.kind.as_str(),
            ftype: self.ftype.as_str(),
            inode: self.inode,
            size: self.size,
            offset: self.offset,
            len: self.len,
            changed: (!self.changed.is_empty()).then_some(&self.changed),
            reason: self.reason.map(LostReason::as_str),
        };
        // Serializing plain strings and numbers cannot fail.
        let mut out = serde_json::to_string(&json).unwrap_or_default();
        if let Some(data) = &self.data {
            // Base64 needs no JSON escaping: append it directly (escaping
            // checks would cost more than the encoding).
            if out.ends_with('}') {
                out.pop();
                out.reserve(data.len().div_ceil(3) * 4 + 16);
                out.push_str(",\"data_b64\":\"");
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut out);
                out.push_str("\"}");
            }
        }
        out
    }

    /// The event as a BSON document with exactly the fields and names of
    /// [`FileEvent::to_json`], in the same order, except that the data is
    /// `data` (BSON binary, generic subtype) instead of `data_b64`.
    ///
    /// Integers are BSON int64; a value above `i64::MAX` (only a hostile
    /// guest's file size can be that large) is written as a decimal string
    /// rather than wrapped.
    pub fn to_bson(&self, seq: u64, host: &str, vm: &str) -> bson::Document {
        use bson::Bson;
        let int = |v: u64| {
            i64::try_from(v)
                .map(Bson::Int64)
                .unwrap_or_else(|_| Bson::String(v.to_string()))
        };
        let mut d = bson::Document::new();
        d.insert("seq", int(seq));
        d.insert("host", host);
        d.insert("vm", vm);
        d.insert("part", Bson::Int64(i64::from(self.part)));
        d.insert("path", self.path.as_str());
        if let Some(old) = &self.old_path {
            d.insert("old_path", old.as_str());
        }
        d.insert("event", self.kind.as_str());
        d.insert("type", self.ftype.as_str());
        d.insert("inode", int(self.inode));
        for (key, v) in [
            ("size", self.size),
            ("offset", self.offset),
            ("len", self.len),
        ] {
            if let Some(v) = v {
                d.insert(key, int(v));
            }
        }
        if !self.changed.is_empty() {
            d.insert(
                "changed",
                self.changed
                    .iter()
                    .map(|c| Bson::String((*c).to_string()))
                    .collect::<Vec<_>>(),
            );
        }
        if let Some(r) = self.reason {
            d.insert("reason", r.as_str());
        }
        if let Some(data) = &self.data {
            d.insert(
                "data",
                bson::Binary {
                    subtype: bson::spec::BinarySubtype::Generic,
                    bytes: data.to_vec(),
                },
            );
        }
        d
    }

    /// The bytes of [`FileEvent::to_bson`]'s document, plus `extra` int64
    /// fields at its end, written directly (no intermediate document):
    /// several times faster, and equal byte for byte to
    /// `to_bson(..)` with `extra` inserted, then `to_vec()`.
    pub fn to_bson_bytes(&self, seq: u64, host: &str, vm: &str, extra: &[(&str, i64)]) -> Vec<u8> {
        let data_len = self.data.as_ref().map_or(0, |d| d.len());
        let mut w = RawBson::with_capacity(160 + self.path.len() + data_len);
        w.int("seq", seq);
        w.string("host", host);
        w.string("vm", vm);
        w.int64("part", i64::from(self.part));
        w.string("path", &self.path);
        if let Some(old) = &self.old_path {
            w.string("old_path", old);
        }
        w.string("event", self.kind.as_str());
        w.string("type", self.ftype.as_str());
        w.int("inode", self.inode);
        for (key, v) in [
            ("size", self.size),
            ("offset", self.offset),
            ("len", self.len),
        ] {
            if let Some(v) = v {
                w.int(key, v);
            }
        }
        if !self.changed.is_empty() {
            let at = w.open(0x04, "changed");
            for (i, c) in self.changed.iter().enumerate() {
                w.string(&i.to_string(), c);
            }
            w.close(at);
        }
        if let Some(r) = self.reason {
            w.string("reason", r.as_str());
        }
        if let Some(data) = &self.data {
            w.binary("data", data);
        }
        for (k, v) in extra {
            w.int64(k, *v);
        }
        w.finish()
    }

    /// The channel this event is published on: `host:vm:/path`.
    pub fn channel(&self, host: &str, vm: &str) -> String {
        format!("{host}:{vm}:{}", self.path)
    }
}

#[derive(Serialize)]
struct EventJson<'a> {
    seq: u64,
    host: &'a str,
    vm: &'a str,
    part: u32,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_path: Option<&'a str>,
    event: &'static str,
    #[serde(rename = "type")]
    ftype: &'static str,
    inode: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<&'a Vec<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// A BSON document written straight into bytes (the subset events use).
struct RawBson(Vec<u8>);

impl RawBson {
    fn with_capacity(n: usize) -> Self {
        let mut v = Vec::with_capacity(n);
        v.extend_from_slice(&[0; 4]);
        RawBson(v)
    }

    fn key(&mut self, kind: u8, key: &str) {
        self.0.push(kind);
        self.0.extend_from_slice(key.as_bytes());
        self.0.push(0);
    }

    fn int64(&mut self, key: &str, v: i64) {
        self.key(0x12, key);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// As `to_bson`: int64, or a decimal string above `i64::MAX`.
    fn int(&mut self, key: &str, v: u64) {
        match i64::try_from(v) {
            Ok(i) => self.int64(key, i),
            Err(_) => self.string(key, &v.to_string()),
        }
    }

    fn string(&mut self, key: &str, v: &str) {
        self.key(0x02, key);
        let n = u32::try_from(v.len() + 1).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&n.to_le_bytes());
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
    }

    fn binary(&mut self, key: &str, v: &[u8]) {
        self.key(0x05, key);
        let n = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&n.to_le_bytes());
        self.0.push(0x00);
        self.0.extend_from_slice(v);
    }

    /// Starts an embedded document or array; returns where it starts.
    fn open(&mut self, kind: u8, key: &str) -> usize {
        self.key(kind, key);
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        at
    }

    fn close(&mut self, at: usize) {
        self.0.push(0);
        let n = u32::try_from(self.0.len() - at).unwrap_or(u32::MAX);
        self.0[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        self.close(0);
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_design_fields_and_base64_data() {
        let mut e = FileEvent::new(
            1,
            EventKind::Modify,
            "/var/log/app.log".into(),
            FileType::File,
            12,
        );
        e.size = Some(4096);
        e.offset = Some(3000);
        e.len = Some(3);
        e.data = Some(Bytes::from_static(b"abc"));
        let v: serde_json::Value = serde_json::from_str(&e.to_json(7, "h", "v")).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["event"], "modify");
        assert_eq!(v["type"], "file");
        assert_eq!(v["data_b64"], "YWJj");
        assert!(v.get("old_path").is_none());
        assert!(v.get("changed").is_none());
    }

    #[test]
    fn bson_has_the_json_fields_and_binary_data() {
        let mut e = FileEvent::new(
            2,
            EventKind::Attrib,
            "/etc/passwd".into(),
            FileType::File,
            14,
        );
        e.changed = vec!["mode", "uid"];
        e.size = Some(u64::MAX);
        let d = e.to_bson(9, "h", "v");
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["seq", "host", "vm", "part", "path", "event", "type", "inode", "size", "changed"]
        );
        assert_eq!(d.get_i64("seq").unwrap(), 9);
        assert_eq!(d.get_i64("part").unwrap(), 2);
        assert_eq!(d.get_str("event").unwrap(), "attrib");
        assert_eq!(d.get_str("size").unwrap(), u64::MAX.to_string());
        let mut m = FileEvent::new(1, EventKind::Modify, "/f".into(), FileType::File, 12);
        m.offset = Some(3);
        m.len = Some(3);
        m.data = Some(Bytes::from_static(b"a\0c"));
        let d = m.to_bson(1, "h", "v");
        assert_eq!(d.get_binary_generic("data").unwrap(), b"a\0c");
        assert!(d.get("data_b64").is_none());
    }

    #[test]
    fn bson_bytes_equal_the_bson_crates_encoding() {
        let mut events = Vec::new();
        let mut e = FileEvent::new(
            3,
            EventKind::Modify,
            "/var/log/a b\u{e9}".into(),
            FileType::File,
            7,
        );
        e.offset = Some(4096);
        e.len = Some(5);
        e.size = Some(u64::MAX);
        e.data = Some(bytes::Bytes::from_static(b"he\0lo"));
        events.push(e);
        let mut m = FileEvent::new(1, EventKind::Move, "/new".into(), FileType::Dir, 2);
        m.old_path = Some("/old".into());
        events.push(m);
        let mut a = FileEvent::new(
            1,
            EventKind::Attrib,
            "/etc/passwd".into(),
            FileType::File,
            12,
        );
        a.changed = vec!["mode", "uid", "gid"];
        events.push(a);
        let mut l = FileEvent::new(2, EventKind::Lost, "/x".into(), FileType::File, 9);
        l.reason = Some(LostReason::DataDrop);
        events.push(l);
        for e in &events {
            for extra in [&[][..], &[("piece", 1i64), ("pieces", 3i64)][..]] {
                let mut d = e.to_bson(u64::MAX, "h", "v");
                for (k, v) in extra {
                    d.insert(*k, *v);
                }
                assert_eq!(
                    e.to_bson_bytes(u64::MAX, "h", "v", extra),
                    d.to_vec().unwrap(),
                    "{e:?}"
                );
            }
        }
    }
}
