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

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{crawl_listing, fnv, gammaray, run, show};
use gammaray_testbed::{
    expect, guest_available, listing, record, FsKind, RecordSpec, Recording, Workload,
};

/// The recording of `w` on ext4, from the cache or made now.
fn recording(w: Workload) -> Result<Recording, String> {
    let lib = include_str!("../../testbed/guest/lib.sh");
    let key = fnv(format!("{}\n{lib}", w.script()).as_bytes());
    common::cached(
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
