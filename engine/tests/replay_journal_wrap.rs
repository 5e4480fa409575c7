//! `gammaray replay` over a jbd2 journal that wraps around, against a real
//! guest: ext4 made with the smallest journal mke2fs allows with 4 KiB
//! blocks (`-J size=4`: 1024 blocks; `-J size=1` is refused with 4 KiB
//! blocks), and a workload that commits hundreds of transactions (append a
//! line, create a file, delete an older one, a rename now and then, a log
//! rotation, each made durable by `fsync`, which commits without writing
//! home), so that the log wraps several times and jbd2 must checkpoint to
//! make room.
//!
//! Checks as in `replay_ground_truth`: (a) `--state` equals the guest's
//! `truth.jsonl`, (b) and `gammaray crawl --list --hash final.img`, (c)
//! every synced operation has its events (and created files their bytes);
//! and (d) the inference walked every transaction: `journal_txns_broken`
//! is 0, `journal_txns` is more than 256, and the journal blocks written
//! cover the journal more than three times.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::{check_ops, check_state, crawl_listing, fnv, verdict};
use gammaray_testbed::{
    find_tool, guest_available, record, FsKind, RecordSpec, Recording, Workload,
};

/// The mkfs.ext4 arguments: the smallest journal (1024 blocks of 4 KiB).
const MKFS: [&str; 2] = ["-J", "size=4"];

/// Iterations of the workload's loop; each one is a `sync`, i.e. one jbd2
/// transaction of several blocks (descriptor, inode table blocks,
/// directory block, bitmaps, group descriptors, commit).
const ROUNDS: u32 = 400;

/// The workload. Each round is made durable with `fsync(2)` (busybox `sync
/// FILE`) of the files it wrote, not with `sync(2)`: fsync commits the one
/// running jbd2 transaction (which holds all of the round's metadata) but,
/// unlike sync(2), does not write the committed metadata home, so home
/// writes come only from the checkpoints jbd2 must do when the log is full
/// (write-back of dirty buffers is pushed out of reach). The round then
/// prints `OP sync`: what it did is durable.
fn script() -> String {
    format!(
        r#"echo 360000 > /proc/sys/vm/dirty_expire_centisecs
op_mkdir /w
sync "$R/w"
i=0
while [ $i -lt {ROUNDS} ]; do
  op_append /var/log/app.log "wrap line $i: the quick brown fox"
  op_write /w/n$i "file $i"
  f=/w/n$i
  if [ -e "$R/w/n$((i - 3))" ]; then op_rm /w/n$((i - 3)); fi
  case $i in
    *7) op_move /w/n$i /w/m$i; f=/w/m$i ;;
  esac
  case $i in
    99 | 199 | 299) op_move /var/log/app.log /var/log/app.log.$i ;;
  esac
  sync "$R$f" "$R/var/log/app.log.$i" 2>/dev/null || sync "$R$f"
  sync "$R/var/log/app.log" 2>/dev/null || true
  gr_op sync
  i=$((i + 1))
done
"#
    )
}

fn recording() -> Result<Recording, String> {
    static REC: OnceLock<Result<Recording, String>> = OnceLock::new();
    REC.get_or_init(|| {
        let script = script();
        let key = fnv(format!(
            "{script}\n{MKFS:?}\n{}\n{}",
            include_str!("../../testbed/guest/lib.sh"),
            include_str!("../../testbed/guest/init.sh"),
        )
        .as_bytes());
        common::cached(
            &format!("journal-wrap-ext4-{key:016x}"),
            "truth.jsonl",
            |dir| Recording::load(dir).map_err(|e| e.to_string()),
            |tmp| {
                let mut spec = RecordSpec::new(Workload::Logs, FsKind::Ext4, tmp);
                spec.script = Some(script.clone());
                spec.mkfs_args = MKFS.iter().map(|s| s.to_string()).collect();
                record(&spec)
                    .map(|_| ())
                    .map_err(|e| format!("recording the journal-wrap workload: {e}"))
            },
        )
    })
    .clone()
}

/// The journal's length in blocks, from `dumpe2fs -h`.
fn journal_blocks(img: &Path) -> Result<u64, String> {
    let tool = find_tool("dumpe2fs").ok_or("dumpe2fs not found")?;
    let out = Command::new(tool)
        .arg("-h")
        .arg(img)
        .output()
        .map_err(|e| format!("dumpe2fs: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Total journal blocks:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no journal length in dumpe2fs -h {}", img.display()))
}

fn check(dir: &Path) -> Result<(), String> {
    let rec = recording()?;
    let jlen = journal_blocks(&rec.base)?;
    let r = common::replay(&rec.base, &[rec.trace.as_path()], dir, "wrap")?;
    // The counters the brief asks for, on one line of their own.
    let (txns, broken, written) = (
        r.counter("journal_txns"),
        r.counter("journal_txns_broken"),
        r.counter("journal_blocks"),
    );
    eprintln!(
        "journal: {jlen} blocks; journal_txns={txns} journal_txns_broken={broken} journal_blocks={written} ({:.1} times the journal) journal_stale_commits={} journal_bad_checksums={}",
        written as f64 / jlen as f64,
        r.counter("journal_stale_commits"),
        r.counter("journal_bad_checksums"),
    );
    let mut problems = Vec::new();
    if jlen != 1024 {
        problems.push(format!("the journal has {jlen} blocks, not 1024"));
    }
    check_state(
        &r.state,
        &rec.truth.listing,
        &rec.final_img,
        dir,
        &mut problems,
    )?;

    let initial = crawl_listing(&rec.base, dir, "base", false)?;
    check_ops(
        "(c)",
        &rec.truth.ops,
        &r.events,
        &initial,
        &rec.truth.listing,
        &mut problems,
    );

    if broken != 0 {
        problems.push(format!("(d) journal_txns_broken = {broken}, expected 0"));
    }
    if txns <= 256 {
        problems.push(format!("(d) journal_txns = {txns}, expected more than 256"));
    }
    if written <= 3 * jlen {
        problems.push(format!(
            "(d) only {written} journal blocks written over a {jlen}-block journal: it did not wrap three times"
        ));
    }
    verdict(problems)
}

#[test]
fn journal_wrap_ext4() {
    if guest_available("journal_wrap_ext4") {
        common::in_temp_dir("journal_wrap_ext4", check);
    }
}
