//! `gammaray tail`: `tail -f` across every guest. Subscribes like
//! `gammaray watch` and writes the bytes appended to the matching files
//! (the data of their `modify` events) to stdout as they arrive.
//!
//! Per file (channel `host:vm:/path`) it keeps the end of what it printed:
//! of each `modify` range only the bytes past that end are printed, so a
//! guest rewriting the block that holds a log's last line does not print
//! that line again. A file seen for the first time starts at its first
//! range. An event with a size below that end means the file was truncated
//! (`: > log`, copy-truncate): a note goes to stderr and printing resumes
//! from the new size. `create`, `delete` and `move` start the path afresh
//! (logrotate: the new `app.log` is followed from its first byte).
//!
//! Headers: when more than one file can match (a pattern with `*`, `?` or
//! `[`, or several patterns), each change of file is announced like
//! `tail -f a b` does, `==> host:vm:/path <==` on a line of its own
//! (preceded by an empty line, except the first). `-q` never prints
//! headers, `-v` always does.

use anyhow::Result;
use gammaray_sinks::redis::ReceivedEvent;
use std::collections::HashMap;

use crate::watch::{follow, RedisArgs};

/// Arguments of `gammaray tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Channel patterns (Redis globs over host:vm:/path), e.g.
    /// '*:*:/var/log/auth.log'.
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Never print `==> host:vm:/path <==` headers.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Always print headers, even for a single file.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Whether a pattern can match more than one channel.
pub fn is_glob(pattern: &str) -> bool {
    let mut escaped = false;
    for c in pattern.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// What `tail` prints, event by event.
#[derive(Debug, Default)]
pub struct Tailer {
    /// Per channel: the end of the bytes printed.
    ends: HashMap<String, u64>,
    headers: bool,
    current: Option<String>,
}

/// What to do for one event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Bytes for stdout (header and data).
    pub stdout: Vec<u8>,
    /// A note for stderr.
    pub note: Option<String>,
}

impl Tailer {
    /// A tailer; `headers` says whether file changes are announced.
    pub fn new(headers: bool) -> Tailer {
        Tailer {
            headers,
            ..Tailer::default()
        }
    }

    /// Handles one event.
    pub fn event(&mut self, e: &ReceivedEvent) -> Output {
        let mut out = Output::default();
        let channel = e.channel();
        match e.event.as_str() {
            "create" | "delete" => {
                self.ends.remove(&channel);
                return out;
            }
            "move" => {
                self.ends.remove(&channel);
                if let Some(old) = &e.old_path {
                    self.ends.remove(&format!("{}:{}:{old}", e.host, e.vm));
                }
                return out;
            }
            _ => {}
        }
        if let (Some(size), Some(end)) = (e.size, self.ends.get_mut(&channel)) {
            if size < *end {
                out.note = Some(format!("{channel}: file truncated"));
                *end = size;
            }
        }
        let (Some(data), "modify") = (&e.data, e.event.as_str()) else {
            return out;
        };
        let off = e.offset.unwrap_or(0);
        let stop = off.saturating_add(data.len() as u64);
        let end = *self.ends.get(&channel).unwrap_or(&off);
        if stop <= end {
            return out;
        }
        let skip = usize::try_from(end.saturating_sub(off)).unwrap_or(usize::MAX);
        let Some(new) = data.get(skip..) else {
            return out;
        };
        self.ends.insert(channel.clone(), stop);
        if self.headers && self.current.as_deref() != Some(channel.as_str()) {
            if self.current.is_some() {
                out.stdout.push(b'\n');
            }
            out.stdout
                .extend_from_slice(format!("==> {channel} <==\n").as_bytes());
            self.current = Some(channel);
        }
        out.stdout.extend_from_slice(new);
        out
    }
}

/// Runs `gammaray tail`.
pub fn run(args: &TailArgs) -> Result<()> {
    let headers = if args.quiet {
        false
    } else {
        args.verbose || args.patterns.len() > 1 || args.patterns.iter().any(|p| is_glob(p))
    };
    let mut tailer = Tailer::new(headers);
    follow(
        &args.redis,
        &args.patterns,
        |_| true,
        |e| {
            let out = tailer.event(e);
            if let Some(note) = out.note {
                eprintln!("gammaray: {note}");
            }
            out.stdout
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, path: &str, off: u64, data: &[u8], size: u64) -> ReceivedEvent {
        ReceivedEvent {
            host: "h".into(),
            vm: "v".into(),
            path: path.into(),
            event: kind.into(),
            offset: (kind == "modify").then_some(off),
            len: (kind == "modify").then_some(data.len() as u64),
            data: (kind == "modify").then(|| data.to_vec()),
            size: Some(size),
            ..Default::default()
        }
    }

    fn text(t: &mut Tailer, e: ReceivedEvent) -> String {
        String::from_utf8(t.event(&e).stdout).unwrap()
    }

    #[test]
    fn prints_only_new_bytes() {
        let mut t = Tailer::new(false);
        assert_eq!(text(&mut t, ev("modify", "/l", 0, b"one\n", 4)), "one\n");
        // The block is written again with one more line.
        assert_eq!(
            text(&mut t, ev("modify", "/l", 0, b"one\ntwo\n", 8)),
            "two\n"
        );
        assert_eq!(text(&mut t, ev("modify", "/l", 0, b"one\n", 8)), "");
        assert_eq!(
            text(&mut t, ev("modify", "/l", 8, b"three\n", 14)),
            "three\n"
        );
        // Truncated, then appended to again.
        let out = t.event(&ev("attrib", "/l", 0, b"", 0));
        assert_eq!(out.note.as_deref(), Some("h:v:/l: file truncated"));
        assert_eq!(text(&mut t, ev("modify", "/l", 0, b"new\n", 4)), "new\n");
        // Recreated after a rotation: from its first byte.
        assert_eq!(text(&mut t, ev("create", "/l", 0, b"", 0)), "");
        assert_eq!(
            text(&mut t, ev("modify", "/l", 0, b"fresh\n", 6)),
            "fresh\n"
        );
    }

    #[test]
    fn headers_when_the_file_changes() {
        let mut t = Tailer::new(true);
        assert_eq!(
            text(&mut t, ev("modify", "/a", 0, b"a1\n", 3)),
            "==> h:v:/a <==\na1\n"
        );
        assert_eq!(text(&mut t, ev("modify", "/a", 3, b"a2\n", 6)), "a2\n");
        assert_eq!(
            text(&mut t, ev("modify", "/b", 0, b"b1\n", 3)),
            "\n==> h:v:/b <==\nb1\n"
        );
    }

    #[test]
    fn globs() {
        assert!(is_glob("*:*:/var/log/syslog"));
        assert!(is_glob("h:v:/var/log/a?"));
        assert!(!is_glob("h:v:/var/log/syslog"));
        assert!(!is_glob("h:v:/var/log/a\\*b"));
    }
}
