//! `gammaray watch`: the inotifywait of the cloud. Subscribes to Redis
//! channel patterns (`PSUBSCRIBE`, Redis globs over `host:vm:/path`, where
//! `*` crosses `:` and `/`) and prints one line per event.
//!
//! Lines: by default `host:vm EVENT /path` followed by the byte range
//! (`OFFSET+LEN`) or the size (`size=N`), and for some kinds one more
//! field: `from=OLD` (move), `changed=mode,uid` (attrib), `reason=R`
//! (lost), `piece=I/N` (a piece of a split event). `--format` takes a
//! template with these placeholders:
//!
//! | placeholder | value |
//! |---|---|
//! | `%h` | host |
//! | `%v` | VM |
//! | `%e` | event kind (`create`, `delete`, `modify`, `attrib`, `move`, `lost`) |
//! | `%w` | path (the new one for `move`) |
//! | `%o` | `OFFSET+LEN` when the event has a byte range (modify with data, lost), else `size=N` when it has a size, else empty |
//! | `%s` | size after the change, or empty |
//! | `%f` | old path of a `move`, or empty |
//! | `%c` | changed fields of an `attrib`, comma-separated |
//! | `%r` | reason of a `lost` |
//! | `%q` | sequence number |
//! | `%p` | partition number |
//! | `%t` | file type |
//! | `%x` | the kind-specific field of the default line (`from=…`, …) |
//! | `%n` | a newline; `%%` a `%` |
//!
//! `--json` prints DESIGN.md's JSON line instead. An event received twice
//! (a message matching two of the patterns, or a `move` published on both
//! its paths' channels) is printed once. Ctrl-C (or SIGTERM) ends it with
//! exit status 0.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gammaray_sinks::redis::{ReceivedEvent, RedisSubscriber};

/// The event kinds `--events` accepts.
pub const KINDS: [&str; 6] = ["create", "delete", "modify", "attrib", "move", "lost"];

/// The default `--redis`.
pub const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";

/// The default line: `%h:%v %e %w %o %x` without the spaces of empty
/// fields.
pub fn default_line(e: &ReceivedEvent) -> String {
    let mut parts = vec![
        format!("{}:{}", e.host, e.vm),
        e.event.clone(),
        e.path.clone(),
    ];
    for f in ['o', 'x'] {
        let v = field(f, e);
        if !v.is_empty() {
            parts.push(v);
        }
    }
    parts.join(" ")
}

/// Where to subscribe (shared by `watch` and `tail`).
#[derive(Debug, clap::Args)]
pub struct RedisArgs {
    /// The Redis server: redis://[USER:PASS@]HOST:PORT[/DB] or
    /// unix:///SOCKET[?user=U&pass=P].
    #[arg(long, value_name = "URL", default_value = DEFAULT_REDIS)]
    pub redis: String,
    /// ACL user name (Redis 6+).
    #[arg(long, value_name = "USER", requires = "password")]
    pub user: Option<String>,
    /// Password of --user (or of the default user).
    #[arg(long, value_name = "PASS")]
    pub password: Option<String>,
}

/// Arguments of `gammaray watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Channel patterns (Redis globs over host:vm:/path; `*` also matches
    /// `:` and `/`), e.g. 'gs9671:*:/var/log/auth.log' or '*:*:/etc/*'.
    #[arg(value_name = "PATTERN", required = true)]
    pub patterns: Vec<String>,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Line template with %h %v %e %w %o (and %s %f %c %r %q %p %t %x %n
    /// %%); the default is "%h:%v %e %w %o %x" without the spaces of empty
    /// fields. %o is OFFSET+LEN for a byte range, else size=N.
    #[arg(long, value_name = "FMT", conflicts_with = "json")]
    pub format: Option<String>,
    /// Print each event as DESIGN.md's JSON line.
    #[arg(long)]
    pub json: bool,
    /// Only these kinds, comma-separated: create,delete,modify,attrib,move,lost.
    #[arg(long, value_name = "KINDS", value_delimiter = ',')]
    pub events: Vec<String>,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(char),
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format(Vec<Piece>);

impl Format {
    /// Parses a template; an unknown placeholder is an error.
    pub fn parse(fmt: &str) -> Result<Format> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = fmt.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => text.push('%'),
                Some('n') => text.push('\n'),
                Some(f @ ('h' | 'v' | 'e' | 'w' | 'o' | 's' | 'f' | 'c' | 'r' | 'q' | 'p' | 't' | 'x')) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(f));
                }
                Some(other) => bail!(
                    "--format {fmt:?}: unknown placeholder %{other} (known: %h %v %e %w %o %s %f %c %r %q %p %t %x %n %%)"
                ),
                None => bail!("--format {fmt:?}: a lone % at the end (write %% for a %)"),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format(pieces))
    }

    /// The line for `e` (no newline).
    pub fn line(&self, e: &ReceivedEvent) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(&field(*f, e)),
            }
        }
        out
    }
}

/// The value of placeholder `%f` for `e`.
fn field(f: char, e: &ReceivedEvent) -> String {
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    match f {
        'h' => e.host.clone(),
        'v' => e.vm.clone(),
        'e' => e.event.clone(),
        'w' => e.path.clone(),
        'o' => match (e.offset, e.len, e.size) {
            (Some(o), Some(l), _) => format!("{o}+{l}"),
            (_, _, Some(s)) => format!("size={s}"),
            _ => String::new(),
        },
        's' => opt(e.size),
        'f' => e.old_path.clone().unwrap_or_default(),
        'c' => e.changed.join(","),
        'r' => e.reason.clone().unwrap_or_default(),
        'q' => e.seq.to_string(),
        'p' => e.part.to_string(),
        't' => e.ftype.clone(),
        'x' => {
            let mut x = Vec::new();
            if let Some(old) = &e.old_path {
                x.push(format!("from={old}"));
            }
            if !e.changed.is_empty() {
                x.push(format!("changed={}", e.changed.join(",")));
            }
            if let Some(r) = &e.reason {
                x.push(format!("reason={r}"));
            }
            if let (Some(i), Some(n)) = (e.piece, e.pieces) {
                x.push(format!("piece={}/{n}", i + 1));
            }
            x.join(" ")
        }
        _ => String::new(),
    }
}

/// Parses `--events`: every name must be a kind.
pub fn kinds(events: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for k in events.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
        if !KINDS.contains(&k) {
            bail!(
                "--events: unknown event kind {k:?} (known: {})",
                KINDS.join(",")
            );
        }
        out.push(k.to_string());
    }
    Ok(out)
}

/// Remembers the last events printed, to print an event received twice
/// once. Duplicates arrive back to back (one message matching two patterns
/// of the same connection, or a `move` published on two channels), so a
/// short memory is enough.
#[derive(Debug, Default)]
struct Dedup {
    recent: std::collections::VecDeque<(String, String, u64, Option<u64>)>,
}

impl Dedup {
    const KEEP: usize = 16;

    /// Whether `e` was seen recently; records it.
    fn seen(&mut self, e: &ReceivedEvent) -> bool {
        let key = (e.host.clone(), e.vm.clone(), e.seq, e.piece);
        if self.recent.contains(&key) {
            return true;
        }
        if self.recent.len() == Self::KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(key);
        false
    }
}

/// SIGINT/SIGTERM set the returned flag.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing a signal handler")?;
    }
    Ok(stop)
}

/// Connects and subscribes, telling stderr when it is listening.
fn subscribe(args: &RedisArgs, patterns: &[String]) -> Result<RedisSubscriber> {
    let sub = RedisSubscriber::connect(
        &args.redis,
        args.user.as_deref(),
        args.password.as_deref(),
        patterns,
        Duration::from_secs(5),
    )?;
    eprintln!(
        "gammaray: subscribed to {} on {}",
        patterns.join(" "),
        sub.url()
    );
    Ok(sub)
}

/// Whether an I/O error means the reader went away.
fn is_closed(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

/// The loop of `watch` and `tail`: subscribes to `patterns` and, until
/// SIGINT/SIGTERM, hands every decoded event that `accept` wants and that
/// was not seen already ([`Dedup`]) to `render`, and writes what it
/// returns to stdout. Ends cleanly when stdout's reader goes away.
pub fn follow(
    redis: &RedisArgs,
    patterns: &[String],
    accept: impl Fn(&ReceivedEvent) -> bool,
    mut render: impl FnMut(&ReceivedEvent) -> Vec<u8>,
) -> Result<()> {
    let stop = stop_flag()?;
    let mut sub = subscribe(redis, patterns)?;
    let mut dedup = Dedup::default();
    let stdout = io::stdout();
    while !stop.load(Ordering::Relaxed) {
        let Some(msg) = sub.next(Duration::from_millis(200))? else {
            continue;
        };
        let e = match msg.event {
            Ok(e) => e,
            Err(err) => {
                eprintln!("gammaray: {}: undecodable message: {err}", msg.channel);
                continue;
            }
        };
        if !accept(&e) || dedup.seen(&e) {
            continue;
        }
        let bytes = render(&e);
        if bytes.is_empty() {
            continue;
        }
        let mut out = stdout.lock();
        if let Err(err) = out.write_all(&bytes).and_then(|()| out.flush()) {
            if is_closed(&err) {
                return Ok(());
            }
            return Err(err).context("writing to stdout");
        }
    }
    Ok(())
}

/// Runs `gammaray watch`.
pub fn run(args: &WatchArgs) -> Result<()> {
    let format = args.format.as_deref().map(Format::parse).transpose()?;
    let only = kinds(&args.events)?;
    follow(
        &args.redis,
        &args.patterns,
        |e| only.is_empty() || only.contains(&e.event),
        |e| {
            let mut line = match (&format, args.json) {
                (_, true) => e.to_json(),
                (Some(f), false) => f.line(e),
                (None, false) => default_line(e),
            };
            line.push('\n');
            line.into_bytes()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modify() -> ReceivedEvent {
        ReceivedEvent {
            seq: 7,
            host: "gs9671".into(),
            vm: "test".into(),
            part: 1,
            path: "/var/log/app.log".into(),
            event: "modify".into(),
            ftype: "file".into(),
            inode: 12,
            size: Some(4096),
            offset: Some(3000),
            len: Some(1096),
            data: Some(b"x".to_vec()),
            ..Default::default()
        }
    }

    #[test]
    fn default_lines() {
        assert_eq!(
            default_line(&modify()),
            "gs9671:test modify /var/log/app.log 3000+1096"
        );
        let mut c = modify();
        c.event = "create".into();
        c.offset = None;
        c.len = None;
        c.size = Some(0);
        assert_eq!(
            default_line(&c),
            "gs9671:test create /var/log/app.log size=0"
        );
        let mut m = c.clone();
        m.event = "move".into();
        m.size = None;
        m.old_path = Some("/var/log/app.log.1".into());
        assert_eq!(
            default_line(&m),
            "gs9671:test move /var/log/app.log from=/var/log/app.log.1"
        );
        let mut a = c.clone();
        a.event = "attrib".into();
        a.size = None;
        a.changed = vec!["mode".into(), "uid".into()];
        assert_eq!(
            default_line(&a),
            "gs9671:test attrib /var/log/app.log changed=mode,uid"
        );
        let mut p = modify();
        p.piece = Some(0);
        p.pieces = Some(3);
        assert!(default_line(&p).ends_with("3000+1096 piece=1/3"));
    }

    #[test]
    fn format_placeholders() {
        let f = Format::parse("%q %h/%v %e %w %o|%s|%f|%c|%r|%p|%t|%%|%n").unwrap();
        assert_eq!(
            f.line(&modify()),
            "7 gs9671/test modify /var/log/app.log 3000+1096|4096||||1|file|%|\n"
        );
        let e = Format::parse("%h %z").unwrap_err().to_string();
        assert!(
            e.starts_with("--format \"%h %z\": unknown placeholder %z"),
            "{e}"
        );
        assert!(Format::parse("50%").is_err());
        assert_eq!(Format::parse("plain").unwrap().line(&modify()), "plain");
    }

    #[test]
    fn events_filter_names_the_flag() {
        assert_eq!(
            kinds(&["create".into(), " delete".into()]).unwrap(),
            ["create", "delete"]
        );
        let e = kinds(&["created".into()]).unwrap_err().to_string();
        assert!(
            e.starts_with("--events: unknown event kind \"created\""),
            "{e}"
        );
    }

    #[test]
    fn dedup_prints_duplicates_once() {
        let mut d = Dedup::default();
        let e = modify();
        assert!(!d.seen(&e));
        assert!(d.seen(&e));
        let mut p = e.clone();
        p.piece = Some(1);
        assert!(!d.seen(&p));
        let mut other = e.clone();
        other.vm = "web".into();
        assert!(!d.seen(&other));
    }
}
