//! `gammaray replay` against real guests: for every ext4 workload, a guest
//! run recorded behind QEMU's blklogwrites driver is replayed from its base
//! image, and
//! (a) the `--state` listing equals the guest's own final listing
//!     (`truth.jsonl`), field for field, sha256 included;
//! (b) it equals `gammaray crawl --list --hash final.img` (inference and a
//!     fresh crawl of the disk the guest left agree);
//! (c) every operation a sync follows has its file events
//!     ([`gammaray_testbed::expect`]), and files created during the trace
//!     have exactly the bytes the `modify` events carried.
//!
//! Recordings are cached under `CARGO_TARGET_TMPDIR/replay-recordings/`,
//! keyed by the workload script, so that reruns only replay; set
//! `GAMMARAY_RERECORD=1` to record afresh. A recording appears atomically
//! (recorded under a private name, then renamed), so parallel tests and
//! processes never see half of one. On failure the test's own files
//! (events, state, listings, stderr) are kept and their place printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gammaray_testbed::{
    expect, guest_available, listing, record, FsKind, ListingEntry, RecordSpec, Recording, Workload,
};

/// Set to a non-empty value to ignore cached recordings.
const RERECORD_ENV: &str = "GAMMARAY_RERECORD";
/// A replay (or crawl) that takes longer than this is killed: inference
/// must never wedge.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

fn gammaray() -> &'static str {
    env!("CARGO_BIN_EXE_gammaray")
}

/// FNV-1a, for cache keys.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The recording of `w` on ext4, from the cache or made now.
fn recording(w: Workload) -> Result<Recording, String> {
    let lib = include_str!("../../testbed/guest/lib.sh");
    let key = fnv(format!("{}\n{lib}", w.script()).as_bytes());
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("replay-recordings");
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let dir = root.join(format!("{}-ext4-{key:016x}", w.name()));
    let fresh = std::env::var_os(RERECORD_ENV).is_some_and(|v| !v.is_empty());
    if !fresh && dir.join("truth.jsonl").is_file() {
        if let Ok(rec) = Recording::load(&dir) {
            eprintln!("{w}: using the cached recording in {}", dir.display());
            return Ok(rec);
        }
    }
    let tmp = root.join(format!(
        ".tmp-{}-{}-{:?}",
        w.name(),
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let started = Instant::now();
    record(&RecordSpec::new(w, FsKind::Ext4, &tmp)).map_err(|e| format!("recording {w}: {e}"))?;
    eprintln!("{w}: recorded in {:.1} s", started.elapsed().as_secs_f64());
    // Several processes may record the same workload; the first rename
    // wins and the others use its recording.
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Recording::load(&dir).map_err(|e| format!("loading the recording {}: {e}", dir.display()))
}

/// Runs a command with its output in `out_dir/<name>.{stdout,stderr}`,
/// killing it after [`COMMAND_TIMEOUT`]. Returns (success, stderr).
fn run(cmd: &mut Command, out_dir: &Path, name: &str) -> Result<(bool, String), String> {
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
fn crawl_listing(
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

fn show(diff: &[String]) -> String {
    let mut s: Vec<String> = diff.iter().take(60).map(|d| format!("    {d}")).collect();
    if diff.len() > 60 {
        s.push(format!("    ... {} more", diff.len() - 60));
    }
    s.join("\n")
}

fn check(w: Workload, dir: &Path) -> Result<(), String> {
    let rec = recording(w)?;
    let events = dir.join("ev.jsonl");
    let state = dir.join("st.jsonl");

    let started = Instant::now();
    let (ok, stderr) = run(
        Command::new(gammaray())
            .arg("replay")
            .arg("--disk")
            .arg(&rec.base)
            .arg("--log")
            .arg(&rec.trace)
            .arg("--vm")
            .arg(w.name())
            .arg("--events")
            .arg(&events)
            .arg("--state")
            .arg(&state)
            .arg("--hash"),
        dir,
        "replay",
    )?;
    let took = started.elapsed();
    eprintln!(
        "{w}: replay took {:.2} s\n{}",
        took.as_secs_f64(),
        stderr.trim_end()
    );
    if !ok {
        let hint = if stderr.contains("inference unsupported") {
            "ext4 inference unsupported: "
        } else {
            ""
        };
        return Err(format!(
            "{hint}gammaray replay failed:\n{}",
            stderr.trim_end()
        ));
    }

    let mut problems = Vec::new();
    let got = listing::read(&state).map_err(|e| format!("--state {}: {e}", state.display()))?;

    // --hash must hash every regular file (the listing diff compares
    // sha256 only where the replay gave one).
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

    // (a) the state equals the guest's listing.
    let diff = listing::diff(&rec.truth.listing, &got);
    if !diff.is_empty() {
        problems.push(format!(
            "(a) --state differs from the guest's truth.jsonl ({} differences; - truth, + replay):\n{}",
            diff.len(),
            show(&diff)
        ));
    }

    // (b) the state equals a crawl of the final disk.
    let crawled = crawl_listing(&rec.final_img, dir, "final", true)?;
    let diff = listing::diff(&crawled, &got);
    if !diff.is_empty() {
        problems.push(format!(
            "(b) --state differs from `gammaray crawl --list --hash final.img` ({} differences; - crawl, + replay):\n{}",
            diff.len(),
            show(&diff)
        ));
    }

    // (c) every synced operation has its events.
    let text =
        std::fs::read_to_string(&events).map_err(|e| format!("{}: {e}", events.display()))?;
    let evs = expect::parse_events(&text)?;
    let initial = crawl_listing(&rec.base, dir, "base", false)?;
    // The guest's init syncs after the workload (before taking the truth
    // listing), so every operation is followed by a sync.
    let mut ops = rec.truth.ops.clone();
    ops.push("OP sync".to_string());
    let report = expect::check(&ops, &evs, &initial, &rec.truth.listing);
    eprintln!(
        "{w}: events checked against {} operations:\n{report}",
        rec.truth.ops.len()
    );
    if !report.passed() {
        problems.push(format!(
            "(c) events do not match the operations: {} required operations lack events, {} files have wrong bytes (report above)",
            report.failures().len(),
            report.content_failures().len()
        ));
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn run_case(w: Workload) {
    let name = format!("replay_{}_ext4", w.name());
    if !guest_available(&name) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("gr-{name}-"))
        .tempdir()
        .expect("temp dir");
    let started = Instant::now();
    let result = check(w, dir.path());
    eprintln!("{name}: {:.1} s in all", started.elapsed().as_secs_f64());
    if let Err(msg) = result {
        let kept = dir.keep();
        panic!(
            "{name}: {msg}\n(events, state and listings kept in {})",
            kept.display()
        );
    }
}

macro_rules! cases {
    ($($name:ident: $w:ident;)*) => {$(
        #[test]
        fn $name() {
            run_case(Workload::$w);
        }
    )*};
}

cases! {
    logs_ext4: Logs;
    tree_ext4: Tree;
    attrs_ext4: Attrs;
    bigdir_ext4: Bigdir;
    edits_ext4: Edits;
    nosync_ext4: Nosync;
}
