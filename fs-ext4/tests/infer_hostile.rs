//! Guest data is hostile input, for write inference too: garbage metadata,
//! forged and unfinished jbd2 transactions, directory and extent loops, a
//! flood of writes to free space and malformed requests must not panic,
//! hang or grow memory without bound. Each case checks that a counter
//! moved and, where it makes sense, that a later legitimate change is still
//! inferred: the model is compared with a crawl of the real final image
//! (made by mkfs.ext4 and debugfs), never with inference itself.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{bounded, mkfs, pattern, run};
use gammaray_core::{
    BlockDevice, DiskWrite, EventKind, FileDevice, FileEvent, FileSystem, FileType, FsModel,
    InferConfig, Inference, LostReason, NoProgress, OverlayDevice, Owner, WriteFlags,
};
use gammaray_ext4::Ext4;

const BS: u64 = 4096;

/// A small tree: a few files, nested directories.
fn tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("dir")).unwrap();
    for i in 0..20u64 {
        fs::write(root.join(format!("dir/f{i:02}")), pattern(i, 5000)).unwrap();
    }
    fs::write(root.join("a/b/c/deep"), b"deep\n").unwrap();
    fs::write(root.join("big"), pattern(99, 200_000)).unwrap();
}

/// A 16 MiB ext4 image of [`tree`] (`extra` mkfs options).
fn image(dir: &Path, extra: &[&str]) -> PathBuf {
    let src = dir.join("src");
    if !src.exists() {
        tree(&src);
    }
    let img = dir.join("base.img");
    let mut opts = vec!["-b", "4096"];
    opts.extend_from_slice(extra);
    mkfs("ext4", &opts, &src, &img, "16M");
    img
}

/// `debugfs -w -f cmds img`.
fn debugfs(img: &Path, cmds: &str) {
    let f = img.with_extension("cmds");
    fs::write(&f, cmds).unwrap();
    run(Command::new("debugfs").arg("-w").arg("-f").arg(&f).arg(img));
}

/// Copies `img` to `name` next to it, changes the copy with `cmds`, and
/// returns the copy.
fn changed(img: &Path, name: &str, cmds: &str) -> PathBuf {
    let out = img.with_file_name(name);
    fs::copy(img, &out).unwrap();
    debugfs(&out, cmds);
    out
}

/// The blocks that differ between two images, one write per run of
/// neighbouring blocks, in block order.
fn diff(old: &[u8], new: &[u8]) -> Vec<DiskWrite> {
    assert_eq!(old.len(), new.len());
    let mut out: Vec<DiskWrite> = Vec::new();
    let mut run_start: Option<usize> = None;
    let n = old.len() / BS as usize;
    for b in 0..=n {
        let differs = b < n && {
            let r = b * BS as usize..(b + 1) * BS as usize;
            old[r.clone()] != new[r]
        };
        match (differs, run_start) {
            (true, None) => run_start = Some(b),
            (false, Some(s)) => {
                let (a, z) = (s * BS as usize, b * BS as usize);
                out.push(DiskWrite::write(
                    0,
                    a as u64,
                    Bytes::copy_from_slice(&new[a..z]),
                ));
                run_start = None;
            }
            _ => {}
        }
    }
    out
}

/// An overlay over a base image and an inference following it, driven
/// the way the engine does: infer against the disk before, then apply.
struct Rig {
    ov: OverlayDevice,
    inf: Box<dyn Inference>,
    events: Vec<FileEvent>,
    seq: u64,
}

impl Rig {
    fn new(img: &Path, cfg: InferConfig) -> Self {
        let dev = FileDevice::open(img).unwrap();
        let crawl = Ext4.crawl(&dev, &NoProgress).unwrap();
        let inf = Ext4.infer(&dev, crawl.model, &cfg).unwrap();
        let ov = OverlayDevice::new(Box::new(dev));
        Rig {
            ov,
            inf,
            events: Vec::new(),
            seq: 0,
        }
    }

    fn write(&mut self, mut w: DiskWrite) {
        self.seq += 1;
        w.seq = self.seq;
        self.inf.write(&self.ov, &w, &mut self.events);
        self.ov.apply(&w);
    }

    /// A cache flush (what makes a guest's writes before it durable).
    fn flush(&mut self) {
        self.write(DiskWrite {
            flags: WriteFlags::FLUSH,
            ..DiskWrite::default()
        });
    }

    /// One write, made durable at once (a write and a flush).
    fn raw(&mut self, offset: u64, data: Vec<u8>) {
        self.write(DiskWrite::write(0, offset, data.into()));
        self.flush();
    }

    /// Writes, then a flush.
    fn all(&mut self, ws: Vec<DiskWrite>) {
        for w in ws {
            self.write(w);
        }
        self.flush();
    }

    fn counter(&self, name: &str) -> u64 {
        self.inf
            .counters()
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no counter {name}"))
            .value
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.ov.size() as usize];
        self.ov.read_at(0, &mut v).unwrap();
        v
    }

    /// Applies the change from the overlay's current contents to `img`
    /// (a real image made by debugfs from the same state).
    fn become_image(&mut self, img: &Path) {
        let ws = diff(&self.bytes(), &fs::read(img).unwrap());
        assert!(!ws.is_empty());
        self.all(ws);
    }

    fn take_events(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.events)
    }
}

/// Every directory's names, and every file's type and size (by inode;
/// safe on trees with loops, unlike a walk from the root).
#[allow(clippy::type_complexity)]
fn shape(
    m: &FsModel,
) -> (
    BTreeMap<u64, Vec<(Vec<u8>, u64)>>,
    BTreeMap<u64, (FileType, u64)>,
) {
    let mut dirs = BTreeMap::new();
    for (d, entries) in m.tree.dirs() {
        let mut v: Vec<(Vec<u8>, u64)> =
            entries.iter().map(|e| (e.name.to_vec(), e.child)).collect();
        v.sort();
        if !v.is_empty() {
            dirs.insert(d, v);
        }
    }
    let files = m
        .files
        .iter()
        .map(|(&id, f)| {
            let size = if f.ftype == FileType::Dir { 0 } else { f.size };
            (id, (f.ftype, size))
        })
        .collect();
    (dirs, files)
}

/// The inferred model names the same files, with the same types and
/// sizes, as a crawl of the real image `img`.
fn assert_model_is(inf: &dyn Inference, img: &Path) {
    let truth = common::crawl(img);
    let (got, want) = (shape(&inf.model()), shape(&truth.model));
    assert_eq!(got.0, want.0, "directories: model vs crawl of {img:?}");
    assert_eq!(got.1, want.1, "files: model vs crawl of {img:?}");
}

/// Blocks owned by `pick` in a crawl of `img`.
fn blocks_of(img: &Path, pick: impl Fn(&Owner) -> bool) -> Vec<u64> {
    let c = common::crawl(img);
    let mut v = Vec::new();
    for r in c.model.blocks.runs() {
        if pick(&r.owner) {
            v.extend(r.start..r.start + r.len);
        }
    }
    v
}

/// Free blocks (owned by nobody) of `img`.
fn free_blocks(img: &Path) -> Vec<u64> {
    let c = common::crawl(img);
    let n = fs::metadata(img).unwrap().len() / BS;
    (1..n)
        .filter(|&b| c.model.blocks.owner(b).is_none())
        .collect()
}

/// A later legitimate change (a new file and a new directory made by
/// debugfs on the real image) is inferred: creates come out and the model
/// equals a crawl of the final image.
fn still_follows(rig: &mut Rig, good: &Path, name: &str) {
    let payload = good.with_file_name("payload");
    fs::write(&payload, pattern(4242, 9000)).unwrap();
    let after = changed(
        good,
        name,
        &format!("mkdir /later\nwrite {} /later/new\n", payload.display()),
    );
    rig.events.clear();
    rig.become_image(&after);
    let ev = rig.take_events();
    assert!(
        ev.iter()
            .any(|e| e.kind == EventKind::Create && e.path == "/later/new"),
        "no create of /later/new in {ev:#?}"
    );
    assert_model_is(&*rig.inf, &after);
}

fn no_journal(dir: &Path) -> PathBuf {
    image(dir, &["-O", "^has_journal"])
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// Garbage written home (no journal) into every inode-table block in use
/// and every directory block: random bytes, then all 0xFF. Then the real
/// contents come back, and a later change is still followed.
#[test]
fn garbage_in_inode_tables_and_directories() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let tables = blocks_of(&img, |o| matches!(o, Owner::InodeTable { .. }));
        let dirs = blocks_of(&img, |o| matches!(o, Owner::DirData { .. }));
        // Only the first inode-table blocks hold inodes in use.
        let targets: Vec<u64> = tables.iter().take(4).chain(&dirs).copied().collect();
        let mut rig = Rig::new(&img, InferConfig::default());
        let orig = rig.bytes();
        let mut rnd = xorshift(7);
        for fill in ["random", "ff"] {
            for &b in &targets {
                let data: Vec<u8> = match fill {
                    "random" => (0..BS).map(|_| rnd() as u8).collect(),
                    _ => vec![0xFF; BS as usize],
                };
                rig.raw(b * BS, data);
            }
        }
        assert!(
            rig.counter("home_meta_blocks") >= tables.len().min(4) as u64,
            "{:?}",
            rig.inf.counters()
        );
        assert!(rig.counter("anomalies") > 0, "garbage met no anomaly");
        // The real contents come back (a fsck restoring them, say).
        for &b in &targets {
            let r = (b * BS) as usize..((b + 1) * BS) as usize;
            rig.raw(b * BS, orig[r].to_vec());
        }
        assert_model_is(&*rig.inf, &img);
        still_follows(&mut rig, &img, "later.img");
    });
}

/// A regular file whose inode claims an enormous size (written home, no
/// journal): growing it must not walk every logical block of the new size.
#[test]
fn huge_file_size_does_not_hang() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let after = changed(&img, "huge.img", "sif /big size 0x3fffffffffffffff\n");
        let mut rig = Rig::new(&img, InferConfig::default());
        let t = Instant::now();
        rig.become_image(&after);
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        assert!(rig.counter("home_meta_blocks") > 0);
        assert_model_is(&*rig.inf, &after);
        still_follows(&mut rig, &after, "later.img");
    });
}

/// Requests that make no sense: past the end, zero length, a data length
/// that disagrees with `len` (on a free block), discards and write-zeroes
/// (over free space, over the end, over the whole disk). None may panic;
/// the bad ones are counted; a later change is still followed. (Requests
/// that straddle the end: see the next test.)
#[test]
fn malformed_requests() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let size = fs::metadata(&img).unwrap().len();
        let mut rig = Rig::new(&img, InferConfig::default());
        let free = free_blocks(&img);
        let ws = vec![
            DiskWrite::write(0, size, Bytes::from(vec![1u8; 4096])),
            DiskWrite::write(0, u64::MAX - 10, Bytes::from(vec![1u8; 100])),
            DiskWrite::write(0, 0, Bytes::new()),
            DiskWrite {
                len: 8192,
                ..DiskWrite::write(0, free[0] * BS, Bytes::from(vec![2u8; 100]))
            },
            DiskWrite {
                len: 10,
                ..DiskWrite::write(0, free[0] * BS, Bytes::from(vec![2u8; 100]))
            },
            DiskWrite {
                offset: size,
                len: BS,
                flags: WriteFlags::ZEROES,
                ..DiskWrite::default()
            },
            DiskWrite {
                offset: u64::MAX - BS,
                len: u64::MAX,
                flags: WriteFlags::ZEROES,
                ..DiskWrite::default()
            },
            DiskWrite {
                offset: free[1] * BS,
                len: 3 * BS,
                flags: WriteFlags::ZEROES,
                ..DiskWrite::default()
            },
            DiskWrite {
                offset: free[1] * BS,
                len: 3 * BS,
                flags: WriteFlags::DISCARD,
                ..DiskWrite::default()
            },
            DiskWrite {
                offset: size - BS,
                len: 2 * BS,
                flags: WriteFlags::DISCARD,
                ..DiskWrite::default()
            },
            DiskWrite {
                offset: 0,
                len: size,
                flags: WriteFlags::DISCARD,
                ..DiskWrite::default()
            },
            DiskWrite {
                offset: 7,
                len: 0,
                flags: WriteFlags::FLUSH,
                ..DiskWrite::default()
            },
        ];
        rig.all(ws);
        assert!(rig.counter("bad_writes") >= 6, "{:?}", rig.inf.counters());
        assert!(rig.counter("discards") >= 2);
        assert_eq!(rig.counter("unknown_held_bytes"), 0);
        assert!(rig.take_events().is_empty());
        still_follows(&mut rig, &img, "later.img");
    });
}

/// A request that straddles the end of the partition is followed for
/// its part inside, as `OverlayDevice` (and the disk) apply it: write-zeroes
/// from `/dir`'s directory block to past the end wipe the directory, and
/// the model must say so. (Inference used to drop the whole request as a
/// bad write, leaving the model out of step with the disk.)
#[test]
fn straddling_request_is_applied_like_the_overlay() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let size = fs::metadata(&img).unwrap().len();
        let d = common::paths(&common::crawl(&img).model)[Path::new("/dir")];
        let b = blocks_of(
            &img,
            |o| matches!(o, Owner::DirData { file, .. } if *file == d),
        )[0];
        let mut rig = Rig::new(&img, InferConfig::default());
        rig.write(DiskWrite {
            offset: b * BS,
            len: size - b * BS + BS,
            flags: WriteFlags::ZEROES,
            ..DiskWrite::default()
        });
        rig.flush();
        let snap = dir.path().join("snap.img");
        snapshot(&rig, &snap);
        assert_model_is(&*rig.inf, &snap);
    });
}

/// 200 MiB of writes over the free space of a 16 MiB image, with a 1 MiB
/// budget for data nobody owns: what is held never exceeds the budget,
/// and what fell out is counted. A file that then receives some of those
/// blocks gets a `lost` event (reason unknown_budget) for them, not
/// silently nothing.
#[test]
fn free_space_flood_stays_within_budget() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let payload = dir.path().join("payload");
        fs::write(&payload, pattern(5, 40_000)).unwrap();
        let after = changed(
            &img,
            "after.img",
            &format!("write {} /new\n", payload.display()),
        );
        let new_id = common::paths(&common::crawl(&after).model)[Path::new("/new")];
        let new_blocks = blocks_of(&after, |o| o.file() == Some(new_id));
        assert_eq!(new_blocks.len(), 10);
        let budget = 1u64 << 20;
        let cfg = InferConfig {
            unknown_budget_bytes: budget,
            ..InferConfig::default()
        };
        let mut rig = Rig::new(&img, cfg);
        let base = rig.bytes();
        let target = fs::read(&after).unwrap();
        // The file's data first (delayed allocation), then the flood.
        for &b in &new_blocks {
            let r = (b * BS) as usize..((b + 1) * BS) as usize;
            rig.raw(b * BS, target[r].to_vec());
        }
        let others: Vec<u64> = free_blocks(&img)
            .into_iter()
            .filter(|b| !new_blocks.contains(b))
            .collect();
        let mut written = 0u64;
        let mut rnd = xorshift(3);
        let mut max_held = 0;
        while written < 200 << 20 {
            // Runs of up to 16 neighbouring free blocks.
            let i = (rnd() % others.len() as u64) as usize;
            let mut n = 1;
            while n < 16 && i + n < others.len() && others[i + n] == others[i] + n as u64 {
                n += 1;
            }
            let data: Vec<u8> = vec![rnd() as u8; n * BS as usize];
            rig.raw(others[i] * BS, data);
            written += n as u64 * BS;
            let held = rig.counter("unknown_held_bytes");
            assert!(held <= budget, "{held} bytes held over a {budget} budget");
            max_held = max_held.max(held);
        }
        assert!(max_held > budget / 2);
        let evicted = rig.counter("unknown_evicted_bytes");
        // Rewriting a held block replaces it; the rest fell out.
        assert!(evicted >= 100 << 20, "evicted {evicted}");
        // Now the metadata that gives the blocks to /new.
        let mut cur = rig.bytes();
        for &b in &new_blocks {
            let r = (b * BS) as usize..((b + 1) * BS) as usize;
            assert_eq!(cur[r.clone()], target[r.clone()]);
        }
        // Only the metadata: the flood stays in the other free blocks.
        for &b in &others {
            let r = (b * BS) as usize..((b + 1) * BS) as usize;
            cur[r.clone()].copy_from_slice(&base[r]);
        }
        rig.events.clear();
        let meta: Vec<DiskWrite> = diff(&cur, &target)
            .into_iter()
            .filter(|w| {
                let b = w.offset / BS;
                !others.contains(&b)
            })
            .collect();
        rig.all(meta);
        let ev = rig.take_events();
        assert!(
            ev.iter()
                .any(|e| e.kind == EventKind::Create && e.path == "/new"),
            "{ev:#?}"
        );
        let lost: u64 = ev
            .iter()
            .filter(|e| e.kind == EventKind::Lost && e.path == "/new")
            .inspect(|e| assert_eq!(e.reason, Some(LostReason::UnknownBudget)))
            .map(|e| e.len.unwrap())
            .sum();
        assert_eq!(lost, 40_000, "lost bytes of /new in {ev:#?}");
        assert!(rig.counter("lost_events") > 0);
        assert_model_is(&*rig.inf, &after);
    });
}

// ---- journal ----

use gammaray_ext4::fuzzing::jbd2;
use gammaray_ext4::journal::{block_type, JournalSuperblock};

/// A 16 MiB image with a journal whose superblock has csum v3 (as the
/// kernel sets it on metadata_csum file systems), and its jbd2 layout.
struct Journaled {
    img: PathBuf,
    jsb: JournalSuperblock,
    /// Physical block of every journal logical block.
    phys: Vec<u64>,
}

fn journaled(dir: &Path) -> Journaled {
    let img = image(dir, &[]);
    debugfs(&img, "jo -c\njc\n");
    let c = common::crawl(&img);
    let mut phys: Vec<(u64, u64)> = Vec::new();
    for r in c.model.blocks.runs() {
        if let Owner::Journal { logical } = r.owner {
            phys.extend((0..r.len).map(|k| (logical + k, r.start + k)));
        }
    }
    phys.sort_unstable();
    let phys: Vec<u64> = phys.into_iter().map(|p| p.1).collect();
    let bytes = fs::read(&img).unwrap();
    let p0 = phys[0] as usize * BS as usize;
    let jsb = JournalSuperblock::from_bytes(&bytes[p0..p0 + BS as usize], 0).unwrap();
    assert!(jsb.csum_v3());
    assert_eq!(jsb.start, 0, "journal not empty");
    Journaled { img, jsb, phys }
}

impl Journaled {
    /// A change made by debugfs on a copy (`truth`, written home), and
    /// the same blocks logged as one transaction by `jw` on another copy
    /// (`logged`, home untouched; `commit` false leaves out the commit).
    fn logged(&self, name: &str, cmds: &str, commit: bool) -> (PathBuf, PathBuf) {
        let truth = changed(&self.img, &format!("{name}.truth"), cmds);
        let (old, new) = (fs::read(&self.img).unwrap(), fs::read(&truth).unwrap());
        let mut homes = Vec::new();
        let mut data = Vec::new();
        for b in 0..old.len() / BS as usize {
            let r = b * BS as usize..(b + 1) * BS as usize;
            if old[r.clone()] != new[r.clone()] {
                homes.push(b.to_string());
                data.extend_from_slice(&new[r]);
            }
        }
        let file = self.img.with_file_name(format!("{name}.data"));
        fs::write(&file, data).unwrap();
        let c = if commit { "" } else { " -c" };
        let logged = changed(
            &self.img,
            &format!("{name}.logged"),
            &format!("jo\njw -b {}{c} {}\njc\n", homes.join(","), file.display()),
        );
        (truth, logged)
    }

    /// Writes `blocks` to the journal from logical block `l` on.
    fn put(&self, rig: &mut Rig, l: u32, blocks: Vec<Vec<u8>>) {
        for (k, b) in blocks.into_iter().enumerate() {
            let p = self.phys[l as usize + k];
            rig.raw(p * BS, b);
        }
    }

    fn first(&self) -> u32 {
        self.jsb.first
    }

    fn seq(&self) -> u32 {
        self.jsb.sequence
    }
}

/// Writes the overlay's contents to `path` (a real image to change on).
fn snapshot(rig: &Rig, path: &Path) {
    fs::write(path, rig.bytes()).unwrap();
}

/// A transaction that never commits (descriptor and logged blocks from
/// debugfs `jw -c`, no commit block): nothing is applied. The same change
/// committed is applied (the control).
#[test]
fn uncommitted_transaction_applies_nothing() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let j = journaled(dir.path());
        let (_, open) = j.logged("open", "mkdir /never\nlink /big /never-link\n", false);
        let mut rig = Rig::new(&j.img, InferConfig::default());
        rig.become_image(&open);
        assert!(rig.counter("journal_blocks") > 0);
        assert_eq!(rig.counter("journal_txns"), 0);
        assert_eq!(rig.counter("inodes_rescanned"), 0);
        assert!(rig.take_events().is_empty());
        // Ground truth: the image as debugfs left it (home untouched).
        assert_model_is(&*rig.inf, &open);

        // Control: the same change committed is applied.
        let (truth, done) = j.logged("done", "mkdir /now\nlink /big /now-link\n", true);
        let mut rig = Rig::new(&j.img, InferConfig::default());
        rig.become_image(&done);
        assert_eq!(rig.counter("journal_txns"), 1);
        let ev = rig.take_events();
        assert!(ev
            .iter()
            .any(|e| e.kind == EventKind::Create && e.path == "/now"));
        assert_model_is(&*rig.inf, &truth);
    });
}

/// Forged commit blocks: a bad checksum, a past sequence, a future
/// sequence, a commit with no descriptor before it, and a descriptor whose
/// tags point past the file system. None applies anything; each moves its
/// counter; a later home write is still followed.
#[test]
fn forged_commit_blocks() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let j = journaled(dir.path());
        let base = common::crawl(&j.img);
        let root_dir = blocks_of(
            &j.img,
            |o| matches!(o, Owner::DirData { file, .. } if *file == base.model.root),
        )[0];
        let mut rig = Rig::new(&j.img, InferConfig::default());
        let orig = rig.bytes();
        let home = |b: u64| orig[(b * BS) as usize..((b + 1) * BS) as usize].to_vec();
        // The root directory block with every name byte changed: applied,
        // it would delete and create names.
        let mut evil = home(root_dir);
        for x in evil.iter_mut().skip(24).take(200) {
            *x ^= 0x20;
        }
        let (s, mut l) = (j.seq(), j.first());
        let rescans = |rig: &Rig| rig.counter("inodes_rescanned");

        // 1. Bad checksum: descriptor, block, commit with a flipped bit.
        let (desc, logged) = jbd2::descriptor(&j.jsb, s, &[(root_dir, evil.clone())]);
        let mut commit = jbd2::commit(&j.jsb, s);
        commit[0x10] ^= 1;
        j.put(&mut rig, l, [vec![desc], logged, vec![commit]].concat());
        l += 3;
        assert_eq!(rig.counter("journal_txns_broken"), 1);
        assert_eq!(rescans(&rig), 0);

        // 2. A past sequence (the one just broken, and far back).
        let (desc, logged) = jbd2::descriptor(&j.jsb, s, &[(root_dir, evil.clone())]);
        j.put(
            &mut rig,
            l,
            [vec![desc], logged, vec![jbd2::commit(&j.jsb, s)]].concat(),
        );
        l += 3;
        j.put(
            &mut rig,
            l,
            vec![jbd2::commit(&j.jsb, s.wrapping_sub(1000))],
        );
        l += 1;
        assert_eq!(rig.counter("journal_stale_commits"), 2);
        assert_eq!(rescans(&rig), 0);

        // 3. A commit with no descriptor before it: an empty transaction.
        j.put(&mut rig, l, vec![jbd2::commit(&j.jsb, s + 1)]);
        l += 1;
        assert_eq!(rescans(&rig), 0);

        // 4. Tags pointing past the file system (and at block 2^40).
        let past = fs::metadata(&j.img).unwrap().len() / BS + 10;
        let (desc, logged) = jbd2::descriptor(
            &j.jsb,
            s + 2,
            &[(past, evil.clone()), (1 << 40, evil.clone())],
        );
        j.put(
            &mut rig,
            l,
            [vec![desc], logged, vec![jbd2::commit(&j.jsb, s + 2)]].concat(),
        );
        l += 4;
        assert!(rig.counter("anomalies") >= 2, "{:?}", rig.inf.counters());
        assert_eq!(rescans(&rig), 0);

        // 5. A future sequence, far ahead: taken as an (empty) commit.
        let (desc, logged) = jbd2::descriptor(&j.jsb, s + 3, &[(root_dir, evil.clone())]);
        j.put(
            &mut rig,
            l,
            [vec![desc], logged, vec![jbd2::commit(&j.jsb, s + 1000)]].concat(),
        );
        assert_eq!(rescans(&rig), 0);
        // A block of another type with a commit's header is not a commit.
        let mut fake = jbd2::header(&j.jsb, block_type::REVOKE, s + 1001);
        fake[12..16].copy_from_slice(&16u32.to_be_bytes());
        j.put(&mut rig, l + 3, vec![fake]);

        assert!(rig.take_events().is_empty());
        let snap = dir.path().join("snap.img");
        snapshot(&rig, &snap);
        assert_model_is(&*rig.inf, &snap);
        still_follows(&mut rig, &snap, "later.img");
    });
}

// ---- loops ----

/// A directory loop written home (no journal): `/a/b/c/loop` names `/a`,
/// and `/a` is then unlinked from the root, so `/a`, `b` and `c` only
/// reach each other. Path building stays bounded, events still come out
/// (a delete of `/a`, then data written to a file inside the loop), and
/// the model equals a crawl of the real image.
#[test]
fn directory_loop_home() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let looped = changed(&img, "loop.img", "link /a /a/b/c/loop\n");
        let cut = changed(&looped, "cut.img", "unlink /a\n");
        let mut rig = Rig::new(&img, InferConfig::default());
        rig.become_image(&looped);
        assert!(rig
            .take_events()
            .iter()
            .any(|e| e.kind == EventKind::Create && e.path == "/a/b/c/loop"),);
        assert_model_is(&*rig.inf, &looped);
        rig.become_image(&cut);
        let ev = rig.take_events();
        assert!(
            ev.iter()
                .any(|e| e.kind == EventKind::Delete && e.path == "/a"),
            "{ev:#?}"
        );
        assert_model_is(&*rig.inf, &cut);
        // Data written to /a/b/c/deep, now only reachable through the loop.
        let deep = common::paths(&common::crawl(&img).model)[Path::new("/a/b/c/deep")];
        let b = blocks_of(&cut, |o| o.file() == Some(deep))[0];
        rig.raw(b * BS, b"DEEP\n".to_vec());
        let ev = rig.take_events();
        assert_eq!(ev.len(), 1, "{ev:#?}");
        assert_eq!(ev[0].kind, EventKind::Modify);
        assert_eq!(ev[0].path, format!("/.unreachable/{deep}"));
        snapshot(&rig, &dir.path().join("snap.img"));
        still_follows(&mut rig, &dir.path().join("snap.img"), "later.img");
    });
}

/// The same loop, written as one committed jbd2 transaction (debugfs
/// `jw`); ground truth is the image debugfs changed home.
#[test]
fn directory_loop_in_a_committed_transaction() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let j = journaled(dir.path());
        let (truth, logged) = j.logged("loop", "link /a/b /a/b/c/up\nlink / /a/b/c/root\n", true);
        let mut rig = Rig::new(&j.img, InferConfig::default());
        rig.become_image(&logged);
        assert_eq!(rig.counter("journal_txns"), 1);
        let ev = rig.take_events();
        assert!(ev.iter().any(|e| e.path == "/a/b/c/up"), "{ev:#?}");
        assert!(ev.iter().any(|e| e.path == "/a/b/c/root"), "{ev:#?}");
        assert_model_is(&*rig.inf, &truth);
    });
}

/// An extent node: header (`depth`, `entries` index entries to `kids`).
fn extent_index(depth: u16, max: u16, kids: &[u64]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0xF30Au16.to_le_bytes());
    b.extend_from_slice(&(kids.len() as u16).to_le_bytes());
    b.extend_from_slice(&max.to_le_bytes());
    b.extend_from_slice(&depth.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for (i, &k) in kids.iter().enumerate() {
        b.extend_from_slice(&(i as u32 * 1000).to_le_bytes());
        b.extend_from_slice(&(k as u32).to_le_bytes());
        b.extend_from_slice(&((k >> 32) as u16).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
    }
    b
}

/// Gives `/big` the extent root `root` (written home, no journal and no
/// metadata checksums so the raw patch is taken), after writing `nodes`
/// to free blocks; the model must equal a crawl of the result and a
/// later change must still be followed.
fn bad_extent_tree(make: impl FnOnce(&[u64]) -> (Vec<u8>, Vec<(u64, Vec<u8>)>)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), &["-O", "^has_journal,^metadata_csum"]);
    let free = free_blocks(&img);
    let (root, nodes) = make(&free);
    let at = common::inode_offset(&img, "/big") + 0x28;
    let mut rig = Rig::new(&img, InferConfig::default());
    let before = rig.counter("anomalies");
    for (b, mut n) in nodes {
        n.resize(BS as usize, 0);
        rig.raw(b * BS, n);
    }
    let block = at / BS * BS;
    let mut tb = rig.bytes()[block as usize..(block + BS) as usize].to_vec();
    let o = (at - block) as usize;
    tb[o..o + 60].fill(0);
    tb[o..o + root.len()].copy_from_slice(&root);
    rig.raw(block, tb);
    assert!(
        rig.counter("anomalies") > before,
        "{:?}",
        rig.inf.counters()
    );
    let snap = dir.path().join("snap.img");
    snapshot(&rig, &snap);
    assert_model_is(&*rig.inf, &snap);
    still_follows(&mut rig, &snap, "later.img");
    // Keep the directory until the checks are done.
    drop(dir);
    rig
}

/// An extent index node whose child is its own block.
#[test]
fn extent_tree_pointing_at_itself() {
    bounded("inference", || {
        bad_extent_tree(|free| {
            let b = free[0];
            (
                extent_index(2, 4, &[b]),
                vec![(b, extent_index(1, 340, &[b, b]))],
            )
        });
    });
}

/// An extent tree 7 levels deep (the kernel stops at 5), each level a
/// real index block, and one whose levels all claim the same depth.
#[test]
fn extent_tree_too_deep() {
    bounded("inference", || {
        bad_extent_tree(|free| {
            let chain = &free[..7];
            let mut nodes = Vec::new();
            for (i, &b) in chain.iter().enumerate() {
                let depth = 6 - i as u16;
                let kids: Vec<u64> = chain.get(i + 1).copied().into_iter().collect();
                nodes.push((b, extent_index(depth, 340, &kids)));
            }
            (extent_index(7, 4, &chain[..1]), nodes)
        });
        bad_extent_tree(|free| {
            let chain = &free[..7];
            let nodes = chain
                .iter()
                .enumerate()
                .map(|(i, &b)| (b, extent_index(3, 340, &[chain[(i + 1) % 7]])))
                .collect();
            (extent_index(4, 4, &chain[..1]), nodes)
        });
    });
}

/// A forged commit far ahead in sequence space (more than 2^16
/// transactions) is not followed (an anomaly): the guest's next real
/// transaction is applied when it commits, and the later checkpoint
/// changes nothing.
#[test]
fn far_future_commit_is_ignored() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let j = journaled(dir.path());
        let truth = changed(&j.img, "truth.img", "mkdir /made\n");
        let (old, new) = (fs::read(&j.img).unwrap(), fs::read(&truth).unwrap());
        let blocks: Vec<(u64, Vec<u8>)> = (0..old.len() / BS as usize)
            .filter(|&b| {
                let r = b * BS as usize..(b + 1) * BS as usize;
                old[r.clone()] != new[r]
            })
            .map(|b| {
                (
                    b as u64,
                    new[b * BS as usize..(b + 1) * BS as usize].to_vec(),
                )
            })
            .collect();
        let mut rig = Rig::new(&j.img, InferConfig::default());
        let (s, l) = (j.seq(), j.first());
        j.put(
            &mut rig,
            l,
            vec![jbd2::commit(&j.jsb, s.wrapping_add(1 << 30))],
        );
        let (desc, logged) = jbd2::descriptor(&j.jsb, s + 1, &blocks);
        assert_eq!(logged.len(), blocks.len());
        j.put(
            &mut rig,
            l + 1,
            [vec![desc], logged, vec![jbd2::commit(&j.jsb, s + 1)]].concat(),
        );
        assert_eq!(rig.counter("journal_stale_commits"), 0);
        assert!(rig.counter("anomalies") >= 1, "{:?}", rig.inf.counters());
        assert_eq!(rig.counter("journal_txns"), 1);
        let ev = rig.take_events();
        assert!(
            ev.iter()
                .any(|e| e.kind == EventKind::Create && e.path == "/made"),
            "{ev:#?}"
        );
        // Checkpoint: the same blocks written home change nothing.
        for (b, d) in blocks {
            rig.raw(b * BS, d);
        }
        assert!(rig.take_events().is_empty());
        assert_model_is(&*rig.inf, &truth);
    });
}

/// The whole partition zeroed (write-zeroes) and then written back: the
/// model empties (every file deleted) and comes back whole.
#[test]
fn whole_disk_zeroed_then_restored() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let size = fs::metadata(&img).unwrap().len();
        let mut rig = Rig::new(&img, InferConfig::default());
        rig.write(DiskWrite {
            offset: 0,
            len: size,
            flags: WriteFlags::ZEROES,
            ..DiskWrite::default()
        });
        rig.flush();
        assert!(rig.counter("home_meta_blocks") > 0);
        assert!(rig.inf.model().files.is_empty());
        assert!(rig
            .take_events()
            .iter()
            .any(|e| e.kind == EventKind::Delete && e.path == "/dir/f00"));
        rig.become_image(&img);
        assert_model_is(&*rig.inf, &img);
        still_follows(&mut rig, &img, "later.img");
    });
}

/// Only `i_size` grows (debugfs `sif`, no data, no mtime): the grown range
/// is a hole past the old last block's zero tail, so no bytes can be
/// reported, but the new size must be.
#[test]
fn size_only_growth_still_reports_the_size() {
    bounded("inference", || {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let after = changed(&img, "grown.img", "sif /dir/f03 size 300000\n");
        let mut rig = Rig::new(&img, InferConfig::default());
        rig.become_image(&after);
        let ev = rig.take_events();
        assert!(
            ev.iter().any(|e| e.kind == EventKind::Modify
                && e.path == "/dir/f03"
                && e.size == Some(300_000)),
            "{ev:#?}"
        );
        assert_model_is(&*rig.inf, &after);
    });
}
