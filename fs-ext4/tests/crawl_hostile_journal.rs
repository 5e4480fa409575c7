//! Hostile journals at crawl time: the crawl replays a journal whose log is
//! not empty (`s_start != 0`), so a guest (or a damaged disk) controls
//! what the replay walks. A log that runs round the whole journal,
//! descriptors full of tags, tags naming blocks past the end of the file
//! system or over its inode tables, damaged checksums, revoke blocks with
//! absurd counts and random blocks must give a crawl (and an inference
//! started on it) that finishes in bounded time, with a warning where the
//! log was damaged, and never panics.

mod common;

use std::path::Path;

use common::{bounded, mkfs, pattern};
use gammaray_core::{Crawl, FileSystem, InferConfig, NoProgress};
use gammaray_ext4::crawl::read_superblock;
use gammaray_ext4::fuzzing::jbd2;
use gammaray_ext4::journal::{block_type, incompat, JournalSuperblock, JBD2_MAGIC};
use gammaray_ext4::recovery;
use gammaray_ext4::Ext4;

const BS: usize = 4096;
/// A fresh 16 MiB ext4 image (4 KiB blocks) and its journal mapping.
struct Img {
    bytes: Vec<u8>,
    map: Vec<(u64, u64, u64)>,
    jsb_at: usize,
}

fn fresh(dir: &Path) -> Img {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    for i in 0..10u64 {
        std::fs::write(src.join(format!("dir/f{i}")), pattern(i, 3000)).unwrap();
    }
    let img = dir.join("base.img");
    mkfs("ext4", &["-b", "4096"], &src, &img, "16M");
    let bytes = std::fs::read(&img).unwrap();
    let sb = read_superblock(&bytes).unwrap();
    let plan = recovery::plan(&bytes, &sb).unwrap().unwrap();
    assert_eq!(plan.jsb.start, 0, "a fresh journal is empty");
    Img {
        jsb_at: plan.jsb_offset as usize,
        map: plan.map,
        bytes,
    }
}

impl Img {
    fn phys(&self, l: u32) -> usize {
        let l = u64::from(l);
        let &(ls, ps, _) = self
            .map
            .iter()
            .find(|&&(ls, _, n)| l >= ls && l < ls + n)
            .unwrap();
        (ps + (l - ls)) as usize
    }

    /// Puts `b` at journal logical block `l`.
    fn put(&mut self, l: u32, b: &[u8]) {
        let p = self.phys(l) * BS;
        self.bytes[p..p + BS].copy_from_slice(&b[..BS]);
    }

    /// Sets the journal superblock's `s_start`, `s_sequence` and incompat
    /// features; returns the parsed superblock.
    fn log(&mut self, start: u32, seq: u32, inc: u32) -> JournalSuperblock {
        let at = self.jsb_at;
        let put = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_be_bytes());
        put(&mut self.bytes[at..], 0x18, seq);
        put(&mut self.bytes[at..], 0x1C, start);
        put(&mut self.bytes[at..], 0x28, inc);
        JournalSuperblock::from_bytes(&self.bytes[at..at + 1024], at as u64).unwrap()
    }

    /// Crawls (bounded), starts an inference on the result, and returns
    /// the crawl.
    fn crawl(self) -> Crawl {
        bounded("crawl", move || {
            let c = Ext4.crawl(&self.bytes, &NoProgress).unwrap();
            let inf = Ext4.infer(&self.bytes, c.model.clone(), &InferConfig::default());
            assert!(inf.is_ok(), "inference did not start: {:?}", inf.err());
            c
        })
    }
}

fn has_warning(c: &Crawl, word: &str) -> bool {
    c.warnings.iter().any(|w| w.to_string().contains(word))
}

/// Every log block a commit of the next sequence: the log runs round the
/// whole journal and would go on for ever; the replay stops after one
/// round.
#[test]
fn log_running_round_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut im = fresh(dir.path());
    let jsb = im.log(1, 10, 0);
    for l in 1..jsb.maxlen {
        im.put(l, &jbd2::commit(&jsb, 9 + l));
    }
    let c = im.crawl();
    assert!(
        has_warning(&c, "round the whole journal"),
        "{:?}",
        c.warnings
    );
}

/// Descriptors whose tags (no `LAST_TAG`, as many as fit) name blocks past
/// the end of the file system and, on the next round, one descriptor that
/// claims more logged blocks than the journal has.
#[test]
fn descriptors_full_of_tags() {
    let dir = tempfile::tempdir().unwrap();
    let mut im = fresh(dir.path());
    for inc in [0, incompat::BIT64, incompat::CSUM_V3 | incompat::BIT64] {
        let jsb = im.log(1, 3, inc);
        let mut d = jbd2::header(&jsb, block_type::DESCRIPTOR, 3);
        let tb = jsb.tag_bytes();
        let mut p = 12;
        let mut k = 0u32;
        while p + tb <= BS - 4 {
            // Huge home numbers; flags SAME_UUID only.
            d[p..p + 4].copy_from_slice(&0xFFF0_0000u32.wrapping_add(k).to_be_bytes());
            let flags: u32 = 0x2;
            if jsb.csum_v3() {
                d[p + 4..p + 8].copy_from_slice(&flags.to_be_bytes());
                d[p + 8..p + 12].copy_from_slice(&0xFFFFu32.to_be_bytes());
            } else {
                d[p + 6..p + 8].copy_from_slice(&(flags as u16).to_be_bytes());
                if jsb.is_64bit() {
                    d[p + 8..p + 12].copy_from_slice(&7u32.to_be_bytes());
                }
            }
            p += tb;
            k += 1;
        }
        // Every block of the log is this descriptor: each one's tags skip
        // the following blocks, and the walk must stop after one round.
        for l in 1..jsb.maxlen {
            im.put(l, &d);
        }
        let c = Img {
            bytes: im.bytes.clone(),
            map: im.map.clone(),
            jsb_at: im.jsb_at,
        }
        .crawl();
        assert!(
            has_warning(&c, "round the whole journal"),
            "{inc:#x}: {:?}",
            c.warnings
        );
        // One full descriptor and a commit right after its blocks: the
        // homes past the end are not replayed, the crawl is unharmed.
        let tags = (BS - 4 - 12) / tb;
        let mut one = im.bytes.clone();
        let put_at = |bytes: &mut Vec<u8>, l: u32, b: &[u8]| {
            let p = im.phys(l) * BS;
            bytes[p..p + BS].copy_from_slice(&b[..BS]);
        };
        put_at(&mut one, 1, &d);
        put_at(&mut one, tags as u32 + 2, &jbd2::commit(&jsb, 3));
        let sb = read_superblock(&one).unwrap();
        let plan = recovery::plan(&one, &sb).unwrap().unwrap();
        if !jsb.csum_v2or3() {
            assert_eq!(plan.recovery.transactions, 1, "{inc:#x}");
            assert_eq!(plan.recovery.out_of_range, tags as u64, "{inc:#x}");
        }
        assert!(plan.recovery.copies.is_empty(), "{inc:#x}");
    }
}

/// A valid, committed transaction that lays garbage over the group
/// descriptors and the inode tables. A mount would fail; the crawl warns
/// and indexes the home blocks. Without the descriptor block the garbage
/// inode tables are crawled as the guest would see them.
#[test]
fn committed_garbage_over_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let mut im = fresh(dir.path());
    let jsb = im.log(1, 1, incompat::CSUM_V3 | incompat::BIT64);
    let sb = read_superblock(&im.bytes).unwrap();
    let tables = gammaray_ext4::crawl::inode_tables(&im.bytes, &sb).unwrap();
    let mut homes: Vec<(u64, Vec<u8>)> = Vec::new();
    for (i, t) in tables.iter().enumerate().take(2) {
        for k in 0..4 {
            let mut g = pattern(1000 + i as u64 * 10 + k, BS);
            if k == 0 {
                // A block that starts with the magic is logged escaped.
                g[..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
            }
            homes.push((t + k, g));
        }
    }
    let inode_garbage = homes.clone();
    homes.push((1, pattern(5, BS)));
    let (d, logged) = jbd2::descriptor(&jsb, 1, &homes);
    im.put(1, &d);
    for (i, b) in logged.iter().enumerate() {
        im.put(2 + i as u32, b);
    }
    im.put(2 + logged.len() as u32, &jbd2::commit(&jsb, 1));
    let bytes = im.bytes.clone();
    let sbb = read_superblock(&bytes).unwrap();
    let plan = recovery::plan(&bytes, &sbb).unwrap().unwrap();
    assert_eq!(plan.recovery.transactions, 1);
    assert_eq!(plan.recovery.copies.len(), homes.len());
    assert!(plan.recovery.copies.iter().any(|c| c.escaped));
    // Block 1 (the group descriptors) is garbage once replayed: the
    // replayed state does not crawl, the home blocks do.
    let c = im.crawl();
    assert!(
        has_warning(&c, "crawled the home blocks"),
        "{:?}",
        c.warnings
    );
    assert!(c.model.files.len() > 10);

    // Only the inode tables: replayed and crawled, garbage and all.
    let mut im = Img {
        bytes: bytes.clone(),
        map: plan.map.clone(),
        jsb_at: plan.jsb_offset as usize,
    };
    let (d, logged) = jbd2::descriptor(&jsb, 1, &inode_garbage);
    im.put(1, &d);
    for (i, b) in logged.iter().enumerate() {
        im.put(2 + i as u32, b);
    }
    im.put(2 + logged.len() as u32, &jbd2::commit(&jsb, 1));
    let _ = im.crawl();
}

/// Damaged checksums (csum v3): a bad commit checksum and a bad
/// descriptor tail both end the replay with a warning; the transaction
/// before them is replayed.
#[test]
fn bad_checksums_end_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let base = fresh(dir.path());
    for damage in ["commit", "descriptor"] {
        let mut im = Img {
            bytes: base.bytes.clone(),
            map: base.map.clone(),
            jsb_at: base.jsb_at,
        };
        let jsb = im.log(1, 1, incompat::CSUM_V3 | incompat::BIT64);
        let sb = read_superblock(&im.bytes).unwrap();
        let tables = gammaray_ext4::crawl::inode_tables(&im.bytes, &sb).unwrap();
        let home = tables[0];
        let off = home as usize * BS;
        let orig = im.bytes[off..off + BS].to_vec();
        // Transaction 1 logs the first inode table block unchanged;
        // transaction 2 the same block full of garbage.
        let (d1, l1) = jbd2::descriptor(&jsb, 1, &[(home, orig)]);
        im.put(1, &d1);
        im.put(2, &l1[0]);
        im.put(3, &jbd2::commit(&jsb, 1));
        let (mut d2, l2) = jbd2::descriptor(&jsb, 2, &[(home, pattern(3, BS))]);
        let mut c2 = jbd2::commit(&jsb, 2);
        if damage == "commit" {
            c2[0x40] ^= 1;
        } else {
            d2[100] ^= 1;
        }
        im.put(4, &d2);
        im.put(5, &l2[0]);
        im.put(6, &c2);
        let plan = recovery::plan(&im.bytes, &sb).unwrap().unwrap();
        assert_eq!(plan.recovery.transactions, 1, "{damage}");
        assert_eq!(plan.recovery.copies.len(), 1, "{damage}");
        assert_eq!(plan.recovery.copies[0].logical, 2, "{damage}");
        let c = im.crawl();
        assert!(has_warning(&c, "checksum"), "{damage}: {:?}", c.warnings);
        // The crawl is the undamaged image's.
        assert_eq!(c.model.files.len(), {
            let c0 = Ext4.crawl(&base.bytes, &NoProgress).unwrap();
            c0.model.files.len()
        });
    }
}

/// A revoke block whose `r_count` runs past the block, then a wrong
/// `s_start` (past `s_maxlen`): the crawl finishes; the first with a
/// warning, the second crawls the home blocks.
#[test]
fn bad_revoke_and_bad_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut im = fresh(dir.path());
    let jsb = im.log(1, 1, incompat::REVOKE);
    let mut r = jbd2::header(&jsb, block_type::REVOKE, 1);
    r[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    im.put(1, &r);
    im.put(2, &jbd2::commit(&jsb, 1));
    let bytes = im.bytes.clone();
    let c = Img {
        bytes,
        map: im.map.clone(),
        jsb_at: im.jsb_at,
    }
    .crawl();
    assert!(has_warning(&c, "r_count"), "{:?}", c.warnings);
    let at = im.jsb_at;
    im.bytes[at + 0x1C..at + 0x20].copy_from_slice(&u32::MAX.to_be_bytes());
    let c = im.crawl();
    assert!(c.model.files.len() > 10);
}

/// Random journals: blocks with plausible headers of the expected
/// sequences and random bodies, under every tag layout.
#[test]
fn random_logs_never_panic_or_hang() {
    let dir = tempfile::tempdir().unwrap();
    let base = fresh(dir.path());
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..12 {
        let mut im = Img {
            bytes: base.bytes.clone(),
            map: base.map.clone(),
            jsb_at: base.jsb_at,
        };
        let inc = (rnd() as u32) & 0x1F;
        let jsb = im.log(1 + (rnd() % 100) as u32, 50, inc);
        for l in 1..jsb.maxlen.min(400) {
            let mut b: Vec<u8> = (0..BS).map(|_| rnd() as u8).collect();
            if rnd() % 4 != 0 {
                b[0..4].copy_from_slice(&JBD2_MAGIC.to_be_bytes());
                b[4..8].copy_from_slice(&(1 + (rnd() % 5) as u32).to_be_bytes());
                b[8..12].copy_from_slice(&(50 + (rnd() % 3) as u32).to_be_bytes());
                if rnd() % 2 == 0 {
                    // Small homes, so that some land inside the file system.
                    b[12..16].copy_from_slice(&((rnd() % 4096) as u32).to_be_bytes());
                }
            }
            if rnd() % 3 == 0 {
                b = jbd2::commit(&jsb, 50 + (rnd() % 3) as u32);
            }
            im.put(l, &b);
        }
        let c = im.crawl();
        let _ = (round, c.warnings.len());
    }
}

/// A file system that needs recovery from an external journal (here
/// faked: `s_journal_inum` 0) is crawled from its home blocks, with a
/// warning; so is one whose journal inode maps nothing.
#[test]
fn external_or_missing_journal() {
    let dir = tempfile::tempdir().unwrap();
    let im = fresh(dir.path());
    let mut bytes = im.bytes.clone();
    let sb_at = 1024;
    let inc = u32::from_le_bytes(bytes[sb_at + 0x60..sb_at + 0x64].try_into().unwrap());
    bytes[sb_at + 0x60..sb_at + 0x64].copy_from_slice(&(inc | 0x4).to_le_bytes());
    let mut ext = bytes.clone();
    ext[sb_at + 0xE0..sb_at + 0xE4].copy_from_slice(&0u32.to_le_bytes());
    let c = Img {
        bytes: ext,
        map: im.map.clone(),
        jsb_at: im.jsb_at,
    }
    .crawl();
    assert!(has_warning(&c, "external"), "{:?}", c.warnings);
    assert!(c.model.files.len() > 10);
    // The journal inode points at inode 3 (no blocks).
    let mut none = bytes;
    none[sb_at + 0xE0..sb_at + 0xE4].copy_from_slice(&3u32.to_le_bytes());
    let c = Img {
        bytes: none,
        map: im.map.clone(),
        jsb_at: im.jsb_at,
    }
    .crawl();
    assert!(has_warning(&c, "cannot be replayed"), "{:?}", c.warnings);
    assert!(c.model.files.len() > 10);
}
