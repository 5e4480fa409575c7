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

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{crawl_listing, fnv, show, verdict};
use gammaray_core::{FileDevice, NoProgress};
use gammaray_ext4::crawl::{crawl_home, read_superblock};
use gammaray_ext4::recovery;
use gammaray_testbed::{
    guest_available, listing, needs_recovery, record_crash, truth::split_op, CrashRecording,
    FsKind, RecordSpec, Workload,
};

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
        let key = fnv(format!(
            "{first}\n{second}\n{}\n{}\n{}",
            include_str!("../../testbed/guest/lib.sh"),
            include_str!("../../testbed/guest/init.sh"),
            include_str!("../../testbed/src/record.rs"),
        )
        .as_bytes());
        common::cached(
            &format!("crash-ext4-{key:016x}"),
            "truth.jsonl",
            |dir| CrashRecording::load(dir).map_err(|e| e.to_string()),
            |tmp| {
                let mut spec = RecordSpec::new(Workload::Edits, FsKind::Ext4, tmp);
                spec.script = Some(second.to_string());
                record_crash(&spec, first)
                    .map(|_| ())
                    .map_err(|e| format!("recording the crash: {e}"))
            },
        )
    })
    .clone()
}

/// Paths named by `ops` (arguments starting with `/`) and their parent
/// directories.
fn touched(ops: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for o in ops {
        let Some((_, args)) = split_op(o) else {
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

/// The listing of the crawl of `img`'s home blocks only (no hashes).
fn home_listing(img: &Path, dir: &Path) -> Result<Vec<listing::ListingEntry>, String> {
    let dev = FileDevice::open(img).map_err(|e| e.to_string())?;
    let c = crawl_home(&dev, &NoProgress).map_err(|e| e.to_string())?;
    let (entries, _) = gammaray_core::listing::list(&c.model, 1);
    let mut text = Vec::new();
    gammaray_core::listing::write_lines(&entries, &mut text).map_err(|e| e.to_string())?;
    let path = dir.join("home.jsonl");
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

#[test]
fn crawl_of_crashed_disk_replays_the_journal() {
    if guest_available("crawl_of_crashed_disk_replays_the_journal") {
        common::in_temp_dir("crawl_recovery", check);
    }
}
