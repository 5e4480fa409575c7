//! The crawl of a disk whose journal holds committed but un-checkpointed
//! transactions, against e2fsck's own journal replay.
//!
//! Each case makes image `B` from image `A0` with debugfs edits (new
//! file, directories, a symlink, a removal, a chmod, a size change), then
//! logs the blocks that differ (`B`'s contents) as jbd2 transactions in
//! `A0`'s journal with debugfs (`journal_open`, `journal_write`,
//! `journal_close`), giving `A`: the home blocks are `A0`'s, the journal
//! holds `B`'s. The ground truth is e2fsck: a copy of `A` on which
//! `e2fsck -E journal_only` (and, where the result is a consistent file
//! system, `e2fsck -fy`) replayed the journal. The listing of the crawl of
//! `A` (paths, types, modes, owners, sizes, link counts, mtimes, targets,
//! sha256 of every file) must equal the listing of the crawl of that copy.
//! The copy must also equal `B` where every transaction commits (the
//! test's journal really carries the edits), and `A0` must differ from
//! `B` (the test is not vacuous).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{output, pattern, run};
use gammaray_core::listing::{add_hashes, list, ListingEntry};
use gammaray_core::{FileDevice, FileSystem, NoProgress};
use gammaray_ext4::crawl::read_superblock;
use gammaray_ext4::recovery::{self, Replayed};
use gammaray_ext4::Ext4;

/// debugfs with the journal commands and e2fsck, or `false` (after saying
/// so loudly) when missing and `GAMMARAY_REQUIRE_GUEST` is not set.
fn have_tools() -> bool {
    let ok =
        common::debugfs_has_journal_commands() && Command::new("e2fsck").arg("-V").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("GAMMARAY_REQUIRE_GUEST").is_none(),
            "debugfs with journal_write and e2fsck are required (GAMMARAY_REQUIRE_GUEST is set)"
        );
        eprintln!(
            "\n*** SKIPPING journal_recovery: no debugfs with journal_write, or no e2fsck ***\n"
        );
    }
    ok
}

/// The crawler's listing of `img`, every regular file hashed through the
/// disk as the crawl saw it (journal copies replayed).
fn listing(img: &Path) -> (Vec<ListingEntry>, Vec<String>) {
    let dev = FileDevice::open(img).unwrap();
    let c = Ext4.crawl(&dev, &NoProgress).unwrap();
    let (mut e, w) = list(&c.model, 1);
    assert!(w.is_empty(), "{}: listing warnings {w:?}", img.display());
    let sb = read_superblock(&dev).unwrap();
    let copies = recovery::plan(&dev, &sb)
        .unwrap()
        .map(|p| p.recovery.copies)
        .unwrap_or_default();
    let view = Replayed::new(&dev, u64::from(sb.block_size()), &copies);
    let hw = add_hashes(&mut e, &c.model, &view);
    assert!(hw.is_empty(), "{}: hash warnings {hw:?}", img.display());
    let warnings = c.warnings.iter().map(ToString::to_string).collect();
    (e, warnings)
}

/// Differences between two listings, for messages (`-` left, `+` right).
fn diff(a: &[ListingEntry], b: &[ListingEntry]) -> Vec<String> {
    let line = |e: &ListingEntry| {
        format!(
            "{} {} mode={:o} uid={} gid={} size={} nlink={} mtime={} target={:?} sha256={:?}",
            e.path, e.ftype, e.mode, e.uid, e.gid, e.size, e.nlink, e.mtime, e.target, e.sha256
        )
    };
    let la: Vec<String> = a.iter().map(line).collect();
    let lb: Vec<String> = b.iter().map(line).collect();
    let mut out: Vec<String> = la
        .iter()
        .filter(|l| !lb.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        lb.iter()
            .filter(|l| !la.contains(l))
            .map(|l| format!("+ {l}")),
    );
    out
}

fn assert_same(what: &str, a: &[ListingEntry], b: &[ListingEntry]) {
    let d = diff(a, b);
    assert!(d.is_empty(), "{what}:\n{}", d.join("\n"));
    assert_eq!(a, b, "{what}");
}

/// A copy of `img` on which e2fsck replayed the journal: `full` runs
/// `e2fsck -fy` (replay and repair), else `e2fsck -y -E journal_only`.
fn e2fsck_copy(img: &Path, name: &str, full: bool) -> PathBuf {
    let copy = img.with_file_name(name);
    fs::copy(img, &copy).unwrap();
    let mut cmd = Command::new("e2fsck");
    if full {
        cmd.arg("-fy");
    } else {
        cmd.args(["-y", "-E", "journal_only"]);
    }
    let out = cmd.arg(&copy).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    // 0: clean, 1: errors corrected.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{cmd:?}: {:?}\n{text}",
        out.status
    );
    assert!(text.contains("recovering journal"), "{cmd:?}:\n{text}");
    copy
}

struct Case {
    name: &'static str,
    block_size: usize,
    mkfs: &'static [&'static str],
    jo: &'static str,
}

/// `A0` (before), `B` (after the edits) and the blocks that differ
/// (block 0, holding the superblock, is left out: its free counts are not
/// part of a listing and it carries the journal's recovery flag).
struct Images {
    dir: tempfile::TempDir,
    a0: PathBuf,
    b: PathBuf,
    changed: Vec<u64>,
    bs: usize,
}

fn make_images(case: &Case) -> Images {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    for i in 0..24u64 {
        fs::write(
            src.join(format!("dir/file-{i}")),
            pattern(i + 1, (i as usize) * 700 + 50),
        )
        .unwrap();
    }
    fs::write(src.join("top.txt"), b"top\n").unwrap();
    let a0 = dir.path().join("a0.img");
    run(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-b", &case.block_size.to_string()])
        .args(case.mkfs)
        .arg("-d")
        .arg(&src)
        .arg(&a0)
        .arg("32M"));
    let b = dir.path().join("b.img");
    fs::copy(&a0, &b).unwrap();
    let new = dir.path().join("new.bin");
    fs::write(&new, pattern(99, 20_000)).unwrap();
    let edits = dir.path().join("edits");
    fs::write(
        &edits,
        format!(
            "write {} /newfile\nmkdir /newdir\nrm /dir/file-3\nsif /dir/file-5 mode 0100600\n\
             symlink /newdir/link /newfile\nsif /dir/file-7 size 4500\nmkdir /newdir/sub\n\
             sif /top.txt uid 1234\n",
            new.display()
        ),
    )
    .unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&edits)
        .arg(&b));
    run(Command::new("e2fsck").arg("-fn").arg(&b));
    let (ia, ib) = (fs::read(&a0).unwrap(), fs::read(&b).unwrap());
    let bs = case.block_size;
    let changed: Vec<u64> = (1..ia.len() / bs)
        .filter(|&i| ia[i * bs..(i + 1) * bs] != ib[i * bs..(i + 1) * bs])
        .map(|i| i as u64)
        .collect();
    assert!(changed.len() >= 5, "{}: only {changed:?} differ", case.name);
    Images {
        dir,
        a0,
        b,
        changed,
        bs,
    }
}

impl Images {
    /// `B`'s contents of `blocks`, in a file for `journal_write`.
    fn data_of(&self, blocks: &[u64], name: &str) -> PathBuf {
        let ib = fs::read(&self.b).unwrap();
        let bs = self.bs;
        let mut d = Vec::new();
        for &k in blocks {
            let k = k as usize;
            d.extend_from_slice(&ib[k * bs..(k + 1) * bs]);
        }
        let p = self.dir.path().join(name);
        fs::write(&p, d).unwrap();
        p
    }

    /// A copy of `A0` with `script` run by `debugfs -w` (journal commands
    /// between `jo` and `jc`).
    fn journaled(&self, name: &str, jo: &str, script: &str) -> PathBuf {
        let a = self.dir.path().join(name);
        fs::copy(&self.a0, &a).unwrap();
        let cmds = self.dir.path().join(format!("{name}.cmds"));
        fs::write(&cmds, format!("{jo}\n{script}jc\n")).unwrap();
        let out = Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(&a)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "debugfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        a
    }

    /// The first block of directory `path` in `B`.
    fn dir_block(&self, path: &str) -> u64 {
        let out = output(
            Command::new("debugfs")
                .args(["-R", &format!("blocks {path}")])
                .arg(&self.b),
        );
        out.split_whitespace().next().unwrap().parse().unwrap()
    }
}

fn list_arg(blocks: &[u64]) -> String {
    blocks
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn plan_of(img: &Path) -> recovery::Plan {
    let dev = FileDevice::open(img).unwrap();
    let sb = read_superblock(&dev).unwrap();
    recovery::plan(&dev, &sb).unwrap().unwrap()
}

/// Two committed transactions carrying the edits, and a third, never
/// committed, that would wreck the root directory and an inode table.
fn check_committed(case: &Case) {
    let im = make_images(case);
    let (t1, t2) = im.changed.split_at(im.changed.len() / 2);
    // Transaction 2 logs one of transaction 1's blocks again: the later
    // copy must win.
    let mut t2 = t2.to_vec();
    t2.push(t1[0]);
    let d1 = im.data_of(t1, "d1");
    let d2 = im.data_of(&t2, "d2");
    let root = im.dir_block("/");
    let junk = im.dir.path().join("junk");
    fs::write(&junk, pattern(7, 2 * im.bs)).unwrap();
    let script = format!(
        "jw -b {} {}\njw -b {} {}\njw -b {root},{} -c {}\n",
        list_arg(t1),
        d1.display(),
        list_arg(&t2),
        d2.display(),
        t1[0],
        junk.display()
    );
    let a = im.journaled("a.img", case.jo, &script);
    let p = plan_of(&a);
    assert!(
        recovery::needs_recovery(&read_superblock(&FileDevice::open(&a).unwrap()).unwrap()),
        "{}",
        case.name
    );
    assert_eq!(p.recovery.transactions, 2, "{}", case.name);
    assert!(p.recovery.stopped.is_none(), "{}", case.name);
    assert_eq!(p.recovery.copies.len(), im.changed.len(), "{}", case.name);

    let (got, warnings) = listing(&a);
    assert!(warnings.is_empty(), "{}: {warnings:?}", case.name);
    let (truth, _) = listing(&e2fsck_copy(&a, "journal_only.img", false));
    assert_same(
        &format!(
            "{}: crawl of A (-) vs crawl after e2fsck -E journal_only (+)",
            case.name
        ),
        &got,
        &truth,
    );
    let (full, _) = listing(&e2fsck_copy(&a, "fsck_fy.img", true));
    assert_same(
        &format!(
            "{}: crawl of A (-) vs crawl after e2fsck -fy (+)",
            case.name
        ),
        &got,
        &full,
    );
    let (b, _) = listing(&im.b);
    assert_same(
        &format!("{}: replayed copy (-) vs B (+)", case.name),
        &truth,
        &b,
    );
    let (a0, _) = listing(&im.a0);
    assert!(
        !diff(&a0, &b).is_empty(),
        "{}: the edits changed nothing",
        case.name
    );

    // A live-mounted file system's snapshot: the journal is not empty but
    // the superblock does not say `needs_recovery`. The crawl replays all
    // the same.
    run(Command::new("debugfs")
        .args(["-w", "-R", "feature -needs_recovery"])
        .arg(&a));
    assert!(!recovery::needs_recovery(
        &read_superblock(&FileDevice::open(&a).unwrap()).unwrap()
    ));
    let (live, _) = listing(&a);
    assert_same(
        &format!(
            "{}: crawl of A without needs_recovery (-) vs e2fsck (+)",
            case.name
        ),
        &live,
        &truth,
    );
}

#[test]
fn committed_transactions_csum_v3_4k() {
    if !have_tools() {
        return;
    }
    check_committed(&Case {
        name: "4K metadata_csum, jo -c",
        block_size: 4096,
        mkfs: &[],
        jo: "jo -c",
    });
}

#[test]
fn committed_transactions_no_csum_32bit_1k() {
    if !have_tools() {
        return;
    }
    check_committed(&Case {
        name: "1K ^metadata_csum ^64bit, jo",
        block_size: 1024,
        mkfs: &["-O", "^metadata_csum,^64bit"],
        jo: "jo",
    });
}

#[test]
fn committed_transactions_csum_v2_4k() {
    if !have_tools() {
        return;
    }
    check_committed(&Case {
        name: "4K ^64bit, jo -c -v 2",
        block_size: 4096,
        mkfs: &["-O", "^64bit"],
        jo: "jo -c -v 2",
    });
}

/// Transaction 2 revokes the root directory block and one more changed
/// block; transaction 3 logs that second block again. The root directory
/// block keeps its home contents (the new names are missing), the other
/// is replayed from transaction 3: exactly what e2fsck's replay gives.
#[test]
fn revoked_block_is_not_replayed() {
    if !have_tools() {
        return;
    }
    let case = Case {
        name: "revoke, 4K metadata_csum",
        block_size: 4096,
        mkfs: &[],
        jo: "jo -c",
    };
    let im = make_images(&case);
    let root = im.dir_block("/");
    assert!(im.changed.contains(&root));
    let other = *im.changed.iter().find(|&&b| b != root).unwrap();
    let d1 = im.data_of(&im.changed, "d1");
    let d3 = im.data_of(&[other], "d3");
    let empty = im.data_of(&[], "empty");
    let script = format!(
        "jw -b {} {}\njw -r {root},{other} {}\njw -b {other} {}\n",
        list_arg(&im.changed),
        d1.display(),
        empty.display(),
        d3.display()
    );
    let a = im.journaled("a.img", case.jo, &script);
    let p = plan_of(&a);
    assert_eq!(p.recovery.transactions, 3);
    assert_eq!(p.recovery.revoked, 2);
    assert!(!p.recovery.copies.iter().any(|c| c.home == root));
    assert!(p.recovery.copies.iter().any(|c| c.home == other));
    let (got, _) = listing(&a);
    // Only the replay: e2fsck -fy would go on to repair the half-applied
    // state.
    let (truth, _) = listing(&e2fsck_copy(&a, "journal_only.img", false));
    assert_same(
        "revoke: crawl of A (-) vs crawl after e2fsck -E journal_only (+)",
        &got,
        &truth,
    );
    let (b, _) = listing(&im.b);
    assert!(
        got.iter().all(|e| e.path != "/newfile") && b.iter().any(|e| e.path == "/newfile"),
        "the revoked root directory block was replayed"
    );
}

/// Three committed transactions; the second one's commit block is damaged
/// (csum v3): the replay stops after the first, as e2fsck's does.
#[test]
fn corrupt_commit_checksum_stops_the_replay() {
    if !have_tools() {
        return;
    }
    let case = Case {
        name: "bad commit, 4K metadata_csum",
        block_size: 4096,
        mkfs: &[],
        jo: "jo -c",
    };
    let im = make_images(&case);
    let root = im.dir_block("/");
    let rest: Vec<u64> = im.changed.iter().copied().filter(|&b| b != root).collect();
    let (t1, t3) = rest.split_at(rest.len() / 2);
    let (d1, d2, d3) = (
        im.data_of(t1, "d1"),
        im.data_of(&[root], "d2"),
        im.data_of(t3, "d3"),
    );
    let script = format!(
        "jw -b {} {}\njw -b {root} {}\njw -b {} {}\n",
        list_arg(t1),
        d1.display(),
        d2.display(),
        list_arg(t3),
        d3.display()
    );
    let a = im.journaled("a.img", case.jo, &script);
    let before = plan_of(&a);
    assert_eq!(before.recovery.transactions, 3);
    // The second transaction's commit block: descriptor, one block, then
    // the commit, right after the first transaction's commit.
    let bs = im.bs as u64;
    let logdump = output(Command::new("debugfs").args(["-R", "logdump"]).arg(&a));
    let commit2: u64 = logdump
        .lines()
        .filter(|l| l.starts_with("Found expected sequence") && l.contains("commit block"))
        .nth(1)
        .and_then(|l| l.split_whitespace().last())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no second commit in logdump:\n{logdump}"));
    let phys = before.phys(commit2).unwrap();
    common::patch(&a, phys * bs + 0x40, &[0x5A]);

    let p = plan_of(&a);
    assert_eq!(p.recovery.transactions, 1);
    assert!(p.recovery.stopped.is_some());
    assert_eq!(p.recovery.copies.len(), t1.len());
    let (got, warnings) = listing(&a);
    assert!(
        warnings.iter().any(|w| w.contains("checksum")),
        "no warning about the damaged commit: {warnings:?}"
    );
    let (truth, _) = listing(&e2fsck_copy(&a, "journal_only.img", false));
    assert_same(
        "bad commit: crawl of A (-) vs crawl after e2fsck -E journal_only (+)",
        &got,
        &truth,
    );
    assert!(got.iter().all(|e| e.path != "/newfile"));
}

/// The inference started on a disk with committed, un-checkpointed
/// transactions follows the next commit at once, and the checkpoint that
/// writes the journal's copies home gives no events. `C` is `B` with more
/// edits; `A` holds `B`'s changes in its journal (transactions 1 and 2);
/// the writes are transaction 3 (`B` → `C`, at the log's head), then the
/// checkpoint of every block (`C`'s contents at home). Ground truth: the
/// listing of `C` and of e2fsck's replay of the disk after transaction 3.
#[test]
fn inference_follows_the_log_after_the_replayed_transactions() {
    use bytes::Bytes;
    use gammaray_core::{
        BlockDevice, DiskWrite, EventKind, FileEvent, InferConfig, OverlayDevice, WriteFlags,
    };
    use gammaray_ext4::fuzzing::jbd2;

    if !have_tools() {
        return;
    }
    let case = Case {
        name: "inference, 4K metadata_csum",
        block_size: 4096,
        mkfs: &[],
        jo: "jo -c",
    };
    let im = make_images(&case);
    let bs = im.bs;
    let c_img = im.dir.path().join("c.img");
    fs::copy(&im.b, &c_img).unwrap();
    let third = im.dir.path().join("third");
    fs::write(&third, pattern(333, 3000)).unwrap();
    let edits = im.dir.path().join("edits2");
    fs::write(
        &edits,
        format!(
            "write {} /third.txt\nmkdir /newdir/deeper\nsif /dir/file-9 mode 0100640\n",
            third.display()
        ),
    )
    .unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&edits)
        .arg(&c_img));
    run(Command::new("e2fsck").arg("-fn").arg(&c_img));
    let (ia0, ib, ic) = (
        fs::read(&im.a0).unwrap(),
        fs::read(&im.b).unwrap(),
        fs::read(&c_img).unwrap(),
    );
    let differ = |x: &[u8], y: &[u8]| -> Vec<u64> {
        (1..x.len() / bs)
            .filter(|&i| x[i * bs..(i + 1) * bs] != y[i * bs..(i + 1) * bs])
            .map(|i| i as u64)
            .collect()
    };
    let t3_blocks = differ(&ib, &ic);
    assert!(!t3_blocks.is_empty());

    let (t1, t2) = im.changed.split_at(im.changed.len() / 2);
    let (d1, d2) = (im.data_of(t1, "d1"), im.data_of(t2, "d2"));
    let script = format!(
        "jw -b {} {}\njw -b {} {}\n",
        list_arg(t1),
        d1.display(),
        list_arg(t2),
        d2.display()
    );
    let a = im.journaled("a.img", case.jo, &script);
    let plan = plan_of(&a);
    assert_eq!(plan.recovery.transactions, 2);

    // The inference, started as the engine starts it.
    let dev = FileDevice::open(&a).unwrap();
    let crawl = Ext4.crawl(&dev, &NoProgress).unwrap();
    let mut inf = Ext4
        .infer(&dev, crawl.model, &InferConfig::default())
        .unwrap();
    let counter = |inf: &dyn gammaray_core::Inference, name: &str| {
        inf.counters()
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.value)
    };
    assert_eq!(counter(&*inf, "journal_replayed_txns"), 2);
    let mut ov = OverlayDevice::new(Box::new(dev));
    let mut events: Vec<FileEvent> = Vec::new();
    let mut seq = 0u64;
    let mut write = |ov: &mut OverlayDevice,
                     inf: &mut Box<dyn gammaray_core::Inference>,
                     events: &mut Vec<FileEvent>,
                     mut w: DiskWrite| {
        seq += 1;
        w.seq = seq;
        w.ts_ns = seq * 1_000_000;
        inf.write(ov, &w, events);
        ov.apply(&w);
    };
    let brief = |ev: &[FileEvent]| -> Vec<String> {
        ev.iter()
            .map(|e| format!("{:?} {}", e.kind, e.path))
            .collect()
    };
    let flush = || DiskWrite {
        flags: WriteFlags::FLUSH,
        ..DiskWrite::default()
    };

    // Transaction 3 at the head of the log.
    let jsb = plan.jsb;
    let seq3 = plan.recovery.next_sequence;
    let homes: Vec<(u64, Vec<u8>)> = t3_blocks
        .iter()
        .map(|&k| (k, ic[k as usize * bs..(k as usize + 1) * bs].to_vec()))
        .collect();
    let (d, logged) = jbd2::descriptor(&jsb, seq3, &homes);
    assert_eq!(
        logged.len(),
        homes.len(),
        "transaction 3 fits one descriptor"
    );
    let mut l = plan.recovery.next_start;
    let mut jblocks = vec![d];
    jblocks.extend(logged);
    for b in jblocks {
        let p = plan.phys(u64::from(l)).unwrap();
        write(
            &mut ov,
            &mut inf,
            &mut events,
            DiskWrite::write(0, p * bs as u64, Bytes::from(b)),
        );
        l = jsb.next(l);
    }
    write(&mut ov, &mut inf, &mut events, flush());
    assert!(
        !events
            .iter()
            .any(|e| e.path.ends_with("third.txt") && e.kind == EventKind::Create),
        "an event before the commit: {:?}",
        brief(&events)
    );
    let p = plan.phys(u64::from(l)).unwrap();
    write(
        &mut ov,
        &mut inf,
        &mut events,
        DiskWrite::write(0, p * bs as u64, Bytes::from(jbd2::commit(&jsb, seq3))),
    );
    let after_commit = std::mem::take(&mut events);
    assert!(
        after_commit
            .iter()
            .any(|e| e.path.ends_with("/third.txt") && e.kind == EventKind::Create),
        "the commit of transaction 3 gave no create of /third.txt: {:?}",
        brief(&after_commit)
    );
    assert!(
        after_commit
            .iter()
            .any(|e| e.path.ends_with("/newdir/deeper") && e.kind == EventKind::Create),
        "no create of /newdir/deeper: {:?}",
        brief(&after_commit)
    );
    assert!(
        !after_commit.iter().any(|e| e.path.ends_with("/newfile")),
        "transaction 3 repeated an event of the replayed transactions: {:?}",
        brief(&after_commit)
    );
    write(&mut ov, &mut inf, &mut events, flush());

    // Ground truth for the state now: e2fsck's replay of this disk.
    let mut now = vec![0u8; ov.size() as usize];
    ov.read_at(0, &mut now).unwrap();
    let a3 = im.dir.path().join("a3.img");
    fs::write(&a3, &now).unwrap();
    assert_eq!(plan_of(&a3).recovery.transactions, 3);
    let (truth, _) = listing(&e2fsck_copy(&a3, "a3_replayed.img", false));
    let (c_listing, _) = listing(&c_img);
    assert_same("e2fsck replay of A + T3 (-) vs C (+)", &truth, &c_listing);
    let model_listing = |inf: &dyn gammaray_core::Inference, img: &Path| {
        let dev = FileDevice::open(img).unwrap();
        let sb = read_superblock(&dev).unwrap();
        let copies = recovery::plan(&dev, &sb)
            .unwrap()
            .map(|p| p.recovery.copies)
            .unwrap_or_default();
        let view = Replayed::new(&dev, u64::from(sb.block_size()), &copies);
        let (mut e, w) = list(&inf.model(), 1);
        assert!(w.is_empty(), "{w:?}");
        let hw = add_hashes(&mut e, &inf.model(), &view);
        assert!(hw.is_empty(), "{hw:?}");
        e
    };
    assert_same(
        "inference model after T3 (-) vs e2fsck (+)",
        &model_listing(&*inf, &a3),
        &truth,
    );

    // The checkpoint: C's metadata written home (block 0 aside), then a
    // flush. Every block equals its newest journal copy: no events. (File
    // data is left out: debugfs logged it too, which only data=journal
    // does, and data written home is reported as it arrives.)
    let c_crawl = Ext4
        .crawl(&FileDevice::open(&c_img).unwrap(), &NoProgress)
        .unwrap();
    let home_blocks: Vec<u64> = differ(&ia0, &ic)
        .into_iter()
        .filter(|&k| {
            !matches!(
                c_crawl.model.blocks.owner(k),
                Some(gammaray_core::Owner::FileData { .. })
            )
        })
        .collect();
    let checkpoints_before = counter(&*inf, "checkpoint_blocks");
    let home_meta_before = counter(&*inf, "home_meta_blocks");
    for &k in &home_blocks {
        let k = k as usize;
        write(
            &mut ov,
            &mut inf,
            &mut events,
            DiskWrite::write(
                0,
                (k * bs) as u64,
                Bytes::copy_from_slice(&ic[k * bs..(k + 1) * bs]),
            ),
        );
    }
    write(&mut ov, &mut inf, &mut events, flush());
    inf.settle(&ov, &mut events);
    assert!(
        events.is_empty(),
        "the checkpoint of the journal's copies gave events: {:?}",
        brief(&events)
    );
    // Every metadata block written home (bitmaps are not inferred from)
    // was a checkpoint; none counted as a change.
    use gammaray_core::Owner;
    let metadata = home_blocks
        .iter()
        .filter(|&&k| {
            !matches!(
                c_crawl.model.blocks.owner(k),
                Some(
                    Owner::BlockBitmap { .. }
                        | Owner::InodeBitmap { .. }
                        | Owner::SuperblockBackup { .. }
                        | Owner::OtherMetadata
                )
            )
        })
        .count() as u64;
    assert!(metadata > 0);
    assert_eq!(
        counter(&*inf, "checkpoint_blocks") - checkpoints_before,
        metadata
    );
    assert_eq!(counter(&*inf, "home_meta_blocks"), home_meta_before);
    let mut now = vec![0u8; ov.size() as usize];
    ov.read_at(0, &mut now).unwrap();
    let a4 = im.dir.path().join("a4.img");
    fs::write(&a4, &now).unwrap();
    assert_same(
        "inference model after the checkpoint (-) vs C (+)",
        &model_listing(&*inf, &a4),
        &c_listing,
    );
}
