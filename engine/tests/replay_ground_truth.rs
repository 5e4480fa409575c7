//! `gammaray replay` against real guests: for every ext4 workload, a guest
//! run recorded behind QEMU's blklogwrites driver is replayed from its base
//! image, and
//! (a) the `--state` listing equals the guest's own final listing
//!     (`truth.jsonl`), field for field, sha256 included;
//! (b) it equals `gammaray crawl --list --hash final.img` (inference and a
//!     fresh crawl of the disk the guest left agree);
//! (c) every operation a sync follows has its file events
//!     ([`gammaray_testbed::expect`]), and files created during the trace
//!     have exactly the bytes the `modify` events carried;
//! (d) with the lazy-load policy and a one-byte resident budget, (a) holds
//!     again and the events are the same, byte for byte.
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

use common::{
    check_ops, check_state, crawl_listing, gammaray, in_temp_dir, run, verdict, workload_recording,
};
use gammaray_testbed::{expect, guest_available, listing, Workload};

/// Replays `w`'s recording with `extra` arguments into `dir/ev{tag}.jsonl`
/// and `dir/st{tag}.jsonl`.
fn replay(
    w: Workload,
    rec: &gammaray_testbed::Recording,
    dir: &Path,
    tag: &str,
    extra: &[&str],
) -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let events = dir.join(format!("ev{tag}.jsonl"));
    let state = dir.join(format!("st{tag}.jsonl"));
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
            .arg("--hash")
            .args(extra),
        dir,
        &format!("replay{tag}"),
    )?;
    let took = started.elapsed();
    eprintln!(
        "{w}{tag}: replay took {:.2} s\n{}",
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
            "{hint}gammaray replay{tag} failed:\n{}",
            stderr.trim_end()
        ));
    }
    Ok((events, state))
}

fn check(w: Workload, dir: &Path) -> Result<(), String> {
    let rec = workload_recording(w)?;
    let (events, state) = replay(w, &rec, dir, "", &[])?;

    let mut problems = Vec::new();
    let got = listing::read(&state).map_err(|e| format!("--state {}: {e}", state.display()))?;

    // (a) the state equals the guest's listing, (b) a crawl of the final
    // disk; every regular file hashed.
    check_state(&got, &rec.truth.listing, &rec.final_img, dir, &mut problems)?;

    // (c) every operation has its events (the guest's init syncs after
    // the workload, before taking the truth listing).
    let text =
        std::fs::read_to_string(&events).map_err(|e| format!("{}: {e}", events.display()))?;
    let evs = expect::parse_events(&text)?;
    let initial = crawl_listing(&rec.base, dir, "base", false)?;
    check_ops(
        &format!("(c) {w}"),
        &rec.truth.ops,
        &evs,
        &initial,
        &rec.truth.listing,
        &mut problems,
    );

    // (d) the lazy-load policy with a budget of one byte (after every
    // write each file is evicted to the scratch store, and loaded back
    // when a later write needs it): the state again equals the guest's
    // listing, and the events are those of the resident model, byte for
    // byte.
    let (lazy_events, lazy_state) = replay(w, &rec, dir, "-lazy", &["--lazy-load", "1"])?;
    let lazy_got =
        listing::read(&lazy_state).map_err(|e| format!("--state {}: {e}", lazy_state.display()))?;
    check_state(
        &lazy_got,
        &rec.truth.listing,
        &rec.final_img,
        dir,
        &mut problems,
    )?;
    let lazy_text = std::fs::read_to_string(&lazy_events)
        .map_err(|e| format!("{}: {e}", lazy_events.display()))?;
    if lazy_text != text {
        let (a, b): (Vec<&str>, Vec<&str>) = (text.lines().collect(), lazy_text.lines().collect());
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        problems.push(format!(
            "(d) lazy-load events differ from resident ones ({} vs {} lines; first difference at line {:?}: {:?} vs {:?})",
            a.len(),
            b.len(),
            first,
            first.and_then(|i| a.get(i)),
            first.and_then(|i| b.get(i)),
        ));
    }
    verdict(problems)
}

fn run_case(w: Workload) {
    let name = format!("replay_{}_ext4", w.name());
    if guest_available(&name) {
        in_temp_dir(&name, |dir| check(w, dir));
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
