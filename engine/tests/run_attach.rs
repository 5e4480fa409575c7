//! Live attach (the paper's online case) against a real guest that keeps
//! writing: `gammaray run` attaches over QMP to a VM that is already
//! running, while a background loop in the guest appends to a log and
//! creates, rewrites and deletes files. The engine copies the disk (QEMU's
//! point-in-time backup), crawls it while the writes queue up, replays the
//! queue and follows live. Checked against the guest's own ground truth:
//! - the final state gammaray reports (`--state-dir`) equals the guest's
//!   listing, every file's sha256 included;
//! - gammaray's copy of the disk crawls to the same listing;
//! - every operation the guest made after the attach has its events, and
//!   the files those operations wrote have exactly their bytes;
//! - writes really were queued during the copy and crawl, and the guest was
//!   paused only for the switch.

mod common;

use std::path::Path;
use std::time::Duration;

use common::engine::Engine;
use common::{check_ops, crawl_listing, in_temp_dir, show, verdict};
use gammaray_testbed::{
    disk, expect, guest_available, listing, Drive, FsKind, Guest, Pacer, RunSpec, DISK_NODE,
};

/// The guest's workload: a writer in the background for the whole attach,
/// then (after a synced snapshot listing) operations whose events are
/// checked one by one.
const SCRIPT: &str = r#"
mkdir -p bg
(
  i=0
  while [ ! -e /tmp/bg-stop ]; do
    i=$((i + 1))
    echo "bg line $i: the quick brown fox jumps over the lazy dog" >> bg/log
    case $((i % 10)) in
      0) echo "rewrite $i" > bg/f$((i / 10 % 6)); sync ;;
      5) rm -f bg/f$(((i / 10 + 3) % 6)); sync ;;
    esac
    sleep 0.02
  done
) &
bg=$!
sleep 2
gr_pace attach
sleep 3
touch /tmp/bg-stop
wait $bg
gr_snapshot attached
op_mkdir /b
op_write /b/hello "hello from after the attach"
op_append_lines /b/app.log after 40
op_move /b/hello /b/hello2
op_chmod 600 /b/hello2
op_fill /b/big 300 x
op_append /bg/log "one more line, after the attach"
op_move /bg/log /b/bg.log
op_rm /b/big
op_symlink hello2 /b/link
"#;

/// QEMU's copy of the 64 MiB disk is slowed to take seconds, so that the
/// guest writes (and overwrites regions not yet copied) all along.
const COPY_RATE: &str = "16MiB";

/// The number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> Option<f64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn attach_during_writes(via: &str, dir: &Path) -> Result<(), String> {
    let img = dir.join("disk.img");
    disk::make_base_image(FsKind::Ext4, &img, disk::DEFAULT_DISK_MIB).map_err(|e| e.to_string())?;
    let qmp = dir.join("qmp.sock");
    let mut pacer = Pacer::listen(&dir.join("pace.sock")).map_err(|e| e.to_string())?;
    let guest = Guest::new().map_err(|e| e.to_string())?;
    let mut spec = RunSpec::new(dir, SCRIPT, FsKind::Ext4, Drive::Raw(img.clone()));
    spec.qmp = Some(qmp.clone());
    spec.pace = Some(pacer.path().to_path_buf());
    spec.timeout = Duration::from_secs(400);
    let mut running = guest.spawn(&spec).map_err(|e| e.to_string())?;

    let step = Duration::from_secs(180);
    let copy = dir.join("copy.img");
    let state_dir = dir.join("state");
    let events = dir.join("events.jsonl");
    let run = (|| -> Result<String, String> {
        // The guest is writing in the background; its foreground waits here.
        pacer.wait_for("attach", step).map_err(|e| e.to_string())?;
        let cfg = dir.join("gammaray.toml");
        std::fs::write(
            &cfg,
            format!(
                "host = \"h\"\n[metrics]\nenabled = false\n[[vm]]\nname = \"live\"\ndisk = \"{}\"\n\
                 source = {{ type = \"attach\", qmp = \"{}\", drive = \"{DISK_NODE}\", via = \"{via}\", copy_rate = \"{COPY_RATE}\" }}\n",
                copy.display(),
                qmp.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut engine = Engine::start(
            dir,
            &[],
            &[
                "-c".as_ref(),
                cfg.as_os_str(),
                "--events".as_ref(),
                events.as_os_str(),
                "--state-dir".as_ref(),
                state_dir.as_os_str(),
                "--for".as_ref(),
                "600".as_ref(),
            ],
        )?;
        engine.wait_for("caught up", step)?;
        // Let the guest go on: more background writes followed live, then
        // the checked operations; it stops at `done` after unmounting.
        pacer.resume().map_err(|e| e.to_string())?;
        pacer.wait_for("done", step).map_err(|e| e.to_string())?;
        let err = engine.stop();
        pacer.resume().map_err(|e| e.to_string())?;
        err
    })();
    if run.is_err() {
        running.kill();
    }
    let out = running.wait();
    let err = run?;
    let out = out.map_err(|e| format!("guest: {e}"))?;
    let truth = &out.truth;

    let mut problems = Vec::new();
    // Writes were queued while the disk was copied and crawled.
    let queued = number_after(&err, "catching up on ").unwrap_or(0.0);
    let paused_ms = number_after(&err, "guest paused ").unwrap_or(f64::MAX);
    eprintln!("attach via {via}: {queued} writes queued during copy and crawl; guest paused {paused_ms} ms");
    if queued < 1.0 {
        problems.push(format!(
            "no write was queued during the copy and crawl: the guest was not writing during the attach?\n{err}"
        ));
    }
    if paused_ms > 5_000.0 {
        problems.push(format!("the guest was paused {paused_ms} ms"));
    }
    // The state gammaray ends with is the guest's own.
    let state =
        listing::read(&state_dir.join("live.jsonl")).map_err(|e| format!("--state-dir: {e}"))?;
    let diff = listing::diff(&truth.listing, &state);
    if !diff.is_empty() {
        problems.push(format!(
            "the final state differs from the guest's listing ({} differences; - guest, + gammaray):\n{}",
            diff.len(),
            show(&diff)
        ));
    }
    let copied = crawl_listing(&copy, dir, "copy", true)?;
    let diff = listing::diff(&truth.listing, &copied);
    if !diff.is_empty() {
        problems.push(format!(
            "gammaray's copy of the disk differs from the guest's listing ({} differences; - guest, + copy):\n{}",
            diff.len(),
            show(&diff)
        ));
    }
    // Every operation after the attach has its events.
    let snap = truth
        .snapshots
        .iter()
        .find(|s| s.label == "attached")
        .ok_or("the guest printed no `attached` snapshot")?;
    let after: Vec<String> = truth.ops[snap.after_ops..]
        .iter()
        .filter(|l| !l.starts_with("OP snapshot"))
        .cloned()
        .collect();
    if after.len() < 10 {
        return Err(format!("only {} operations after the attach", after.len()));
    }
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let evs = expect::parse_events(&text)?;
    check_ops(
        &format!("attach via {via}"),
        &after,
        &evs,
        &snap.listing,
        &truth.listing,
        &mut problems,
    );
    verdict(problems)
}

#[test]
fn live_attach_mirror_while_the_guest_writes() {
    if guest_available("live_attach_mirror_while_the_guest_writes") {
        in_temp_dir("attach-mirror", |d| attach_during_writes("mirror", d));
    }
}

#[test]
fn live_attach_blklogwrites_while_the_guest_writes() {
    if guest_available("live_attach_blklogwrites_while_the_guest_writes") {
        in_temp_dir("attach-blklogwrites", |d| {
            attach_during_writes("blklogwrites", d)
        });
    }
}
