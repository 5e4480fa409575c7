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
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{mkfs, pattern, run};
use gammaray_core::{
    BlockDevice, DiskWrite, EventKind, FileDevice, FileEvent, FileSystem, FileType, FsModel,
    InferConfig, Inference, LostReason, NoProgress, OverlayDevice, Owner, WriteFlags,
};
use gammaray_ext4::Ext4;

const BS: u64 = 4096;

/// Every case must finish within this (a debug build; a hang fails it).
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `f` on a thread and fails when it panics or outlives [`DEADLINE`].
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("inference did not finish in {DEADLINE:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("inference panicked"),
    }
}

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

    fn raw(&mut self, offset: u64, data: Vec<u8>) {
        self.write(DiskWrite::write(0, offset, data.into()));
    }

    fn all(&mut self, ws: Vec<DiskWrite>) {
        for w in ws {
            self.write(w);
        }
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

/// Paths with their type and size (regular files and symlinks).
fn listing(m: &FsModel) -> BTreeMap<PathBuf, (FileType, Option<u64>)> {
    common::paths(m)
        .into_iter()
        .map(|(p, id)| {
            let f = &m.files[&id];
            let size = (f.ftype != FileType::Dir).then_some(f.size);
            (p, (f.ftype, size))
        })
        .collect()
}

/// The inferred model names the same files, with the same types and
/// sizes, as a crawl of the real image `img`.
fn assert_model_is(inf: &dyn Inference, img: &Path) {
    let truth = common::crawl(img);
    assert_eq!(
        listing(inf.model()),
        listing(&truth.model),
        "model vs crawl of {img:?}"
    );
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
    bounded(|| {
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
    bounded(|| {
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
/// that disagrees with `len`, discards and write-zeroes (over free space
/// and over the end). None may panic; the bad ones are counted.
#[test]
fn malformed_requests() {
    bounded(|| {
        let dir = tempfile::tempdir().unwrap();
        let img = no_journal(dir.path());
        let size = fs::metadata(&img).unwrap().len();
        let mut rig = Rig::new(&img, InferConfig::default());
        let free = free_blocks(&img);
        let ws = vec![
            DiskWrite::write(0, size, Bytes::from(vec![1u8; 4096])),
            DiskWrite::write(0, size - 512, Bytes::from(vec![1u8; 4096])),
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

/// 200 MiB of writes over the free space of a 16 MiB image, with a 1 MiB
/// budget for data nobody owns: what is held never exceeds the budget,
/// and what fell out is counted. A file that then receives some of those
/// blocks gets a `lost` event (reason unknown_budget) for them, not
/// silently nothing.
#[test]
fn free_space_flood_stays_within_budget() {
    bounded(|| {
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
