//! `gammaray run` against real guests: the guest's disk is served by the
//! engine over NBD, and the events it streams live are checked against the
//! guest's own operations and listing (ground truth from inside the guest).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{crawl_listing, gammaray, in_temp_dir, show};
use gammaray_testbed::{
    disk, expect, guest_available, listing, Drive, FsKind, Guest, RunSpec, Workload,
};

/// Serves a fresh disk with `gammaray run`, boots the guest on it with
/// `workload`, and checks the live events.
fn live(workload: Workload, dir: &Path) -> Result<(), String> {
    let img = dir.join("disk.img");
    disk::make_base_image(FsKind::Ext4, &img, disk::DEFAULT_DISK_MIB).map_err(|e| e.to_string())?;
    let initial = crawl_listing(&img, dir, "initial", false)?;
    let sock = dir.join("nbd.sock");
    let events = dir.join("events.jsonl");
    let stderr = std::fs::File::create(dir.join("run.stderr")).map_err(|e| e.to_string())?;
    let mut engine = Command::new(gammaray())
        .args(["run", "--vm", "live", "--host", "h", "--for", "300"])
        .arg("--serve")
        .arg(&img)
        .arg("--socket")
        .arg(&sock)
        .arg("--events")
        .arg(&events)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting gammaray run: {e}"))?;
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(60) || engine.try_wait().ok().flatten().is_some() {
            let _ = engine.kill();
            let err = std::fs::read_to_string(dir.join("run.stderr")).unwrap_or_default();
            return Err(format!("gammaray run did not start serving: {err}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let guest = Guest::new().map_err(|e| e.to_string())?;
    let spec = RunSpec::new(dir, workload.script(), FsKind::Ext4, Drive::Nbd(sock));
    let out = guest.run(&spec);
    // The guest is gone: the engine follows the last writes and exits.
    let t1 = Instant::now();
    let status = loop {
        match engine.try_wait() {
            Ok(Some(s)) => break Some(s),
            _ if t1.elapsed() > Duration::from_secs(60) => {
                let _ = engine.kill();
                break None;
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let out = out.map_err(|e| format!("guest: {e}"))?;
    let err = std::fs::read_to_string(dir.join("run.stderr")).unwrap_or_default();
    eprintln!("gammaray run: {err}");
    match status {
        Some(s) if s.success() => {}
        other => return Err(format!("gammaray run ended with {other:?}: {err}")),
    }
    // The disk is the guest's own: its crawl equals the guest's listing.
    let final_listing = crawl_listing(&img, dir, "final", true)?;
    let diff = listing::diff(&final_listing, &out.truth.listing);
    if !diff.is_empty() {
        return Err(format!(
            "the served disk differs from the guest's listing:\n{}",
            show(&diff)
        ));
    }
    // The events streamed live match the operations.
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let evs = expect::parse_events(&text)?;
    let mut ops = out.truth.ops.clone();
    // The guest's init syncs after the workload.
    ops.push("OP sync".to_string());
    let report = expect::check(&ops, &evs, &initial, &out.truth.listing);
    eprintln!("{workload}: {} live events:\n{report}", evs.len());
    if !report.passed() {
        return Err(format!(
            "live events do not match: {} operations lack events, {} files have wrong bytes",
            report.failures().len(),
            report.content_failures().len()
        ));
    }
    if evs.iter().any(|e| e.part != 1) {
        return Err("events without the partition number".into());
    }
    Ok(())
}

#[test]
fn live_serve_logs_ext4() {
    if guest_available("live_serve_logs_ext4") {
        in_temp_dir("live-logs", |d| live(Workload::Logs, d));
    }
}

#[test]
fn live_serve_tree_ext4() {
    if guest_available("live_serve_tree_ext4") {
        in_temp_dir("live-tree", |d| live(Workload::Tree, d));
    }
}
