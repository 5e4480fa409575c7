//! Checking gammaray's file events against what a guest workload did.
//!
//! A recording's `ops.txt` says, one `OP ...` line each, what the workload
//! did (paths from the file system's root, as in the state listing). An
//! events file (`gammaray replay --events`) says what gammaray inferred.
//! [`check`] holds one against the other: every operation that a `sync`
//! (an `OP sync` or `OP snapshot` line) follows must have its event.
//!
//! Matching rules (an operation on path `P`; "aliases of `P`" are `P` and
//! the names later `move` operations gave the same file or one of its
//! parent directories, because an inference that diffs whole journal
//! transactions reports a file under the name it has when the transaction
//! commits):
//!
//! | operation | needs |
//! |---|---|
//! | `create`, `mkdir`, `symlink`, `link`, `mkfifo`, `mknod` | `create` at an alias |
//! | `write P N` | `create` at an alias if `P` did not exist; `modify` events at aliases covering bytes `[0, N)` |
//! | `copy A B` | as `write B <size of A>` |
//! | `append P N` | `modify` covering `[size before, size before + N)` (and a `create` if `P` did not exist; likewise for `overwrite` and `truncate`) |
//! | `overwrite P OFF LEN` | `modify` covering `[OFF, OFF + LEN)` |
//! | `truncate P N` | a `modify` at an alias with `size` N (any size if a later operation before the next sync resizes it again) |
//! | `delete P`, `rmdir P` | `delete` of `P` |
//! | `delete_tree P` | `delete` of `P` and of every name known under it |
//! | `move A B` | `move` with `old_path` A and `path` an alias of B (a `delete` of a B it replaces is expected, not required) |
//! | `chmod` / `chown` / `touch` | `attrib` at an alias whose `changed` has `mode` / `uid` or `gid` / `mtime` |
//!
//! Relaxations, each for a reason:
//! - operations after the last sync are not required (they may never have
//!   reached the disk), but their events still count as expected;
//! - a name removed again before the next sync may never reach the disk
//!   as it was: no operation on it is required except the removal of a
//!   name that existed at the previous sync (a file written and then
//!   deleted between two syncs needs its `delete`, not its `modify`);
//! - `move A B` of a name created since the last sync may show as a
//!   `create` of B; `chmod`/`chown`/`touch` of a name created since the last
//!   sync may show only as its `create` (the inode is new, its attributes
//!   arrive with it);
//! - exact bytes: the `OP` lines carry sizes, not contents (`op_write` and
//!   `op_append_lines` print only byte counts), so per operation only the
//!   byte *ranges* are checked. Exact bytes are checked per file instead:
//!   replaying every `modify` event of a file created during the trace (its
//!   `data_b64` at `offset`, its `size` as a truncation) must give the
//!   sha256 the guest's final listing has ([`Report::content`]);
//! - data and attribute operations accept events under any hard link of
//!   the file;
//! - range coverage is matched by path, not by inode, so after a log
//!   rotation the old file's events at the same name also count.
//!
//! Events that no operation explains are listed as surplus (directory
//! `modify`/`attrib` events for entries added, for example); they are
//! reported, not failures.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::listing::ListingEntry;
use crate::truth::split_op;

/// One event line, as `gammaray replay` writes it (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Event {
    /// Sequence number.
    pub seq: u64,
    /// Partition.
    #[serde(default)]
    pub part: u32,
    /// The path (for `move`, the new one).
    pub path: String,
    /// For `move`: the old path.
    #[serde(default)]
    pub old_path: Option<String>,
    /// `create`, `delete`, `modify`, `attrib`, `move` or `lost`.
    pub event: String,
    /// File type.
    #[serde(rename = "type", default)]
    pub ftype: String,
    /// Inode.
    #[serde(default)]
    pub inode: u64,
    /// File size after the change.
    #[serde(default)]
    pub size: Option<u64>,
    /// First byte of the range.
    #[serde(default)]
    pub offset: Option<u64>,
    /// Length of the range.
    #[serde(default)]
    pub len: Option<u64>,
    /// The bytes, base64.
    #[serde(default)]
    pub data_b64: Option<String>,
    /// For `attrib`: what changed.
    #[serde(default)]
    pub changed: Vec<String>,
}

impl Event {
    /// The decoded `data_b64`, if any (`None` also for bad base64).
    pub fn data(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let b = self.data_b64.as_ref()?;
        base64::engine::general_purpose::STANDARD.decode(b).ok()
    }

    /// The byte range `[offset, offset + len)` the event covers.
    pub fn range(&self) -> Option<(u64, u64)> {
        let off = self.offset?;
        let len = self
            .len
            .or_else(|| self.data().map(|d| d.len() as u64))
            .unwrap_or(0);
        Some((off, off.saturating_add(len)))
    }

    fn summary(&self) -> String {
        let mut s = format!("#{} {} {}", self.seq, self.event, self.path);
        if let Some(o) = &self.old_path {
            s.push_str(&format!(" (from {o})"));
        }
        if let Some((a, b)) = self.range() {
            s.push_str(&format!(" [{a},{b})"));
        }
        if let Some(z) = self.size {
            s.push_str(&format!(" size={z}"));
        }
        if !self.changed.is_empty() {
            s.push_str(&format!(" changed={}", self.changed.join(",")));
        }
        s
    }
}

/// Parses an events file (JSON lines; blank lines skipped).
pub fn parse_events(text: &str) -> Result<Vec<Event>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("event line {}: {e}: {l}", i + 1))
        })
        .collect()
}

/// One operation and whether it had its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpResult {
    /// Index in `ops.txt` (0-based).
    pub index: usize,
    /// The `OP` line.
    pub op: String,
    /// Whether a later sync makes it required.
    pub required: bool,
    /// `None` when satisfied; otherwise what was missing.
    pub missing: Option<String>,
    /// Why the operation was not checked (no rule, transient, ...).
    pub skipped: Option<String>,
}

/// The exact-bytes check of one file (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentCheck {
    /// The file's final path.
    pub path: String,
    /// `Ok` when the events' bytes give the listing's sha256; otherwise a
    /// description of the difference.
    pub result: Result<(), String>,
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One result per operation line (sync lines included, as skipped).
    pub ops: Vec<OpResult>,
    /// Exact-bytes checks of files created during the trace that exist at
    /// the end.
    pub content: Vec<ContentCheck>,
    /// Files whose bytes could not be checked, with the reason.
    pub content_unknown: Vec<String>,
    /// Events per kind.
    pub by_kind: BTreeMap<String, usize>,
    /// Events per path, then per kind.
    pub by_path: BTreeMap<String, BTreeMap<String, usize>>,
    /// Events no operation explains (summaries).
    pub surplus: Vec<String>,
}

impl Report {
    /// Required operations whose events are missing.
    pub fn failures(&self) -> Vec<&OpResult> {
        self.ops
            .iter()
            .filter(|o| o.required && o.missing.is_some())
            .collect()
    }

    /// Files whose replayed bytes differ from the listing.
    pub fn content_failures(&self) -> Vec<&ContentCheck> {
        self.content.iter().filter(|c| c.result.is_err()).collect()
    }

    /// True when every required operation had its events and every
    /// checkable file's bytes match.
    pub fn passed(&self) -> bool {
        self.failures().is_empty() && self.content_failures().is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let required = self.ops.iter().filter(|o| o.required).count();
        let fails = self.failures();
        writeln!(
            f,
            "operations: {} lines, {} required, {} required missing their events",
            self.ops.len(),
            required,
            fails.len()
        )?;
        for o in &fails {
            writeln!(
                f,
                "  MISSING op {}: {} -> {}",
                o.index + 1,
                o.op,
                o.missing.as_deref().unwrap_or("")
            )?;
        }
        let late: Vec<&OpResult> = self
            .ops
            .iter()
            .filter(|o| !o.required && o.missing.is_some() && o.skipped.is_none())
            .collect();
        if !late.is_empty() {
            writeln!(f, "  (not required, no events either: {})", late.len())?;
        }
        let ok = self.content.len() - self.content_failures().len();
        writeln!(
            f,
            "content: {} files checked byte for byte, {} match, {} not checkable",
            self.content.len(),
            ok,
            self.content_unknown.len()
        )?;
        for c in self.content_failures() {
            writeln!(
                f,
                "  CONTENT {}: {}",
                c.path,
                c.result.as_ref().err().map(String::as_str).unwrap_or("")
            )?;
        }
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "events by kind: {}", kinds.join(", "))?;
        writeln!(
            f,
            "surplus events (no operation explains them): {}",
            self.surplus.len()
        )?;
        for s in self.surplus.iter().take(40) {
            writeln!(f, "  {s}")?;
        }
        if self.surplus.len() > 40 {
            writeln!(f, "  ... {} more", self.surplus.len() - 40)?;
        }
        Ok(())
    }
}

/// What one operation needs to see.
#[derive(Debug, Clone)]
enum Need {
    /// A `create` at one of the paths.
    Create(Vec<String>),
    /// A `delete` of one of the paths (the name, or a name the file had
    /// earlier since the last sync, which is the one on disk).
    Delete(Vec<String>),
    /// A `move` from `old` to one of `new`, or (if `or_create`) a `create`
    /// at one of `new`.
    Move {
        old: String,
        new: Vec<String>,
        or_create: bool,
    },
    /// `modify` events at the paths covering the byte range.
    Cover(Vec<String>, u64, u64),
    /// A `modify` at one of the paths with this size.
    Size(Vec<String>, u64),
    /// A `modify` at one of the paths with any size (a truncation that a
    /// later operation before the next sync resized again: only the final
    /// size of the transaction reaches the disk).
    AnySize(Vec<String>),
    /// An `attrib` at one of the paths changing one of the fields (or, if
    /// `or_create`, a `create` there).
    Attrib {
        paths: Vec<String>,
        fields: &'static [&'static str],
        or_create: bool,
    },
}

/// The operations replayed on a model of names: which file each path is
/// (hard links share one), sizes, and when each name was created.
#[derive(Default)]
struct Names {
    /// path → file id.
    file: BTreeMap<String, u64>,
    /// file id → size.
    size: HashMap<u64, u64>,
    /// path → index of the op that created it (absent: existed before).
    created_at: HashMap<String, usize>,
    /// file id → (mode, uid, gid), where known.
    attrs: HashMap<u64, (u32, u32, u32)>,
    next: u64,
}

impl Names {
    fn add(&mut self, path: &str, size: u64, op: Option<usize>) -> u64 {
        self.next += 1;
        let id = self.next;
        self.file.insert(path.to_string(), id);
        self.size.insert(id, size);
        match op {
            Some(i) => {
                self.created_at.insert(path.to_string(), i);
            }
            None => {
                self.created_at.remove(path);
            }
        }
        id
    }

    fn exists(&self, p: &str) -> bool {
        self.file.contains_key(p)
    }

    fn size_of(&self, p: &str) -> u64 {
        self.file
            .get(p)
            .and_then(|id| self.size.get(id))
            .copied()
            .unwrap_or(0)
    }

    fn set_size(&mut self, p: &str, n: u64, op: usize) {
        let id = match self.file.get(p) {
            Some(id) => *id,
            None => self.add(p, 0, Some(op)),
        };
        self.size.insert(id, n);
    }

    /// Names at or under `p`, `p` first.
    fn under(&self, p: &str) -> Vec<String> {
        let prefix = format!("{}/", p.trim_end_matches('/'));
        self.file
            .keys()
            .filter(|k| k.as_str() == p || k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    fn remove_tree(&mut self, p: &str) {
        for k in self.under(p) {
            self.file.remove(&k);
            self.created_at.remove(&k);
        }
    }

    fn rename(&mut self, a: &str, b: &str) {
        self.remove_tree(b);
        for k in self.under(a) {
            let nk = format!("{b}{}", &k[a.len()..]);
            if let Some(id) = self.file.remove(&k) {
                self.file.insert(nk.clone(), id);
            }
            if let Some(c) = self.created_at.remove(&k) {
                self.created_at.insert(nk, c);
            }
        }
    }
}

/// `p` with `a` (or a parent directory `a`) replaced by `b`, if it applies.
fn renamed(p: &str, a: &str, b: &str) -> Option<String> {
    if p == a {
        return Some(b.to_string());
    }
    p.strip_prefix(a)
        .filter(|rest| rest.starts_with('/'))
        .map(|rest| format!("{b}{rest}"))
}

/// `p` and the names later moves give it (stopping when it is deleted).
fn aliases(ops: &[(String, Vec<String>)], from: usize, p: &str) -> Vec<String> {
    let mut cur = p.to_string();
    let mut out = vec![cur.clone()];
    for (verb, args) in ops.iter().skip(from + 1) {
        match (verb.as_str(), args.as_slice()) {
            ("move", [a, b]) => {
                if let Some(n) = renamed(&cur, a, b) {
                    cur = n;
                    out.push(cur.clone());
                }
            }
            ("delete" | "rmdir" | "delete_tree", [a]) if renamed(&cur, a, a).is_some() => break,
            _ => {}
        }
    }
    out
}

/// The aliases of `p` and of every other hard link to the same file: data
/// and attributes are the file's, and an inference may report them under
/// any of its names.
fn every_name(names: &Names, ops: &[(String, Vec<String>)], at: usize, p: &str) -> Vec<String> {
    let mut out = aliases(ops, at, p);
    if let Some(id) = names.file.get(p) {
        for (other, _) in names
            .file
            .iter()
            .filter(|(k, v)| *v == id && k.as_str() != p)
        {
            out.extend(aliases(ops, at, other));
        }
    }
    out
}

/// How far a later operation before the next sync cuts the file named by
/// one of `paths`: a `truncate` to a smaller size leaves only the bytes
/// below it on disk, and a `write` (which truncates first) replaces them
/// all. `None` when nothing cuts it.
fn cut_later(ops: &[(String, Vec<String>)], at: usize, paths: &[String]) -> Option<u64> {
    let mut cut: Option<u64> = None;
    for (verb, args) in ops.iter().skip(at + 1) {
        match (verb.as_str(), args.as_slice()) {
            ("sync" | "snapshot", _) => break,
            ("truncate", [p, n]) if paths.contains(p) => {
                let n = parse_u64(n).unwrap_or(0);
                cut = Some(cut.map_or(n, |c| c.min(n)));
            }
            ("write", [p, _]) | ("copy", [_, p]) if paths.contains(p) => cut = Some(0),
            _ => {}
        }
    }
    cut
}

/// Requires bytes `[a, b)` of the file named by one of `paths`, as far as
/// they survive until the next sync (see [`cut_later`]).
fn push_cover(
    needs: &mut Vec<Need>,
    ops: &[(String, Vec<String>)],
    at: usize,
    paths: Vec<String>,
    a: u64,
    b: u64,
) {
    let b = cut_later(ops, at, &paths).map_or(b, |c| b.min(c));
    if a < b {
        needs.push(Need::Cover(paths, a, b));
    }
}

/// Whether an operation after op `at` and before the next sync changes the
/// size of the file named by one of `paths`.
fn resized_later(ops: &[(String, Vec<String>)], at: usize, paths: &[String]) -> bool {
    for (verb, args) in ops.iter().skip(at + 1) {
        match (verb.as_str(), args.as_slice()) {
            ("sync" | "snapshot", _) => return false,
            ("append" | "write" | "overwrite" | "truncate", [p, ..]) | ("copy", [_, p])
                if paths.contains(p) =>
            {
                return true
            }
            _ => {}
        }
    }
    false
}

/// `p` and the names the same file had earlier since op `from` (undoing
/// the moves between `from` and `at`), latest first.
fn earlier_names(ops: &[(String, Vec<String>)], from: usize, at: usize, p: &str) -> Vec<String> {
    let mut cur = p.to_string();
    let mut out = vec![cur.clone()];
    for (verb, args) in ops[from.min(at)..at].iter().rev() {
        if let ("move", [a, b]) = (verb.as_str(), args.as_slice()) {
            if let Some(n) = renamed(&cur, b, a) {
                cur = n;
                out.push(cur.clone());
            }
        }
    }
    out
}

/// Whether the name `p` (created at op `created`) is gone again before the
/// next sync after `created`.
fn transient(ops: &[(String, Vec<String>)], created: usize, p: &str) -> bool {
    let mut cur = p.to_string();
    for (verb, args) in ops.iter().skip(created + 1) {
        match (verb.as_str(), args.as_slice()) {
            ("sync" | "snapshot", _) => return false,
            ("move", [a, b]) => {
                if let Some(n) = renamed(&cur, a, b) {
                    cur = n;
                }
            }
            ("delete" | "rmdir" | "delete_tree", [a]) if renamed(&cur, a, a).is_some() => {
                return true
            }
            _ => {}
        }
    }
    false
}

/// Applies a numeric `chmod` or `chown` to the model; true when the file's
/// known attributes already had those values (no event is due then).
fn attr_unchanged(names: &mut Names, verb: &str, args: &[String]) -> bool {
    let (Some(what), Some(p)) = (args.first(), args.get(1)) else {
        return false;
    };
    let Some(id) = names.file.get(p).copied() else {
        return false;
    };
    let Some(cur) = names.attrs.get(&id).copied() else {
        return false;
    };
    let new = match verb {
        "chmod" => match u32::from_str_radix(what, 8) {
            Ok(m) => (m, cur.1, cur.2),
            Err(_) => return false,
        },
        "chown" => {
            let (u, g) = what.split_once(':').unwrap_or((what, ""));
            let (Ok(u), g) = (u.parse::<u32>(), g.parse::<u32>().ok()) else {
                return false;
            };
            // chown clears setuid and setgid of regular files.
            (cur.0, u, g.unwrap_or(cur.2))
        }
        _ => return false,
    };
    names.attrs.insert(id, new);
    new == cur
}

fn parse_u64(s: &str) -> Option<u64> {
    s.parse().ok()
}

/// Checks `events` against the `OP` lines in `ops`. `initial` is the
/// listing of the disk before the trace (for example `gammaray crawl
/// --list` of `base.img`): which names existed and their sizes. `last` is
/// the guest's final listing (`truth.jsonl`), for the exact-bytes check.
pub fn check(
    ops: &[String],
    events: &[Event],
    initial: &[ListingEntry],
    last: &[ListingEntry],
) -> Report {
    let parsed: Vec<(String, Vec<String>)> = ops
        .iter()
        .map(|l| split_op(l).unwrap_or_else(|| ("?".to_string(), vec![l.clone()])))
        .collect();
    let last_sync = parsed
        .iter()
        .rposition(|(v, _)| v == "sync" || v == "snapshot");
    let mut names = Names::default();
    for e in initial {
        let id = names.add(&e.path, e.size, None);
        names.attrs.insert(id, (e.mode, e.uid, e.gid));
    }
    let mut report = Report::default();
    for e in events {
        *report.by_kind.entry(e.event.clone()).or_default() += 1;
        *report
            .by_path
            .entry(e.path.clone())
            .or_default()
            .entry(e.event.clone())
            .or_default() += 1;
    }
    let mut used = vec![false; events.len()];
    // Index of the op after the most recent sync.
    let mut window_start = 0usize;

    for (i, (verb, args)) in parsed.iter().enumerate() {
        let required = last_sync.is_some_and(|s| i < s);
        let mut result = OpResult {
            index: i,
            op: ops[i].clone(),
            required,
            missing: None,
            skipped: None,
        };
        let new_here =
            |names: &Names, p: &str| names.created_at.get(p).is_some_and(|&c| c >= window_start);
        let mut needs: Vec<Need> = Vec::new();
        // Events that are explained by this operation but not required.
        let mut optional: Vec<Need> = Vec::new();
        // A name that is gone again before the next sync.
        let mut is_transient = false;
        match (verb.as_str(), args.as_slice()) {
            ("sync" | "snapshot", _) => {
                window_start = i + 1;
                result.skipped = Some("sync point".into());
            }
            ("create" | "mkdir" | "mkfifo" | "mknod", [p, ..]) => {
                names.add(p, 0, Some(i));
                is_transient = transient(&parsed, i, p);
                needs.push(Need::Create(aliases(&parsed, i, p)));
            }
            ("symlink", [target, p]) => {
                names.add(p, target.len() as u64, Some(i));
                is_transient = transient(&parsed, i, p);
                needs.push(Need::Create(aliases(&parsed, i, p)));
            }
            ("link", [a, b]) => {
                let id = names.file.get(a).copied();
                match id {
                    Some(id) => {
                        names.file.insert(b.clone(), id);
                        names.created_at.insert(b.clone(), i);
                    }
                    None => {
                        names.add(b, 0, Some(i));
                    }
                }
                is_transient = transient(&parsed, i, b);
                needs.push(Need::Create(aliases(&parsed, i, b)));
            }
            ("write", [p, n]) => {
                let n = parse_u64(n).unwrap_or(0);
                let al = aliases(&parsed, i, p);
                if !names.exists(p) {
                    names.add(p, n, Some(i));
                    needs.push(Need::Create(al.clone()));
                }
                names.set_size(p, n, i);
                is_transient = transient(&parsed, i, p);
                if n > 0 {
                    push_cover(&mut needs, &parsed, i, al, 0, n);
                }
            }
            ("copy", [a, b]) => {
                let n = names.size_of(a);
                let al = aliases(&parsed, i, b);
                if !names.exists(b) {
                    names.add(b, n, Some(i));
                    needs.push(Need::Create(al.clone()));
                }
                names.set_size(b, n, i);
                is_transient = transient(&parsed, i, b);
                if n > 0 {
                    push_cover(&mut needs, &parsed, i, al, 0, n);
                }
            }
            ("append", [p, n]) => {
                let n = parse_u64(n).unwrap_or(0);
                if !names.exists(p) {
                    // `>>` creates the file.
                    names.add(p, 0, Some(i));
                    needs.push(Need::Create(aliases(&parsed, i, p)));
                }
                let before = names.size_of(p);
                names.set_size(p, before + n, i);
                is_transient = transient(&parsed, i, p);
                if n > 0 {
                    push_cover(
                        &mut needs,
                        &parsed,
                        i,
                        every_name(&names, &parsed, i, p),
                        before,
                        before + n,
                    );
                }
            }
            ("overwrite", [p, off, len]) => {
                let (off, len) = (parse_u64(off).unwrap_or(0), parse_u64(len).unwrap_or(0));
                if !names.exists(p) {
                    names.add(p, 0, Some(i));
                    needs.push(Need::Create(aliases(&parsed, i, p)));
                }
                let size = names.size_of(p).max(off + len);
                names.set_size(p, size, i);
                is_transient = transient(&parsed, i, p);
                if len > 0 {
                    push_cover(
                        &mut needs,
                        &parsed,
                        i,
                        every_name(&names, &parsed, i, p),
                        off,
                        off + len,
                    );
                }
            }
            ("truncate", [p, n]) => {
                let n = parse_u64(n).unwrap_or(0);
                if !names.exists(p) {
                    names.add(p, 0, Some(i));
                    needs.push(Need::Create(aliases(&parsed, i, p)));
                }
                names.set_size(p, n, i);
                is_transient = transient(&parsed, i, p);
                let al = every_name(&names, &parsed, i, p);
                if resized_later(&parsed, i, &al) {
                    needs.push(Need::AnySize(al));
                } else {
                    needs.push(Need::Size(al, n));
                }
            }
            ("delete" | "rmdir", [p]) => {
                is_transient = new_here(&names, p);
                names.remove_tree(p);
                needs.push(Need::Delete(earlier_names(&parsed, window_start, i, p)));
            }
            ("delete_tree", [p]) => {
                is_transient = new_here(&names, p);
                for k in names.under(p) {
                    if !new_here(&names, &k) {
                        needs.push(Need::Delete(earlier_names(&parsed, window_start, i, &k)));
                    }
                }
                if needs.is_empty() {
                    needs.push(Need::Delete(vec![p.clone()]));
                }
                names.remove_tree(p);
            }
            ("move", [a, b]) => {
                if names.exists(b) && !new_here(&names, b) {
                    // The file the move replaces goes away: its `delete` is
                    // expected, though an inference may also report the
                    // move alone.
                    optional.push(Need::Delete(vec![b.clone()]));
                }
                let fresh = new_here(&names, a);
                // A name that is gone again before the next sync may never
                // reach the disk, whoever created it.
                is_transient = transient(&parsed, i, b);
                names.rename(a, b);
                needs.push(Need::Move {
                    old: a.clone(),
                    new: aliases(&parsed, i, b),
                    or_create: fresh,
                });
            }
            ("chmod", [_, p]) | ("chown", [_, p]) | ("touch", [p, _]) => {
                let fields: &'static [&'static str] = match verb.as_str() {
                    "chmod" => &["mode"],
                    "chown" => &["uid", "gid"],
                    _ => &["mtime"],
                };
                let existed = names.exists(p);
                if !existed {
                    names.add(p, 0, Some(i));
                }
                if attr_unchanged(&mut names, verb, args) {
                    result.required = false;
                    result.skipped = Some("sets the value it already had".into());
                }
                let fresh = new_here(&names, p);
                is_transient = transient(&parsed, i, p);
                needs.push(Need::Attrib {
                    paths: every_name(&names, &parsed, i, p),
                    fields,
                    or_create: fresh || !existed,
                });
            }
            _ => result.skipped = Some(format!("no rule for `{verb}`")),
        }
        if is_transient {
            result.required = false;
            result.skipped = Some("the name is removed again before the next sync".into());
        }
        for need in &optional {
            let _ = satisfy(need, events, &mut used);
        }
        let mut missing = Vec::new();
        for need in &needs {
            if let Some(m) = satisfy(need, events, &mut used) {
                missing.push(m);
            }
        }
        if !missing.is_empty() {
            result.missing = Some(missing.join("; "));
        }
        report.ops.push(result);
    }

    report.surplus = events
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(e, _)| e.summary())
        .collect();
    check_content(events, initial, last, &mut report);
    report
}

/// Marks the events `need` uses; returns what is missing, if anything.
fn satisfy(need: &Need, events: &[Event], used: &mut [bool]) -> Option<String> {
    let mut mark = |pred: &dyn Fn(&Event) -> bool| -> bool {
        let mut any = false;
        for (e, u) in events.iter().zip(used.iter_mut()) {
            if pred(e) {
                *u = true;
                any = true;
            }
        }
        any
    };
    match need {
        Need::Create(paths) => (!mark(&|e| e.event == "create" && paths.contains(&e.path)))
            .then(|| format!("create of {}", paths.join(" or "))),
        Need::Delete(paths) => (!mark(&|e| e.event == "delete" && paths.contains(&e.path)))
            .then(|| format!("delete of {}", paths.join(" or "))),
        Need::Move {
            old,
            new,
            or_create,
        } => {
            let moved = mark(&|e| {
                e.event == "move" && e.old_path.as_deref() == Some(old) && new.contains(&e.path)
            });
            let created = *or_create && mark(&|e| e.event == "create" && new.contains(&e.path));
            (!moved && !created).then(|| {
                format!(
                    "move {old} -> {}{}",
                    new.join(" or "),
                    if *or_create {
                        " (or a create there)"
                    } else {
                        ""
                    }
                )
            })
        }
        Need::Cover(paths, a, b) => {
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for (e, u) in events.iter().zip(used.iter_mut()) {
                if e.event == "modify" && paths.contains(&e.path) {
                    if let Some((x, y)) = e.range() {
                        if x < *b && y > *a {
                            *u = true;
                            ranges.push((x, y));
                        }
                    }
                }
            }
            ranges.sort_unstable();
            let mut at = *a;
            for (x, y) in ranges {
                if x > at {
                    break;
                }
                at = at.max(y);
            }
            (at < *b).then(|| {
                format!(
                    "modify of {} covering bytes [{a},{b}) (covered up to {at})",
                    paths.join(" or ")
                )
            })
        }
        Need::Size(paths, n) => {
            (!mark(&|e| e.event == "modify" && paths.contains(&e.path) && e.size == Some(*n)))
                .then(|| format!("modify of {} with size {n}", paths.join(" or ")))
        }
        Need::AnySize(paths) => {
            (!mark(&|e| e.event == "modify" && paths.contains(&e.path) && e.size.is_some()))
                .then(|| format!("modify of {} with a size", paths.join(" or ")))
        }
        Need::Attrib {
            paths,
            fields,
            or_create,
        } => {
            let changed = mark(&|e| {
                e.event == "attrib"
                    && paths.contains(&e.path)
                    && e.changed.iter().any(|c| fields.contains(&c.as_str()))
            });
            let created = *or_create && mark(&|e| e.event == "create" && paths.contains(&e.path));
            (!changed && !created).then(|| {
                format!(
                    "attrib of {} changing {}{}",
                    paths.join(" or "),
                    fields.join(" or "),
                    if *or_create { " (or its create)" } else { "" }
                )
            })
        }
    }
}

/// Replays the events on a model of files by inode and compares the bytes
/// of every file created during the trace with the final listing.
fn check_content(
    events: &[Event],
    initial: &[ListingEntry],
    last: &[ListingEntry],
    report: &mut Report,
) {
    /// A file's bytes as the events tell them; `None` where unknown.
    #[derive(Default, Clone)]
    struct Content {
        bytes: Vec<Option<u8>>,
    }
    let mut path_ino: BTreeMap<String, u64> = BTreeMap::new();
    let mut content: HashMap<u64, Content> = HashMap::new();
    let initial_paths: BTreeSet<&str> = initial.iter().map(|e| e.path.as_str()).collect();
    for e in events {
        match e.event.as_str() {
            "create" => {
                let linked = path_ino.values().any(|&i| i == e.inode);
                path_ino.insert(e.path.clone(), e.inode);
                if !linked && e.ftype == "file" {
                    let n = e.size.unwrap_or(0) as usize;
                    // A new file: its bytes are zeroes until written (a hole
                    // reads as zeroes, and a fresh file has no old bytes).
                    content.insert(
                        e.inode,
                        Content {
                            bytes: vec![Some(0); n],
                        },
                    );
                }
            }
            "delete" => {
                path_ino.remove(&e.path);
                if !path_ino.values().any(|&i| i == e.inode) {
                    content.remove(&e.inode);
                }
            }
            "move" => {
                if let Some(old) = &e.old_path {
                    let prefix = format!("{old}/");
                    let moved: Vec<(String, u64)> = path_ino
                        .iter()
                        .filter(|(k, _)| *k == old || k.starts_with(&prefix))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect();
                    for (k, v) in moved {
                        path_ino.remove(&k);
                        path_ino.insert(format!("{}{}", e.path, &k[old.len()..]), v);
                    }
                }
                path_ino.insert(e.path.clone(), e.inode);
            }
            "modify" => {
                let Some(c) = content.get_mut(&e.inode) else {
                    continue;
                };
                if let (Some(off), Some(data)) = (e.offset, e.data()) {
                    let off = off as usize;
                    let end = off + data.len();
                    if c.bytes.len() < end {
                        c.bytes.resize(end, Some(0));
                    }
                    for (slot, b) in c.bytes[off..end].iter_mut().zip(data) {
                        *slot = Some(b);
                    }
                }
                if let Some(n) = e.size {
                    c.bytes.resize(n as usize, Some(0));
                }
            }
            "lost" => {
                if let (Some(c), Some((a, b))) = (content.get_mut(&e.inode), e.range()) {
                    let end = (b as usize).min(c.bytes.len());
                    for slot in c.bytes.iter_mut().take(end).skip(a as usize) {
                        *slot = None;
                    }
                }
            }
            _ => {}
        }
    }
    for entry in last.iter().filter(|e| e.kind == "file") {
        let Some(want) = &entry.sha256 else { continue };
        let Some(c) = path_ino.get(&entry.path).and_then(|i| content.get(i)) else {
            if !initial_paths.contains(entry.path.as_str()) {
                report
                    .content_unknown
                    .push(format!("{}: no create event seen", entry.path));
            }
            continue;
        };
        let result = if c.bytes.len() as u64 != entry.size {
            Err(format!(
                "events give {} bytes, the listing {}",
                c.bytes.len(),
                entry.size
            ))
        } else if let Some(at) = c.bytes.iter().position(Option::is_none) {
            report
                .content_unknown
                .push(format!("{}: byte {at} reported lost", entry.path));
            continue;
        } else {
            let bytes: Vec<u8> = c.bytes.iter().map(|b| b.unwrap_or(0)).collect();
            let got = hex::encode(Sha256::digest(&bytes));
            if &got == want {
                Ok(())
            } else {
                Err(format!("events give sha256 {got}, the listing {want}"))
            }
        };
        report.content.push(ContentCheck {
            path: entry.path.clone(),
            result,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, kind: &str, path: &str, inode: u64) -> Event {
        Event {
            seq,
            part: 1,
            path: path.into(),
            old_path: None,
            event: kind.into(),
            ftype: "file".into(),
            inode,
            size: None,
            offset: None,
            len: None,
            data_b64: None,
            changed: Vec::new(),
        }
    }

    fn modify(seq: u64, path: &str, inode: u64, off: u64, data: &[u8], size: u64) -> Event {
        use base64::Engine as _;
        Event {
            offset: Some(off),
            len: Some(data.len() as u64),
            data_b64: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            size: Some(size),
            ..ev(seq, "modify", path, inode)
        }
    }

    fn entry(path: &str, kind: &str, size: u64, data: Option<&[u8]>) -> ListingEntry {
        ListingEntry {
            part: 1,
            path: path.into(),
            kind: kind.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            mtime: 0,
            target: None,
            sha256: data.map(|d| hex::encode(Sha256::digest(d))),
        }
    }

    fn ops(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn satisfied_workload_passes_with_exact_bytes() {
        let ops = ops(&[
            "OP mkdir /d",
            "OP write /d/a 6",
            "OP append /d/a 4",
            "OP chmod 600 /etc/x",
            "OP move /d/a /d/b",
            "OP sync",
            "OP delete /etc/y",
            "OP sync",
            "OP write /late 3",
        ]);
        let initial = vec![
            entry("/", "dir", 4096, None),
            entry("/etc/x", "file", 1, Some(b"x")),
            entry("/etc/y", "file", 1, Some(b"y")),
        ];
        let last = vec![
            entry("/d", "dir", 4096, None),
            entry("/d/b", "file", 10, Some(b"hello\nmore")),
            entry("/etc/x", "file", 1, Some(b"x")),
        ];
        let mut attrib = ev(7, "attrib", "/etc/x", 5);
        attrib.changed = vec!["mode".into()];
        let mut mv = ev(6, "move", "/d/b", 20);
        mv.old_path = Some("/d/a".into());
        let mut dir = ev(1, "create", "/d", 19);
        dir.ftype = "dir".into();
        let events = vec![
            dir,
            ev(2, "create", "/d/a", 20),
            modify(3, "/d/a", 20, 0, b"hello\n", 6),
            modify(4, "/d/b", 20, 6, b"more", 10),
            ev(5, "attrib", "/d", 19),
            mv,
            attrib,
            ev(8, "delete", "/etc/y", 6),
        ];
        let r = check(&ops, &events, &initial, &last);
        assert!(r.passed(), "{r}");
        assert_eq!(r.content.len(), 1, "{r}");
        assert_eq!(r.by_kind["modify"], 2);
        assert_eq!(r.by_path["/d/a"]["create"], 1);
        // The directory's attrib is explained by no operation.
        assert_eq!(r.surplus.len(), 1, "{r}");
        assert!(r.surplus[0].contains("attrib /d"));
        // The write after the last sync is not required.
        assert!(!r.ops[8].required);
        assert!(r.ops[8].missing.is_some());
    }

    #[test]
    fn missing_events_and_wrong_bytes_fail() {
        let ops = ops(&[
            "OP write /a 6",
            "OP append /a 4",
            "OP truncate /etc/x 0",
            "OP delete_tree /t",
            "OP sync",
        ]);
        let initial = vec![
            entry("/etc/x", "file", 1, Some(b"x")),
            entry("/t", "dir", 4096, None),
            entry("/t/f", "file", 1, Some(b"f")),
        ];
        let last = vec![entry("/a", "file", 10, Some(b"hello\nmore"))];
        let events = vec![
            ev(1, "create", "/a", 20),
            // Only the first 6 bytes, and wrong ones.
            modify(2, "/a", 20, 0, b"HELLO\n", 6),
            ev(3, "delete", "/t/f", 30),
        ];
        let r = check(&ops, &events, &initial, &last);
        assert!(!r.passed());
        let f = r.failures();
        let missing: Vec<&str> = f.iter().map(|o| o.op.as_str()).collect();
        assert_eq!(
            missing,
            vec![
                "OP append /a 4",
                "OP truncate /etc/x 0",
                "OP delete_tree /t"
            ],
            "{r}"
        );
        assert!(f[2].missing.as_deref().unwrap().contains("delete of /t"));
        // /t/f's delete was there; only /t's is missing.
        assert!(!f[2].missing.as_deref().unwrap().contains("/t/f"));
        assert_eq!(r.content_failures().len(), 1, "{r}");
    }

    #[test]
    fn names_gone_before_the_next_sync_and_fresh_renames_are_relaxed() {
        let ops = ops(&[
            "OP write /tmp1 3",
            "OP delete /tmp1",
            "OP write /.new 3",
            "OP chmod 600 /.new",
            "OP move /.new /conf",
            "OP sync",
        ]);
        let last = vec![entry("/conf", "file", 3, Some(b"ab\n"))];
        // One transaction: /conf appears as a new file with its bytes.
        let events = vec![
            ev(1, "create", "/conf", 12),
            modify(2, "/conf", 12, 0, b"ab\n", 3),
        ];
        let r = check(&ops, &events, &[], &last);
        assert!(r.passed(), "{r}");
        assert!(!r.ops[0].required && !r.ops[1].required);
        assert!(r.surplus.is_empty(), "{r}");
        assert_eq!(r.content.len(), 1);
    }

    #[test]
    fn rename_then_delete_in_one_window_wants_the_name_on_disk() {
        let ops = ops(&[
            "OP move /n /n~",
            "OP write /n 3",
            "OP delete /n~",
            "OP chmod 644 /x",
            "OP sync",
        ]);
        let initial = vec![
            entry("/n", "file", 2, Some(b"n\n")),
            entry("/x", "file", 1, Some(b"x")),
        ];
        let last = vec![entry("/n", "file", 3, Some(b"ab\n"))];
        // The old inode of /n went away; a new one took its name.
        let events = vec![
            ev(1, "delete", "/n", 12),
            ev(2, "create", "/n", 13),
            modify(3, "/n", 13, 0, b"ab\n", 3),
        ];
        let r = check(&ops, &events, &initial, &last);
        assert!(r.passed(), "{r}");
        assert!(
            !r.ops[0].required,
            "the move's target never reached the disk"
        );
        assert!(!r.ops[3].required, "chmod to the same mode");
    }

    #[test]
    fn truncate_then_append_in_one_window_needs_only_the_final_size() {
        let ops = ops(&[
            "OP truncate /log 0",
            "OP append /log 4",
            "OP append /new 2",
            "OP sync",
        ]);
        let initial = vec![entry("/log", "file", 9, None)];
        let events = vec![
            modify(1, "/log", 12, 0, b"abc\n", 4),
            ev(2, "create", "/new", 13),
            modify(3, "/new", 13, 0, b"x\n", 2),
        ];
        let r = check(&ops, &events, &initial, &[]);
        assert!(r.passed(), "{r}");
        assert!(r.surplus.is_empty(), "{r}");
    }

    #[test]
    fn bytes_cut_by_a_later_truncate_are_not_required() {
        let cut = ops(&["OP write /blob 8", "OP truncate /blob 3", "OP sync"]);
        let events = vec![
            ev(1, "create", "/blob", 12),
            modify(2, "/blob", 12, 0, b"abc", 3),
        ];
        let r = check(&cut, &events, &[], &[]);
        assert!(r.passed(), "{r}");
        // Without the truncate all 8 bytes are required.
        let r = check(&ops(&["OP write /blob 8", "OP sync"]), &events, &[], &[]);
        assert!(!r.passed());
    }

    #[test]
    fn data_written_to_a_file_deleted_before_the_sync_is_not_required() {
        let ops = ops(&["OP write /old 5", "OP delete /old", "OP sync"]);
        let initial = vec![entry("/old", "file", 0, None)];
        let events = vec![ev(1, "delete", "/old", 12)];
        let r = check(&ops, &events, &initial, &[]);
        assert!(r.passed(), "{r}");
        assert!(!r.ops[0].required && r.ops[1].required);
    }

    #[test]
    fn hard_links_share_events_and_a_replaced_target_may_be_deleted() {
        let ops = ops(&[
            "OP link /a /b",
            "OP append /b 2",
            "OP move /c /a",
            "OP sync",
        ]);
        let initial = vec![entry("/a", "file", 1, None), entry("/c", "file", 1, None)];
        let mut mv = ev(4, "move", "/a", 14);
        mv.old_path = Some("/c".into());
        let events = vec![
            ev(1, "create", "/b", 12),
            modify(2, "/a", 12, 1, b"z\n", 3),
            ev(3, "delete", "/a", 12),
            mv,
        ];
        let r = check(&ops, &events, &initial, &[]);
        assert!(r.passed(), "{r}");
        assert!(r.surplus.is_empty(), "{r}");
    }

    #[test]
    fn parse_events_reads_replay_output_and_names_bad_lines() {
        let text = r#"{"seq":1,"host":"h","vm":"v","part":1,"path":"/a","event":"modify","type":"file","inode":12,"size":3,"offset":0,"len":3,"data_b64":"YWJj","future":1}

{"seq":2,"host":"h","vm":"v","part":1,"path":"/b","old_path":"/a","event":"move","type":"file","inode":12}"#;
        let e = parse_events(text).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].data().unwrap(), b"abc");
        assert_eq!(e[1].old_path.as_deref(), Some("/a"));
        let err = parse_events("{\"seq\":1}\nnot json").unwrap_err();
        assert!(err.starts_with("event line 1"), "{err}");
    }
}
