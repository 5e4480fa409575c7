//! `gammaray crawl` of a crashed guest's disk, whose journal needs
//! recovery, against e2fsck's replay and against the guest itself.
//!
//! The disk is `crashed.img` of the recording `replay_crash.rs` makes (the
//! same scripts, read from that file, so the two tests share one cached
//! recording): the first boot made part of its work durable with
//! `fsync(2)` only, so that its metadata is committed in the journal but
//! not written home, listed the file system and crashed.
//!
//! - (a) `gammaray crawl --list --hash crashed.img` equals the same crawl
//!   of a copy on which `e2fsck -fy` replayed the journal (a second tool's
//!   recovery; the copy's journal is then empty, so its crawl reads home
//!   blocks only);
//! - (b) it equals the listing the guest printed before the crash (every
//!   field the guest's listing has, sha256 included);
//! - (c) the crawl of the home blocks alone (`crawl_home`) differs from
//!   that listing: the journal held work the replay had to bring;
//! - (d) replaying the second boot's trace from `crashed.img` (the
//!   kernel's own recovery writes the journal's blocks home first): no
//!   event names a path that only the first boot touched, since those
//!   home writes equal the journal copies the inference started with.
//!
//! `crawl_of_live_disk_snapshots_replays_the_journal` does (a) for disks
//! caught while their guest ran: every workload recording's disk after
//! some of its trace (at flushes where the journal holds committed
//! transactions, a live guest's state), against `e2fsck -E journal_only`.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{check_state, crawl_listing, show, touched, verdict};
use gammaray_core::{FileDevice, NoProgress};
use gammaray_ext4::crawl::{crawl_home, read_superblock};
use gammaray_ext4::recovery;
use gammaray_testbed::{guest_available, listing, needs_recovery, CrashRecording, Workload};

/// `replay_crash.rs`, whose scripts (and so cache key) this test shares.
const REPLAY_CRASH: &str = include_str!("replay_crash.rs");

/// The raw-string constant `name` of `replay_crash.rs`.
fn script(name: &str) -> Result<&'static str, String> {
    let head = format!("const {name}: &str = r#\"");
    let start = REPLAY_CRASH
        .find(&head)
        .ok_or_else(|| format!("replay_crash.rs has no {name}"))?
        + head.len();
    let len = REPLAY_CRASH[start..]
        .find("\"#;")
        .ok_or_else(|| format!("replay_crash.rs: {name} does not end"))?;
    Ok(&REPLAY_CRASH[start..start + len])
}

/// The crash recording, made exactly as `replay_crash.rs` makes it.
fn recording() -> Result<CrashRecording, String> {
    static REC: OnceLock<Result<CrashRecording, String>> = OnceLock::new();
    REC.get_or_init(|| {
        let (first, second) = (script("FIRST")?, script("SECOND")?);
        common::crash_recording(first, second)
    })
    .clone()
}

/// The listing of the crawl of `img`'s home blocks only (no hashes).
fn home_listing(img: &Path, dir: &Path) -> Result<Vec<listing::ListingEntry>, String> {
    let dev = FileDevice::open(img).map_err(|e| e.to_string())?;
    let c = crawl_home(&dev, &NoProgress).map_err(|e| e.to_string())?;
    let (entries, _) = gammaray_core::listing::list(&c.model, 1);
    let mut text = Vec::new();
    gammaray_core::listing::write_lines(&entries, &mut text).map_err(|e| e.to_string())?;
    let path = dir.join(format!(
        "{}-home.jsonl",
        img.file_stem().and_then(|s| s.to_str()).unwrap_or("img")
    ));
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    listing::read(&path).map_err(|e| e.to_string())
}

fn check(dir: &Path) -> Result<(), String> {
    let rec = recording()?;
    let crashed = &rec.first.final_img;
    let mut problems = Vec::new();
    if !needs_recovery(crashed).map_err(|e| e.to_string())? {
        return Err("crashed.img does not need journal recovery".into());
    }
    let dev = FileDevice::open(crashed).map_err(|e| e.to_string())?;
    let sb = read_superblock(&dev).map_err(|e| e.to_string())?;
    let plan = recovery::plan(&dev, &sb)
        .map_err(|e| e.to_string())?
        .ok_or("crashed.img: no internal journal")?;
    let r = &plan.recovery;
    eprintln!(
        "crashed.img: {} committed transactions ({}..={}), {} logged blocks, {} home blocks replayed, \
         {} revoked, next transaction {} at journal block {}, stopped: {:?}",
        r.transactions,
        r.first_sequence,
        r.last_sequence,
        r.logged,
        r.copies.len(),
        r.revoked,
        r.next_sequence,
        r.next_start,
        r.stopped
    );
    if r.transactions == 0 || r.copies.is_empty() {
        problems.push("crashed.img: the journal holds no committed transaction".into());
    }
    if !plan.warnings.is_empty() {
        problems.push(format!("crashed.img: replay warnings {:?}", plan.warnings));
    }

    let got = crawl_listing(crashed, dir, "crashed", true)?;
    let stderr = std::fs::read_to_string(dir.join("crashed.stderr")).unwrap_or_default();
    if !stderr.contains("replayed") {
        problems.push(format!(
            "`gammaray crawl` of crashed.img does not say that it replayed the journal:\n{stderr}"
        ));
    }

    // (a) e2fsck's replay.
    let copy = dir.join("e2fsck.img");
    std::fs::copy(crashed, &copy).map_err(|e| e.to_string())?;
    let out = Command::new("e2fsck")
        .arg("-fy")
        .arg(&copy)
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    if !matches!(out.status.code(), Some(0 | 1)) || !text.contains("recovering journal") {
        return Err(format!(
            "e2fsck -fy {}: {:?}\n{text}",
            copy.display(),
            out.status
        ));
    }
    eprintln!("e2fsck -fy:\n{text}");
    let fsck = crawl_listing(&copy, dir, "e2fsck", true)?;
    let d = listing::diff(&fsck, &got);
    if !d.is_empty() {
        problems.push(format!(
            "(a) the crawl of crashed.img differs from the crawl after e2fsck -fy ({} differences; - e2fsck, + crawl):\n{}",
            d.len(),
            show(&d)
        ));
    }
    if got.iter().any(|e| e.kind == "file" && e.sha256.is_none()) {
        problems.push("(a) the crawl of crashed.img left files unhashed".into());
    }

    // (b) The guest's own listing before the crash.
    let truth = &rec.first.truth.listing;
    let d = listing::diff(truth, &got);
    if !d.is_empty() {
        problems.push(format!(
            "(b) the crawl of crashed.img differs from the guest's listing before the crash ({} differences; - guest, + crawl):\n{}",
            d.len(),
            show(&d)
        ));
    }

    // (c) Not vacuous: the home blocks alone miss the journal's work.
    let home = home_listing(crashed, dir)?;
    let d = listing::diff(truth, &home);
    eprintln!(
        "(c) the home blocks alone differ from the guest's listing in {} lines:\n{}",
        d.len(),
        show(&d)
    );
    if d.is_empty() {
        problems.push(
            "(c) the home blocks of crashed.img already equal the guest's listing: nothing was left in the journal only".into(),
        );
    }

    // (d) The kernel's recovery writes (the second trace starts with them)
    // repeat nothing.
    let second = &rec.second;
    let rep = common::replay(&second.base, &[second.trace.as_path()], dir, "second")?;
    eprintln!(
        "(d) counters: journal_replayed_txns={} journal_replayed_blocks={} checkpoint_blocks={} home_meta_blocks={} journal_txns={} journal_txns_broken={}",
        rep.counter("journal_replayed_txns"),
        rep.counter("journal_replayed_blocks"),
        rep.counter("checkpoint_blocks"),
        rep.counter("home_meta_blocks"),
        rep.counter("journal_txns"),
        rep.counter("journal_txns_broken"),
    );
    if rep.counter("journal_replayed_blocks") != r.copies.len() as u64 {
        problems.push(format!(
            "(d) the inference did not start with the journal's {} copies (journal_replayed_blocks={})",
            r.copies.len(),
            rep.counter("journal_replayed_blocks")
        ));
    }
    let mine = touched(&second.truth.ops);
    let theirs: Vec<String> = touched(&rec.first.truth.ops)
        .into_iter()
        .filter(|p| !mine.contains(p))
        .collect();
    let under = |x: &str, p: &str| x == p || (p != "/" && x.starts_with(&format!("{p}/")));
    let repeats: Vec<String> = rep
        .events
        .iter()
        .filter(|e| {
            theirs
                .iter()
                .any(|p| under(&e.path, p) || e.old_path.as_deref().is_some_and(|o| under(o, p)))
        })
        .map(|e| format!("    #{} {} {}", e.seq, e.event, e.path))
        .collect();
    if !repeats.is_empty() {
        problems.push(format!(
            "(d) replaying the second boot from crashed.img gives events for paths only the first boot touched (its journal, already in the crawl):\n{}",
            repeats.join("\n")
        ));
    }
    verdict(problems)
}

/// Snapshots of a disk while its guest runs (the disk after the first
/// writes of a recorded workload, at a flush, with committed transactions
/// in the journal that are not written home yet, as a live attach or an
/// inference restart sees it): `gammaray crawl --list --hash` of each
/// equals the same crawl of a copy on which `e2fsck -E journal_only`
/// replayed the journal (only the replay: a mounted file system's snapshot
/// is not otherwise repaired). At least one snapshot's home blocks alone
/// must differ, or the check proves nothing.
fn check_live_snapshots(dir: &Path) -> Result<(), String> {
    use gammaray_core::{BlockDevice, OverlayDevice};
    use gammaray_qemu::dmlog::{TraceReader, TraceWriter};

    /// Snapshots taken per workload (evenly spread over the flushes
    /// where the journal holds committed transactions).
    const PER_WORKLOAD: usize = 6;
    let mut problems = Vec::new();
    let mut checked = 0usize;
    let mut home_differs = 0usize;
    let mut restarted = 0usize;
    for w in Workload::ALL {
        let rec = common::workload_recording(w)?;
        let reader =
            TraceReader::open(&rec.trace).map_err(|e| format!("{}: {e}", rec.trace.display()))?;
        let sector_size = reader.super_block().sector_size;
        let entries: Vec<gammaray_core::DiskWrite> = reader
            .map(|e| e.map(|e| e.write).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        // Pass 1: the flushes after which the journal is not empty.
        let base = || -> Result<OverlayDevice, String> {
            Ok(OverlayDevice::new(Box::new(
                FileDevice::open(&rec.base).map_err(|e| e.to_string())?,
            )))
        };
        let mut ov = base()?;
        let mut candidates = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            ov.apply(e);
            if !e.is_flush() {
                continue;
            }
            let Ok(sb) = read_superblock(&ov) else {
                continue;
            };
            if let Ok(Some(p)) = recovery::plan(&ov, &sb) {
                if p.recovery.transactions > 0 && !p.recovery.copies.is_empty() {
                    candidates.push(i);
                }
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let step = candidates.len().div_ceil(PER_WORKLOAD).max(1);
        let chosen: Vec<usize> = candidates.iter().copied().step_by(step).collect();
        // Pass 2: the chosen snapshots as images.
        let mut ov = base()?;
        for (i, e) in entries.iter().enumerate() {
            ov.apply(e);
            if !chosen.contains(&i) {
                continue;
            }
            let name = format!("{w}-{i}");
            let img = dir.join(format!("{name}.img"));
            let mut bytes = vec![0u8; ov.size() as usize];
            ov.read_at(0, &mut bytes).map_err(|e| e.to_string())?;
            std::fs::write(&img, &bytes).map_err(|e| e.to_string())?;
            let got = crawl_listing(&img, dir, &name, true)?;
            let copy = dir.join(format!("{name}-e2fsck.img"));
            std::fs::copy(&img, &copy).map_err(|e| e.to_string())?;
            let out = Command::new("e2fsck")
                .args(["-y", "-E", "journal_only"])
                .arg(&copy)
                .output()
                .map_err(|e| format!("e2fsck: {e}"))?;
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            if !matches!(out.status.code(), Some(0 | 1)) || !text.contains("recovering journal") {
                return Err(format!(
                    "e2fsck -E journal_only {name}: {:?}\n{text}",
                    out.status
                ));
            }
            let truth = crawl_listing(&copy, dir, &format!("{name}-e2fsck"), true)?;
            let d = listing::diff(&truth, &got);
            if !d.is_empty() {
                problems.push(format!(
                    "{name} (after trace entry {i}): the crawl differs from the crawl after e2fsck's replay ({} differences; - e2fsck, + crawl):\n{}",
                    d.len(),
                    show(&d)
                ));
            }
            let home = home_listing(&img, dir)?;
            if !listing::diff(&truth, &home).is_empty() {
                home_differs += 1;
            }
            checked += 1;

            // An inference (re)started on the snapshot follows the rest of
            // the trace to the guest's final state, and re-announces
            // nothing the crawl already had: a `create` of a path the
            // snapshot lists with the same inode, before any delete or move
            // of that path, could only come from a checkpoint of the
            // replayed transactions.
            let rest = dir.join(format!("{name}.log"));
            let mut tw = TraceWriter::create(&rest, sector_size).map_err(|e| e.to_string())?;
            for e in &entries[i + 1..] {
                tw.append(e).map_err(|e| e.to_string())?;
            }
            tw.sync_super().map_err(|e| e.to_string())?;
            drop(tw);
            let r = common::replay(&img, &[rest.as_path()], dir, &format!("{name}-restart"))?;
            let mut state_problems = Vec::new();
            check_state(
                &r.state,
                &rec.truth.listing,
                &rec.final_img,
                dir,
                &mut state_problems,
            )?;
            for p in state_problems {
                problems.push(format!("{name}: inference restarted on the snapshot: {p}"));
            }
            if r.counter("journal_txns_broken") > 0 {
                problems.push(format!(
                    "{name}: inference restarted on the snapshot: {} journal transactions not followed",
                    r.counter("journal_txns_broken")
                ));
            }
            // Path → inode in the snapshot, as the crawl (journal
            // replayed) has it.
            let inodes: std::collections::HashMap<String, u64> = {
                use gammaray_core::FileSystem;
                let dev = FileDevice::open(&img).map_err(|e| e.to_string())?;
                let c = gammaray_ext4::Ext4
                    .crawl(&dev, &NoProgress)
                    .map_err(|e| e.to_string())?;
                gammaray_core::listing::list(&c.model, 1)
                    .0
                    .into_iter()
                    .map(|e| (e.path, e.file))
                    .collect()
            };
            let mut gone: Vec<&str> = Vec::new();
            for e in &r.events {
                if e.event == "delete" {
                    gone.push(&e.path);
                }
                if let Some(o) = &e.old_path {
                    gone.push(o);
                }
                if e.event == "create"
                    && !gone
                        .iter()
                        .any(|g| *g == e.path || e.path.starts_with(&format!("{g}/")))
                    && inodes.get(&e.path) == Some(&e.inode)
                {
                    problems.push(format!(
                        "{name}: inference restarted on the snapshot re-announces #{} create {} (already in the crawl)",
                        e.seq, e.path
                    ));
                }
            }
            restarted += 1;
            std::fs::remove_file(&img).ok();
            std::fs::remove_file(&copy).ok();
        }
    }
    eprintln!(
        "{checked} live snapshots checked against e2fsck; in {home_differs} the home blocks alone differ; {restarted} inference restarts followed to the end"
    );
    if checked == 0 || home_differs == 0 {
        problems.push(format!(
            "{checked} snapshots with committed transactions, {home_differs} where the journal mattered: the check proves nothing"
        ));
    }
    verdict(problems)
}

#[test]
fn crawl_of_live_disk_snapshots_replays_the_journal() {
    if guest_available("crawl_of_live_disk_snapshots_replays_the_journal") {
        common::in_temp_dir("crawl_live_snapshots", check_live_snapshots);
    }
}

#[test]
fn crawl_of_crashed_disk_replays_the_journal() {
    if guest_available("crawl_of_crashed_disk_replays_the_journal") {
        common::in_temp_dir("crawl_recovery", check);
    }
}
