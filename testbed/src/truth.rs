//! Parsing what the guest printed on its serial console (protocol in
//! `testbed/guest/init.sh`): the operations the workload performed and the
//! raw listing records, which become a [`ListingEntry`] list here (the host
//! does the JSON escaping and the sorting, which busybox cannot do reliably).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::listing::{self, ListingEntry};

/// Where the guest mounts the disk; stripped from listed paths.
pub const MOUNT_POINT: &str = "/mnt";

/// Ground truth from one guest run.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    /// The workload's operations, one `OP ...` line each, in order.
    pub ops: Vec<String>,
    /// The file system after the workload and a `sync`, sorted.
    pub listing: Vec<ListingEntry>,
    /// Listings the workload took along the way with `gr_snapshot LABEL`
    /// (each after a `sync`), in order.
    pub snapshots: Vec<Snapshot>,
    /// Pacing points the guest passed (`GR-PACE name answer`).
    pub paced: Vec<String>,
}

/// A listing taken in the middle of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The label given to `gr_snapshot`.
    pub label: String,
    /// How many operations (`Truth::ops`) came before it.
    pub after_ops: usize,
    /// The file system at that point, sorted.
    pub listing: Vec<ListingEntry>,
    /// How many trace entries had been logged when the guest paused after
    /// the snapshot's `sync` (set by [`crate::record`]): replaying that many
    /// entries onto the base image gives this state.
    pub trace_entries: Option<u64>,
}

struct Stat {
    st_mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u64,
    mtime: i64,
    line: usize,
}

/// The raw records of one listing, turned into entries by `finish`.
#[derive(Default)]
struct RawListing {
    stats: Vec<(String, Stat)>,
    targets: HashMap<String, String>,
    hashes: HashMap<String, String>,
    pending_link: Option<String>,
}

fn bad(line: usize, message: &'static str, text: &str) -> Error {
    Error::Truth {
        line,
        message,
        text: text.to_string(),
    }
}

impl RawListing {
    fn record(&mut self, n: usize, line: &str) -> Result<()> {
        let path = |p: &str| fs_path(p).ok_or_else(|| bad(n, "path outside /mnt", line));
        if let Some(rest) = line.strip_prefix("S|") {
            let f: Vec<&str> = rest.splitn(7, '|').collect();
            if f.len() != 7 {
                return Err(bad(n, "stat record needs 7 fields", line));
            }
            let num = |s: &str| s.parse::<u64>().map_err(|_| bad(n, "bad number", line));
            let st = Stat {
                st_mode: u32::from_str_radix(f[0], 16).map_err(|_| bad(n, "bad hex mode", line))?,
                uid: u32::try_from(num(f[1])?).map_err(|_| bad(n, "uid too large", line))?,
                gid: u32::try_from(num(f[2])?).map_err(|_| bad(n, "gid too large", line))?,
                size: num(f[3])?,
                nlink: num(f[4])?,
                mtime: f[5].parse().map_err(|_| bad(n, "bad mtime", line))?,
                line: n,
            };
            self.stats.push((path(f[6])?, st));
        } else if let Some(p) = line.strip_prefix("L|") {
            self.pending_link = Some(path(p)?);
        } else if let Some(t) = line.strip_prefix("T|") {
            let p = self
                .pending_link
                .take()
                .ok_or_else(|| bad(n, "target without a link", line))?;
            self.targets.insert(p, t.to_string());
        } else if let Some(h) = line.strip_prefix("H|") {
            let (hash, p) = h
                .split_once("  ")
                .ok_or_else(|| bad(n, "hash record needs two fields", line))?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(n, "bad sha256", line));
            }
            self.hashes.insert(path(p)?, hash.to_ascii_lowercase());
        } else if !line.trim().is_empty() {
            return Err(bad(n, "unexpected line in listing (kernel message?)", line));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<ListingEntry>> {
        let mut out = Vec::with_capacity(self.stats.len());
        for (path, st) in self.stats {
            let kind = listing::type_name(st.st_mode)
                .ok_or_else(|| bad(st.line, "unknown file type", &path))?;
            let target = if kind == "symlink" {
                Some(
                    self.targets
                        .remove(&path)
                        .ok_or_else(|| bad(st.line, "symlink without a target record", &path))?,
                )
            } else {
                None
            };
            let sha256 = if kind == "file" {
                Some(
                    self.hashes
                        .remove(&path)
                        .ok_or_else(|| bad(st.line, "file without a sha256 record", &path))?,
                )
            } else {
                None
            };
            out.push(ListingEntry {
                part: 1,
                path,
                kind: kind.to_string(),
                mode: st.st_mode & 0o7777,
                uid: st.uid,
                gid: st.gid,
                size: st.size,
                nlink: st.nlink,
                mtime: st.mtime,
                target,
                sha256,
            });
        }
        listing::sort(&mut out);
        Ok(out)
    }
}

/// What one pass over a serial log found.
struct Scan {
    truth: Truth,
    errors: Vec<String>,
    done: bool,
    saw_ops: bool,
    saw_listing: bool,
    rc: Option<String>,
}

fn scan(bytes: &[u8]) -> Result<Scan> {
    let text = String::from_utf8_lossy(bytes);
    let mut truth = Truth::default();
    let mut in_ops = false;
    // The listing being read: None for the final one, Some(label) for a
    // snapshot.
    let mut listing: Option<(Option<String>, RawListing)> = None;
    let mut errors = Vec::new();
    let mut io_errors = 0usize;
    let mut done = false;
    let mut saw_ops = false;
    let mut saw_listing = false;
    let mut rc: Option<String> = None;

    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(m) = line.strip_prefix("GR-ERROR ") {
            errors.push(m.to_string());
            continue;
        }
        if line.contains("I/O error, dev ") {
            // The guest kernel's own report of a failed request: its disk
            // does not hold what the workload wrote, so the run proves
            // nothing (the first few are kept, the rest counted).
            io_errors += 1;
            if io_errors <= MAX_KERNEL_IO_ERRORS {
                errors.push(format!("kernel: {}", line.trim()));
            }
            continue;
        }
        if line == "GR-END-LISTING" {
            let (label, raw) = listing
                .take()
                .ok_or_else(|| bad(n, "listing end without a start", line))?;
            let entries = raw.finish()?;
            match label {
                None => {
                    saw_listing = true;
                    truth.listing = entries;
                }
                Some(label) => truth.snapshots.push(Snapshot {
                    label,
                    after_ops: truth.ops.len(),
                    listing: entries,
                    trace_entries: None,
                }),
            }
            continue;
        }
        if let Some((_, raw)) = listing.as_mut() {
            raw.record(n, line)?;
            continue;
        }
        if line == "GR-BEGIN-LISTING" {
            listing = Some((None, RawListing::default()));
        } else if let Some(label) = line.strip_prefix("GR-BEGIN-LISTING ") {
            listing = Some((Some(label.to_string()), RawListing::default()));
        } else if line == "GR-BEGIN-OPS" {
            in_ops = true;
            saw_ops = true;
        } else if let Some(r) = line.strip_prefix("GR-END-OPS rc=") {
            rc = Some(r.to_string());
            in_ops = false;
        } else if line == "GR-DONE" {
            done = true;
        } else if let Some(p) = line.strip_prefix("GR-PACE ") {
            truth.paced.push(p.to_string());
        } else if in_ops && line.starts_with("OP ") {
            truth.ops.push(line.to_string());
        }
    }

    if io_errors > MAX_KERNEL_IO_ERRORS {
        errors.push(format!(
            "kernel: {} more I/O errors",
            io_errors - MAX_KERNEL_IO_ERRORS
        ));
    }
    Ok(Scan {
        truth,
        errors,
        done,
        saw_ops,
        saw_listing,
        rc,
    })
}

/// Kernel I/O error lines quoted in a failed run's message.
const MAX_KERNEL_IO_ERRORS: usize = 3;

fn guest_errors(scan: &Scan) -> Result<()> {
    let Scan {
        truth, errors, rc, ..
    } = scan;
    if !errors.is_empty() {
        let last = truth.ops.last().cloned().unwrap_or_else(|| "none".into());
        return Err(Error::Guest {
            message: format!(
                "guest reported: {} (workload rc={}, last op: {last})",
                errors.join("; "),
                rc.as_deref().unwrap_or("?")
            ),
            serial: PathBuf::new(),
        });
    }
    Ok(())
}

fn missing(what: &str) -> Error {
    Error::Guest {
        message: format!("serial log has no {what}"),
        serial: PathBuf::new(),
    }
}

/// Parses a serial log. Fails if the guest reported an error, if a section
/// is missing, or if `GR-DONE` never came.
pub fn parse_serial(bytes: &[u8]) -> Result<Truth> {
    let scan = scan(bytes)?;
    guest_errors(&scan)?;
    let Scan {
        truth,
        done,
        saw_ops,
        saw_listing,
        ..
    } = scan;
    if !saw_ops {
        return Err(missing("GR-BEGIN-OPS (guest did not get to its workload)"));
    }
    if !saw_listing {
        return Err(missing("complete final listing"));
    }
    if !done {
        return Err(missing("GR-DONE"));
    }
    Ok(truth)
}

/// Parses the serial log of a run whose workload crashed the guest on
/// purpose (a reset in the middle of the workload): the operations and
/// snapshots printed before the crash. Fails if the guest reported an
/// error, never reached its workload, or did not crash (`GR-DONE` came).
pub fn parse_crashed_serial(bytes: &[u8]) -> Result<Truth> {
    let scan = scan(bytes)?;
    guest_errors(&scan)?;
    if !scan.saw_ops {
        return Err(missing("GR-BEGIN-OPS (guest did not get to its workload)"));
    }
    if scan.done || scan.rc.is_some() {
        return Err(Error::Guest {
            message: "the guest was to crash in its workload but finished it".into(),
            serial: PathBuf::new(),
        });
    }
    Ok(scan.truth)
}

/// Splits an `OP` line into its verb and arguments, undoing the guest's
/// quoting (arguments with a space, `"` or `\` are double-quoted with `"`
/// and `\` escaped by a backslash). `None` if the line is not an `OP`
/// line or its quoting is broken.
pub fn split_op(line: &str) -> Option<(String, Vec<String>)> {
    let rest = line.strip_prefix("OP ")?;
    let mut words = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let Some(&c) = chars.peek() else { break };
        let mut w = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => w.push(chars.next()?),
                    x => w.push(x),
                }
            }
        } else {
            while let Some(&x) = chars.peek() {
                if x == ' ' {
                    break;
                }
                w.push(x);
                chars.next();
            }
        }
        words.push(w);
    }
    let mut it = words.into_iter();
    let verb = it.next()?;
    Some((verb, it.collect()))
}

/// `/mnt` → `/`, `/mnt/a` → `/a`; anything else is not ours.
fn fs_path(p: &str) -> Option<String> {
    if p == MOUNT_POINT {
        return Some("/".into());
    }
    p.strip_prefix(MOUNT_POINT)
        .filter(|rest| rest.starts_with('/'))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "GR-BOOT\r\nGR-BEGIN-OPS\r\nOP mkdir /a\r\nGR-END-OPS rc=0\r\n\
GR-BEGIN-LISTING\r\n\
S|41ed|0|0|4096|3|1700000000|/mnt\r\n\
S|41ed|0|0|4096|2|1700000000|/mnt/a\r\n\
S|81a4|1000|100|3|1|1700000001|/mnt/a/x \"y\"|z\r\n\
S|a1ff|0|0|1|1|1700000002|/mnt/l\r\n\
L|/mnt/l\r\nT|a\r\n\
H|ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  /mnt/a/x \"y\"|z\r\n\
GR-END-LISTING\r\nGR-DONE\r\n";

    #[test]
    fn parses_ops_and_listing() {
        let t = parse_serial(SAMPLE.as_bytes()).unwrap();
        assert_eq!(t.ops, vec!["OP mkdir /a"]);
        let paths: Vec<&str> = t.listing.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["/", "/a", "/a/x \"y\"|z", "/l"]);
        let f = &t.listing[2];
        assert_eq!(
            (f.kind.as_str(), f.mode, f.uid, f.gid),
            ("file", 0o644, 1000, 100)
        );
        assert_eq!(t.listing[3].target.as_deref(), Some("a"));
        let json = serde_json::to_string(f).unwrap();
        assert!(
            json.starts_with(r#"{"part":1,"path":"/a/x \"y\"|z","type":"file","mode":420"#),
            "{json}"
        );
        assert!(json.ends_with(
            r#""sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}"#
        ));
    }

    #[test]
    fn op_lines_split_with_quotes() {
        assert_eq!(
            split_op(r#"OP write "/a \"b\"\\c" 7"#),
            Some(("write".into(), vec![r#"/a "b"\c"#.into(), "7".into()]))
        );
        assert_eq!(
            split_op("OP move /x /y"),
            Some(("move".into(), vec!["/x".into(), "/y".into()]))
        );
        assert_eq!(split_op(r#"OP write "/unterminated"#), None);
        assert_eq!(split_op("not an op"), None);
    }

    #[test]
    fn snapshots_are_separate_listings() {
        let s = SAMPLE.replace(
            "OP mkdir /a\r\n",
            "OP mkdir /a\r\nOP sync\r\nGR-BEGIN-LISTING mid\r\n\
S|41ed|0|0|4096|3|1700000000|/mnt\r\nGR-END-LISTING\r\nOP snapshot mid\r\n",
        );
        let t = parse_serial(s.as_bytes()).unwrap();
        assert_eq!(t.snapshots.len(), 1);
        assert_eq!(t.snapshots[0].label, "mid");
        assert_eq!(t.snapshots[0].after_ops, 2);
        assert_eq!(t.snapshots[0].listing.len(), 1);
        assert_eq!(t.listing.len(), 4);
        assert_eq!(t.ops.len(), 3);
    }

    #[test]
    fn guest_error_is_reported() {
        let s = SAMPLE.replace("GR-DONE", "GR-ERROR workload exited with 1");
        assert!(matches!(
            parse_serial(s.as_bytes()),
            Err(Error::Guest { .. })
        ));
    }

    #[test]
    fn kernel_io_errors_fail_the_run() {
        // As a guest prints them when its disk refuses writes (QEMU's
        // blklogwrites failing a request whose log entry it cannot write).
        let line = "[    3.581197] I/O error, dev vda, sector 280576 op 0x1:(WRITE) flags 0x4000 phys_seg 254 prio class 2\n";
        let s = SAMPLE.replace("GR-DONE", &format!("{}GR-DONE", line.repeat(5)));
        match parse_serial(s.as_bytes()) {
            Err(Error::Guest { message, .. }) => {
                assert!(
                    message.contains("kernel: [    3.581197] I/O error, dev vda, sector 280576"),
                    "{message}"
                );
                assert!(message.contains("kernel: 2 more I/O errors"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_done_is_an_error() {
        let s = SAMPLE.replace("GR-DONE", "");
        assert!(parse_serial(s.as_bytes()).is_err());
    }
}
