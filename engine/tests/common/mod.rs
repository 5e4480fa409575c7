//! Helpers shared by the tests that replay real guest recordings: running
//! `gammaray` with a timeout, crawling images into listings, caching
//! recordings, and the state checks (`--state` against the guest's truth
//! and against a crawl of the disk the guest left).

#![allow(dead_code)] // each test crate uses a different part

pub mod engine;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gammaray_testbed::{
    expect, listing, record, FsKind, ListingEntry, RecordSpec, Recording, Workload,
};

/// Set to a non-empty value to ignore cached recordings.
pub const RERECORD_ENV: &str = "GAMMARAY_RERECORD";
/// A replay (or crawl) that takes longer than this is killed: inference
/// must never wedge.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

pub fn gammaray() -> &'static str {
    env!("CARGO_BIN_EXE_gammaray")
}

/// FNV-1a, for cache keys.
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `GAMMARAY_RERECORD` asks for fresh recordings.
pub fn rerecord() -> bool {
    std::env::var_os(RERECORD_ENV).is_some_and(|v| !v.is_empty())
}

/// A recording cached under `CARGO_TARGET_TMPDIR/replay-recordings/NAME`:
/// loaded with `load` if `NAME/marker` exists (and `GAMMARAY_RERECORD` is
/// not set), else made by `make` in a private directory that is then
/// renamed into place (parallel tests and processes never see half of
/// one; the first rename wins).
pub fn cached<T>(
    name: &str,
    marker: &str,
    load: impl Fn(&Path) -> Result<T, String>,
    make: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<T, String> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("replay-recordings");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let dir = root.join(name);
    let fresh = rerecord();
    if !fresh && dir.join(marker).is_file() {
        if let Ok(rec) = load(&dir) {
            eprintln!("{name}: using the cached recording in {}", dir.display());
            return Ok(rec);
        }
    }
    // Short: the recorder puts a unix socket in it (paths under 108 bytes).
    let tmp = root.join(format!(
        ".tmp-{:08x}-{}-{:?}",
        fnv(name.as_bytes()) as u32,
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let started = Instant::now();
    make(&tmp)?;
    eprintln!(
        "{name}: recorded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    load(&dir).map_err(|e| format!("loading the recording {}: {e}", dir.display()))
}

/// Runs a command with its output in `out_dir/<name>.{stdout,stderr}`,
/// killing it after [`COMMAND_TIMEOUT`]. Returns (success, stderr).
pub fn run(cmd: &mut Command, out_dir: &Path, name: &str) -> Result<(bool, String), String> {
    let so = out_dir.join(format!("{name}.stdout"));
    let se = out_dir.join(format!("{name}.stderr"));
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(&so)?)
        .stderr(file(&se)?)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| format!("{cmd:?}: {e}"))? {
            Some(s) => break s,
            None if started.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{name} did not finish within {} s (killed): {cmd:?}",
                    COMMAND_TIMEOUT.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let stderr = std::fs::read_to_string(&se).unwrap_or_default();
    Ok((status.success(), stderr))
}

/// `gammaray crawl --list [--hash] IMG` as listing entries.
pub fn crawl_listing(
    img: &Path,
    dir: &Path,
    name: &str,
    hash: bool,
) -> Result<Vec<ListingEntry>, String> {
    let mut cmd = Command::new(gammaray());
    cmd.arg("crawl")
        .arg(img)
        .arg("-o")
        .arg(dir.join(format!("{name}.gammaray")))
        .arg("--list");
    if hash {
        cmd.arg("--hash");
    }
    let (ok, stderr) = run(&mut cmd, dir, name)?;
    if !ok {
        return Err(format!("gammaray crawl {} failed: {stderr}", img.display()));
    }
    let out = dir.join(format!("{name}.jsonl"));
    std::fs::rename(dir.join(format!("{name}.stdout")), &out).map_err(|e| e.to_string())?;
    listing::read(&out).map_err(|e| format!("{}: {e}", out.display()))
}

pub fn show(diff: &[String]) -> String {
    let mut s: Vec<String> = diff.iter().take(60).map(|d| format!("    {d}")).collect();
    if diff.len() > 60 {
        s.push(format!("    ... {} more", diff.len() - 60));
    }
    s.join("\n")
}

/// What one `gammaray replay --events --state --hash` gave.
pub struct Replayed {
    pub events: Vec<expect::Event>,
    pub state: Vec<ListingEntry>,
    pub stderr: String,
    pub took: Duration,
}

impl Replayed {
    /// An inference counter from the summary (`pN.NAME=V`; counters at 0
    /// are not printed, so absent means 0).
    pub fn counter(&self, name: &str) -> u64 {
        let key = format!(".{name}=");
        self.stderr
            .split_whitespace()
            .filter_map(|w| {
                let i = w.find(&key)?;
                w[i + key.len()..].trim_end_matches(';').parse::<u64>().ok()
            })
            .sum()
    }

    /// The events of each `--log` in order, split by the per-trace counts
    /// the summary gives when there are several (`--log PATH: N entries,
    /// K events`).
    pub fn events_per_log(&self) -> Result<Vec<&[expect::Event]>, String> {
        let mut out = Vec::new();
        let mut at = 0usize;
        for line in self.stderr.lines() {
            let Some(rest) = line.strip_prefix("gammaray: --log ") else {
                continue;
            };
            let k = rest
                .rsplit(", ")
                .next()
                .and_then(|s| s.strip_suffix(" events"))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| format!("cannot read the per-trace summary line {line:?}"))?;
            let end = at + k;
            if end > self.events.len() {
                return Err(format!(
                    "the per-trace event counts exceed the {} events",
                    self.events.len()
                ));
            }
            out.push(&self.events[at..end]);
            at = end;
        }
        if at != self.events.len() {
            return Err(format!(
                "the per-trace event counts cover {at} of {} events",
                self.events.len()
            ));
        }
        Ok(out)
    }
}

/// `gammaray replay --disk DISK --log L1 [--log L2 ...] --events --state
/// --hash`, with its files in `dir` named after `name`.
pub fn replay(disk: &Path, logs: &[&Path], dir: &Path, name: &str) -> Result<Replayed, String> {
    let events = dir.join(format!("{name}.events.jsonl"));
    let state = dir.join(format!("{name}.state.jsonl"));
    let mut cmd = Command::new(gammaray());
    cmd.arg("replay").arg("--disk").arg(disk);
    for l in logs {
        cmd.arg("--log").arg(l);
    }
    cmd.arg("--vm")
        .arg(name)
        .arg("--events")
        .arg(&events)
        .arg("--state")
        .arg(&state)
        .arg("--hash");
    let started = Instant::now();
    let (ok, stderr) = run(&mut cmd, dir, name)?;
    let took = started.elapsed();
    eprintln!(
        "{name}: replay took {:.2} s\n{}",
        took.as_secs_f64(),
        stderr.trim_end()
    );
    if !ok {
        return Err(format!("gammaray replay failed:\n{}", stderr.trim_end()));
    }
    let text =
        std::fs::read_to_string(&events).map_err(|e| format!("{}: {e}", events.display()))?;
    Ok(Replayed {
        events: expect::parse_events(&text)?,
        state: listing::read(&state).map_err(|e| format!("--state {}: {e}", state.display()))?,
        stderr,
        took,
    })
}

/// The state checks: every regular file hashed, `got` equal to the
/// guest's `truth`, and equal to `gammaray crawl --list --hash final_img`.
/// Problems are pushed with their tag (`(a)`, `(b)`).
pub fn check_state(
    got: &[ListingEntry],
    truth: &[ListingEntry],
    final_img: &Path,
    dir: &Path,
    problems: &mut Vec<String>,
) -> Result<(), String> {
    let unhashed: Vec<&str> = got
        .iter()
        .filter(|e| e.kind == "file" && e.sha256.is_none())
        .map(|e| e.path.as_str())
        .collect();
    if !unhashed.is_empty() {
        problems.push(format!(
            "--state has no sha256 for {} files: {}",
            unhashed.len(),
            unhashed
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let diff = listing::diff(truth, got);
    if !diff.is_empty() {
        problems.push(format!(
            "(a) --state differs from the guest's truth.jsonl ({} differences; - truth, + replay):\n{}",
            diff.len(),
            show(&diff)
        ));
    }
    let crawled = crawl_listing(final_img, dir, "final", true)?;
    let diff = listing::diff(&crawled, got);
    if !diff.is_empty() {
        problems.push(format!(
            "(b) --state differs from `gammaray crawl --list --hash final.img` ({} differences; - crawl, + replay):\n{}",
            diff.len(),
            show(&diff)
        ));
    }
    Ok(())
}

/// Runs `body` in a fresh temporary directory; on failure keeps the
/// directory and panics with the message and its place.
pub fn in_temp_dir(name: &str, body: impl FnOnce(&Path) -> Result<(), String>) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("gr-{name}-"))
        .tempdir()
        .expect("temp dir");
    let started = Instant::now();
    let result = body(dir.path());
    eprintln!("{name}: {:.1} s in all", started.elapsed().as_secs_f64());
    if let Err(msg) = result {
        let kept = dir.keep();
        panic!(
            "{name}: {msg}\n(events, state and listings kept in {})",
            kept.display()
        );
    }
}

/// The recording of workload `w` on ext4, from the cache or made now
/// (keyed by the workload's script and the guest's helpers).
pub fn workload_recording(w: Workload) -> Result<Recording, String> {
    let lib = include_str!("../../../testbed/guest/lib.sh");
    let key = fnv(format!("{}\n{lib}", w.script()).as_bytes());
    cached(
        &format!("{}-ext4-{key:016x}", w.name()),
        "truth.jsonl",
        |dir| Recording::load(dir).map_err(|e| e.to_string()),
        |tmp| {
            record(&RecordSpec::new(w, FsKind::Ext4, tmp))
                .map(|_| ())
                .map_err(|e| format!("recording {w}: {e}"))
        },
    )
}

/// A guest's operations followed by the sync its init does after the
/// workload (before the truth listing): every operation is then required.
pub fn with_sync(ops: &[String]) -> Vec<String> {
    let mut v = ops.to_vec();
    v.push("OP sync".to_string());
    v
}

/// Checks `events` against `ops` (plus the final sync), from the listing
/// `initial` to `last`: prints the report, and pushes a problem tagged
/// `what` when an operation lacks its events or a file its bytes.
pub fn check_ops(
    what: &str,
    ops: &[String],
    events: &[expect::Event],
    initial: &[ListingEntry],
    last: &[ListingEntry],
    problems: &mut Vec<String>,
) -> expect::Report {
    let report = expect::check(&with_sync(ops), events, initial, last);
    eprintln!(
        "{what}: {} events checked against {} operations:\n{report}",
        events.len(),
        ops.len()
    );
    if !report.passed() {
        problems.push(format!(
            "{what}: events do not match the operations: {} required operations lack events, {} files have wrong bytes (report above)",
            report.failures().len(),
            report.content_failures().len()
        ));
    }
    report
}

/// `Err` with every problem, or `Ok` when there is none.
pub fn verdict(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// The crash recording of `replay_crash.rs` (a first boot running `first`
/// reset in the middle, then a second boot running `second`), from the
/// cache or made now; keyed by both scripts and the guest's helpers, so
/// the tests that share the scripts share the recording.
pub fn crash_recording(
    first: &str,
    second: &str,
) -> Result<gammaray_testbed::CrashRecording, String> {
    let key = fnv(format!(
        "{first}\n{second}\n{}\n{}\n{}",
        include_str!("../../../testbed/guest/lib.sh"),
        include_str!("../../../testbed/guest/init.sh"),
        include_str!("../../../testbed/src/record.rs"),
    )
    .as_bytes());
    cached(
        &format!("crash-ext4-{key:016x}"),
        "truth.jsonl",
        |dir| gammaray_testbed::CrashRecording::load(dir).map_err(|e| e.to_string()),
        |tmp| {
            let mut spec = RecordSpec::new(Workload::Edits, FsKind::Ext4, tmp);
            spec.script = Some(second.to_string());
            gammaray_testbed::record_crash(&spec, first)
                .map(|_| ())
                .map_err(|e| format!("recording the crash: {e}"))
        },
    )
}

/// Paths named by `ops` (arguments starting with `/`) and all their
/// parent directories.
pub fn touched(ops: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in ops {
        let Some((_, args)) = gammaray_testbed::truth::split_op(o) else {
            continue;
        };
        for a in args.into_iter().filter(|a| a.starts_with('/')) {
            let mut p = a.as_str();
            loop {
                if !out.iter().any(|x| x == p) {
                    out.push(p.to_string());
                }
                match p.rfind('/') {
                    Some(0) if p.len() > 1 => p = "/",
                    Some(i) if i > 0 => p = &p[..i],
                    _ => break,
                }
            }
        }
    }
    out
}
