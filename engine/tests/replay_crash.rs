//! `gammaray replay` across a guest crash and the next boot's journal
//! recovery, against real guests.
//!
//! The first boot works on a fresh ext4 disk, `sync`s, works more and
//! makes that durable with `fsync` only (jbd2 commits, nothing written
//! home: `sync(2)` would also write the committed metadata home), takes a
//! listing and resets at once (`echo b > /proc/sysrq-trigger`; QEMU runs
//! with `-no-reboot`, so the reset ends it): the second part's metadata
//! is in the journal only, and the disk is left with `needs_recovery` set
//! (the recording checks it; the test checks that a crawl of the crashed
//! disk misses the second part).
//! The second boot mounts the same disk, so the kernel replays the journal
//! (home writes of the committed blocks, no new commit blocks), runs more
//! operations and ends normally (sync, listing, unmount). Both boots are
//! recorded behind blklogwrites into their own traces.
//!
//! `crash_recovery_ext4` replays both traces over the fresh disk
//! (`--log trace1.log --log trace2.log`) and checks that
//! (a) the state equals the second boot's `truth.jsonl`, (b) and a crawl
//! of `final.img`; (c1) the first boot's events (the first trace's)
//! match its operations, all followed by a sync; (c2) the second boot's
//! events match its operations, starting from the first boot's snapshot;
//! (d) the recovery repeats nothing: no event of the second trace names a
//! path of the first boot's operations (or their directories) that the
//! second boot does not touch itself (the second workload keeps away from
//! them, so any such event could only come from the recovery's home
//! writes re-announcing what the journal commits already gave).
//!
//! `crash_from_crashed_disk_ext4` starts gammaray on the crashed disk
//! instead (its crawler replays the dirty journal's committed transactions
//! in memory, so the crawl must equal the first boot's snapshot; see
//! `crawl_recovery.rs` for that crawl against e2fsck) and replays the
//! second trace only: the state must still equal the truth and a crawl of
//! `final.img` (the recovery's home writes equal the journal copies the
//! inference starts with), and the second boot's operations must have
//! their events and its files their bytes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use common::{check_ops, check_state, crawl_listing, touched, verdict, with_sync};
use gammaray_testbed::{expect, guest_available, needs_recovery, CrashRecording};

/// The first boot (the recording adds the listing and the crash). Its
/// first part ends in `sync(2)`, which also writes the committed metadata
/// home; the second part is made durable with `fsync(2)` only (busybox
/// `sync FILE`), which commits the jbd2 transaction without writing
/// anything home, so its metadata is in the journal only when the guest
/// crashes (write-back of dirty buffers is pushed out of reach too).
const FIRST: &str = r#"op_mkdir /crash
op_write /crash/a.txt "hello from the first boot"
op_append_lines /var/log/app.log boot1 20
op_fill /crash/big.bin 48 x
op_move /home/user/notes.txt /crash/notes.txt
op_sync
echo 360000 > /proc/sys/vm/dirty_expire_centisecs
op_chmod 600 /etc/app.conf
op_symlink a.txt /crash/link
op_rm /home/user/docs/readme.md
op_append /crash/a.txt "after the first sync"
op_write /crash/late.txt "committed by fsync only"
op_mkdir /crash/sub
op_fill /crash/sub/data.bin 24 z
op_move /crash/big.bin /crash/sub/big.bin
op_append_lines /var/log/app.log boot1b 5
op_touch_d "2023-05-06 07:08:09" /var/log/app.log
op_chown 1000:1000 /crash/notes.txt
sync "$R/crash/a.txt" "$R/crash/late.txt" "$R/crash/sub/data.bin" "$R/var/log/app.log"
sync "$R/crash/sub" "$R/crash" "$R/crash/notes.txt"
"#;

/// The second boot: away from every path the first one touched.
const SECOND: &str = r#"op_mkdir /boot2
op_write /boot2/b.txt "second boot"
op_append_lines /srv/data/log2.txt boot2 10
op_copy /etc/hostname /boot2/hostname.copy
op_move /boot2/b.txt /boot2/c.txt
op_append /var/log/syslog "the second boot was here"
op_chmod 640 /boot2/c.txt
op_fill /boot2/fill.bin 20 y
op_rm /srv/data/blob.bin
"#;

fn recording() -> Result<CrashRecording, String> {
    static REC: OnceLock<Result<CrashRecording, String>> = OnceLock::new();
    REC.get_or_init(|| common::crash_recording(FIRST, SECOND))
        .clone()
}

fn check_both(dir: &Path) -> Result<(), String> {
    let rec = recording()?;
    let (first, second) = (&rec.first, &rec.second);
    if !needs_recovery(&first.final_img).map_err(|e| e.to_string())? {
        return Err("crashed.img does not need journal recovery".into());
    }
    let r = common::replay(&first.base, &rec.traces(), dir, "both")?;
    eprintln!(
        "counters: journal_txns={} journal_txns_broken={} journal_stale_commits={} checkpoint_blocks={} home_meta_blocks={}",
        r.counter("journal_txns"),
        r.counter("journal_txns_broken"),
        r.counter("journal_stale_commits"),
        r.counter("checkpoint_blocks"),
        r.counter("home_meta_blocks"),
    );
    let mut problems = Vec::new();
    check_state(
        &r.state,
        &second.truth.listing,
        &second.final_img,
        dir,
        &mut problems,
    )?;

    let segs = r.events_per_log()?;
    let [seg1, seg2] = segs[..] else {
        return Err(format!("expected events of 2 traces, got {}", segs.len()));
    };
    let base = crawl_listing(&first.base, dir, "base", false)?;
    check_ops(
        "(c1) first boot",
        &first.truth.ops,
        seg1,
        &base,
        &first.truth.listing,
        &mut problems,
    );
    check_ops(
        "(c2) second boot",
        &second.truth.ops,
        seg2,
        &first.truth.listing,
        &second.truth.listing,
        &mut problems,
    );

    // (d) The first boot's paths the second boot leaves alone.
    let mine = touched(&second.truth.ops);
    let theirs: Vec<String> = touched(&first.truth.ops)
        .into_iter()
        .filter(|p| !mine.contains(p))
        .collect();
    let hits = |e: &expect::Event, p: &str| {
        let under = |x: &str| x == p || (p != "/" && x.starts_with(&format!("{p}/")));
        under(&e.path) || e.old_path.as_deref().is_some_and(under)
    };
    let mut table = String::new();
    let mut repeats = Vec::new();
    for p in &theirs {
        let per_kind = |seg: &[expect::Event]| {
            let mut m: BTreeMap<String, usize> = BTreeMap::new();
            for e in seg
                .iter()
                .filter(|e| e.path == *p || e.old_path.as_deref() == Some(p))
            {
                *m.entry(e.event.clone()).or_default() += 1;
            }
            m
        };
        table.push_str(&format!(
            "    {p}: first trace {:?}, second trace {:?}\n",
            per_kind(seg1),
            per_kind(seg2)
        ));
        repeats.extend(seg2.iter().filter(|e| hits(e, p)).map(|e| {
            format!(
                "    #{} {} {} (first-boot path {p})",
                e.seq, e.event, e.path
            )
        }));
    }
    eprintln!("(d) events per first-boot path the second boot does not touch:\n{table}");
    if !repeats.is_empty() {
        repeats.dedup();
        problems.push(format!(
            "(d) the second trace (journal recovery, then the second workload) repeats events for the first boot's paths:\n{}",
            repeats.join("\n")
        ));
    }
    verdict(problems)
}

fn check_from_crashed(dir: &Path) -> Result<(), String> {
    let rec = recording()?;
    let second = &rec.second;
    let r = common::replay(&second.base, &[second.trace.as_path()], dir, "second")?;
    let mut problems = Vec::new();
    check_state(
        &r.state,
        &second.truth.listing,
        &second.final_img,
        dir,
        &mut problems,
    )?;
    // The crash left committed work in the journal only; the crawl of the
    // crashed disk replays it in memory, so it equals the first boot's
    // snapshot.
    let crashed = crawl_listing(&second.base, dir, "crashed", true)?;
    let diff = gammaray_testbed::listing::diff(&rec.first.truth.listing, &crashed);
    if !diff.is_empty() {
        problems.push(format!(
            "the crawl of crashed.img (journal replayed in memory) differs from the first boot's snapshot in {} lines (- snapshot, + crawl):\n{}",
            diff.len(),
            common::show(&diff)
        ));
    }
    // The second boot's operations must have their events, and every file
    // created during the trace its exact bytes. The recovery's home writes
    // equal the journal copies the inference started with, so they give
    // no events of their own (crawl_recovery.rs checks that).
    let report = expect::check(
        &with_sync(&second.truth.ops),
        &r.events,
        &crashed,
        &second.truth.listing,
    );
    eprintln!(
        "(c) second boot from the crashed disk: {} events checked against {} operations:\n{report}",
        r.events.len(),
        second.truth.ops.len()
    );
    let bad_bytes: Vec<String> = report
        .content_failures()
        .iter()
        .map(|c| format!("{}: {:?}", c.path, c.result))
        .collect();
    if !report.failures().is_empty() || !bad_bytes.is_empty() {
        problems.push(format!(
            "(c) second boot from the crashed disk: {} required operations lack events; wrong bytes: {bad_bytes:?}",
            report.failures().len()
        ));
    }
    verdict(problems)
}

#[test]
fn crash_recovery_ext4() {
    if guest_available("crash_recovery_ext4") {
        common::in_temp_dir("crash_recovery_ext4", check_both);
    }
}

#[test]
fn crash_from_crashed_disk_ext4() {
    if guest_available("crash_from_crashed_disk_ext4") {
        common::in_temp_dir("crash_from_crashed_disk_ext4", check_from_crashed);
    }
}
