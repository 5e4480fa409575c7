//! Crawls real images made by e2fsprogs from generated trees and compares
//! the model with the source tree (names, types, modes, owners, sizes,
//! link counts, mtimes, symlink targets, contents read through the block
//! map).

mod common;

use common::*;
use gammaray_core::Owner;

fn check(kind: &str, extra: &[&str], size: &str, fs_type: &str, nsec: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let image = tmp.path().join("fs.img");
    mkfs(kind, extra, &src, &image, size);
    fsck_clean(&image);
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "warnings: {:#?}", c.warnings);
    assert_eq!(c.model.fs_type, fs_type);
    assert_eq!(c.model.root, 2);
    compare(&image, &c, &src, nsec);
    // The journal is mapped when there is one, reserved inodes are not
    // files.
    let has_journal = c
        .model
        .blocks
        .runs()
        .any(|r| matches!(r.owner, Owner::Journal { .. }));
    assert_eq!(
        has_journal,
        fs_type != "ext2" && !extra.iter().any(|e| e.contains("^has_journal"))
    );
    assert!(c.model.files.keys().all(|&i| i == 2 || i >= 11));
    // Every file is reachable: no internal inode (journal, orphan file,
    // resize inode) leaks into `files`.
    let reachable: std::collections::BTreeSet<u64> = paths(&c.model).values().copied().collect();
    for id in c.model.files.keys() {
        assert!(*id == 2 || reachable.contains(id), "inode {id} unreachable");
    }
    let f100 = paths(&c.model)[std::path::Path::new("/sizes/f100")];
    assert_eq!(
        c.model
            .blocks
            .runs()
            .filter(|r| r.owner == Owner::Xattr { file: f100 })
            .count(),
        1,
        "xattr block of /sizes/f100"
    );
    assert!(c.model.blocks.runs().any(|r| r.owner == Owner::Superblock));
}

#[test]
fn ext4_default_features() {
    check("ext4", &[], "64M", "ext4", false);
}

#[test]
fn ext4_inline_data() {
    check("ext4", &["-O", "inline_data"], "64M", "ext4", false);
}

#[test]
fn ext4_1k_blocks_no_journal_32bit() {
    check(
        "ext4",
        &[
            "-b",
            "1024",
            "-O",
            "^has_journal,^64bit,^metadata_csum,uninit_bg",
        ],
        "64M",
        "ext4",
        false,
    );
}

#[test]
fn ext4_meta_bg_sparse_super2() {
    check(
        "ext4",
        &["-b", "1024", "-O", "meta_bg,^resize_inode,sparse_super2"],
        "80M",
        "ext4",
        false,
    );
}

#[test]
fn ext4_no_flex_bg_no_extents_128_byte_inodes() {
    check(
        "ext4",
        &[
            "-I",
            "128",
            "-O",
            "^flex_bg,^extent,^huge_file,^dir_nlink,^extra_isize,^metadata_csum,^64bit",
        ],
        "64M",
        "ext3",
        false,
    );
}

#[test]
fn ext3_indirect_blocks() {
    check("ext3", &[], "64M", "ext3", false);
}

#[test]
fn ext2_1k_blocks_triple_indirect() {
    // 1 KiB blocks put data past 64 MiB behind the triple-indirect block.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(src.join("triple")).unwrap();
        f.write_all(&pattern(5, 3000)).unwrap();
        f.seek(SeekFrom::Start(80 << 20)).unwrap();
        f.write_all(&pattern(6, 3000)).unwrap();
    }
    let image = tmp.path().join("fs.img");
    mkfs("ext2", &["-b", "1024", "-I", "128"], &src, &image, "64M");
    fsck_clean(&image);
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "warnings: {:#?}", c.warnings);
    assert_eq!(c.model.fs_type, "ext2");
    compare(&image, &c, &src, false);
    let ind = c
        .model
        .blocks
        .runs()
        .filter(|r| matches!(r.owner, Owner::Indirect { .. }))
        .count();
    assert!(
        ind >= 4,
        "expected indirect blocks incl. triple, got {ind} runs"
    );
}

/// Rebuilds every directory as an htree (`e2fsck -fyD`); mkfs -d alone
/// writes linear directories.
fn make_htrees(image: &std::path::Path) {
    let st = std::process::Command::new("e2fsck")
        .arg("-fyD")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        st.status.code().is_some_and(|c| c <= 1),
        "e2fsck -D: {st:?}"
    );
}

fn is_htree(image: &std::path::Path, path: &str) -> bool {
    let out = output(
        std::process::Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {path}"))
            .arg(image),
    );
    let flags = out
        .split("Flags: 0x")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    u32::from_str_radix(flags, 16).unwrap() & 0x1000 != 0
}

#[test]
fn htree_directories() {
    // mkfs -d inserts names one by one into a linear directory, which is
    // quadratic: 20,000 names take about a minute, so one image has them.
    for (kind, extra, n) in [
        ("ext4", &[][..], 20_000),
        ("ext3", &["-b", "1024"][..], 4000),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        big_dir(&src, n);
        let image = tmp.path().join("fs.img");
        mkfs(kind, extra, &src, &image, "128M");
        make_htrees(&image);
        fsck_clean(&image);
        assert!(is_htree(&image, "/many"), "{kind}: /many is not an htree");
        let c = crawl(&image);
        assert!(c.warnings.is_empty(), "warnings: {:#?}", c.warnings);
        let p = paths(&c.model);
        let many = p[std::path::Path::new("/many")];
        assert_eq!(c.model.tree.entries(many).len(), n, "{kind} {extra:?}");
        compare(&image, &c, &src, false);
    }
}

#[test]
fn fragmented_file_needs_deep_extent_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (image, big) = fragmented_image(tmp.path(), 1500);
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "warnings: {:#?}", c.warnings);
    let m = &c.model;
    let id = paths(m)[std::path::Path::new("/frag")];
    let tree_blocks = m
        .blocks
        .runs()
        .filter(|r| r.owner == Owner::ExtentTree { file: id })
        .map(|r| r.len)
        .sum::<u64>();
    // 1500 extents need 5 leaves under an index block: depth 2.
    assert!(tree_blocks >= 5, "only {tree_blocks} extent-tree blocks");
    let dev = gammaray_core::FileDevice::open(&image).unwrap();
    assert!(Reader::new(m).read(m, &dev, id) == big, "contents differ");
}

#[test]
fn extra_time_fields_nanoseconds_and_epoch_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let image = tmp.path().join("fs.img");
    mkfs("ext4", &[], &src, &image, "64M");
    // mkfs -d keeps only seconds; set the extra words directly.
    let extra = (123_456_789u32 << 2) | 1;
    run(std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("sif /sizes/f0 mtime_extra {extra}"))
        .arg(&image));
    let c = crawl(&image);
    let id = paths(&c.model)[std::path::Path::new("/sizes/f0")];
    let f = &c.model.files[&id];
    let base = std::fs::metadata(src.join("sizes/f0")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!({ f.mtime.sec }, base.mtime() + (1i64 << 32));
    assert_eq!(f.mtime.nsec, 123_456_789);
    assert!(f.crtime.sec > 0, "ext4 records crtime");
}

#[test]
#[ignore = "builds a 4 TiB sparse image: about 90 s and 800 MB of disk; run with --ignored"]
fn bit64_blocks_past_2_pow_32() {
    // With 1 KiB blocks, 4 TiB + 4 GiB puts half a million groups, their
    // descriptors' *_hi fields and their bitmaps past block 2^32. The
    // file /f is then moved to block 2^32 + 4000 by rewriting its extent
    // (ee_start_hi = 1) and copying its bytes there.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let data = pattern(64, 5000);
    std::fs::write(src.join("f"), &data).unwrap();
    let image = tmp.path().join("hi.img");
    run(std::process::Command::new("truncate")
        .args(["-s", "4100G"])
        .arg(&image));
    run(std::process::Command::new("mkfs.ext4")
        .args([
            "-F",
            "-q",
            "-b",
            "1024",
            "-O",
            "64bit,^resize_inode,^has_journal",
            "-N",
            "4096",
        ])
        .args(["-E", "lazy_itable_init=1,nodiscard", "-d"])
        .arg(&src)
        .arg(&image));
    let high: u64 = (1 << 32) + 4000;
    for (word, value) in [(4, 5u64 | (1 << 16)), (5, high & 0xffff_ffff)] {
        run(std::process::Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(format!("sif /f block[{word}] {value}"))
            .arg(&image));
    }
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        f.write_all_at(&data, high * 1024).unwrap();
    }
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let m = &c.model;
    let id = paths(m)[std::path::Path::new("/f")];
    assert_eq!(
        m.blocks.owner(high),
        Some(Owner::FileData {
            file: id,
            logical: 0
        })
    );
    // Metadata of the last groups lies past 2^32 too.
    assert!(m
        .blocks
        .runs()
        .any(|r| r.start > 1 << 32 && matches!(r.owner, Owner::InodeTable { .. })));
    let dev = gammaray_core::FileDevice::open(&image).unwrap();
    assert!(Reader::new(m).read(m, &dev, id) == data);
}

#[test]
fn progress_counts_every_inode_read() {
    use std::sync::atomic::{AtomicU64, Ordering};
    #[derive(Default)]
    struct Count(AtomicU64, AtomicU64);
    impl gammaray_core::Progress for Count {
        fn set_total(&self, t: u64) {
            self.0.store(t, Ordering::Relaxed);
        }
        fn inc(&self, n: u64) {
            self.1.fetch_add(n, Ordering::Relaxed);
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let image = tmp.path().join("fs.img");
    mkfs("ext4", &[], &src, &image, "64M");
    let dev = gammaray_core::FileDevice::open(&image).unwrap();
    let p = Count::default();
    use gammaray_core::FileSystem;
    let c = gammaray_ext4::Ext4.crawl(&dev, &p).unwrap();
    let total = p.0.load(Ordering::Relaxed);
    assert_eq!(total, p.1.load(Ordering::Relaxed));
    // Only the used part of the inode table is read (uninit_bg /
    // metadata_csum itable_unused), not all 16384 inodes.
    assert!(
        total >= c.model.files.len() as u64 && total < 1000,
        "{total}"
    );
}

#[test]
fn unwritten_extents_from_debugfs_fallocate() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let image = tmp.path().join("fs.img");
    mkfs("ext4", &[], &src, &image, "64M");
    // Logical blocks 1..=9 of a one-block file become unwritten.
    run(std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg("fallocate /sizes/f1 0 9")
        .arg(&image));
    fsck_clean(&image);
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let id = paths(&c.model)[std::path::Path::new("/sizes/f1")];
    let unwritten: u64 = c
        .model
        .blocks
        .runs()
        .filter_map(|r| match r.owner {
            Owner::Unwritten { file, logical } if file == id => {
                assert!(logical >= 1);
                Some(r.len)
            }
            _ => None,
        })
        .sum();
    assert_eq!(unwritten, 9);
    // The written block is still data, and the contents still match.
    compare(&image, &c, &src, false);
}

#[test]
fn partition_window_from_mkfs_offset() {
    // mkfs -E offset= writes the file system 1 MiB into the image, as in
    // a partitioned disk; the crawl runs on a SliceDevice window.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let image = tmp.path().join("disk.img");
    run(std::process::Command::new("truncate")
        .args(["-s", "65M"])
        .arg(&image));
    mkfs("ext4", &["-E", "offset=1048576"], &src, &image, "64M");
    let disk = gammaray_core::FileDevice::open(&image).unwrap();
    use gammaray_core::{BlockDevice, FileSystem};
    assert!(!gammaray_ext4::Ext4.probe(&disk));
    let part = gammaray_core::SliceDevice::new(&disk, 1 << 20, disk.size() - (1 << 20)).unwrap();
    let c = gammaray_ext4::Ext4
        .crawl(&part, &gammaray_core::NoProgress)
        .unwrap();
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let p = paths(&c.model);
    let id = p[std::path::Path::new("/sizes/f4097")];
    let m = &c.model;
    assert!(Reader::new(m).read(m, &part, id) == std::fs::read(src.join("sizes/f4097")).unwrap());
}

#[test]
fn ext4_bigalloc_clusters() {
    check(
        "ext4",
        &["-O", "bigalloc", "-C", "16384"],
        "128M",
        "ext4",
        false,
    );
    check(
        "ext4",
        &["-b", "1024", "-O", "bigalloc,^has_journal", "-C", "16384"],
        "128M",
        "ext4",
        false,
    );
}

#[test]
fn mount_hint_from_s_last_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let image = tmp.path().join("fs.img");
    mkfs("ext4", &[], &src, &image, "16M");
    assert_eq!(crawl(&image).model.mount_hint, None);
    run(std::process::Command::new("tune2fs")
        .args(["-M", "/srv/data"])
        .arg(&image));
    assert_eq!(crawl(&image).model.mount_hint.as_deref(), Some("/srv/data"));
}

#[test]
fn ea_inode_values_are_not_files() {
    // With 1 KiB blocks a 3000-byte xattr value only fits in an EA inode.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    run(std::process::Command::new("python3").arg("-c").arg(format!(
        "import os; os.setxattr({:?}, 'user.huge', b'w' * 3000)",
        src.join("f").display().to_string()
    )));
    let image = tmp.path().join("fs.img");
    mkfs(
        "ext4",
        &["-b", "1024", "-O", "ea_inode"],
        &src,
        &image,
        "16M",
    );
    // No fsck_clean: mkfs 1.47.2 leaves /f's i_blocks short of the EA
    // inode's charge ("i_blocks is 2, should be 8"); the crawl is unaffected.
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let ids: Vec<u64> = c.model.files.keys().copied().collect();
    let f = paths(&c.model)[std::path::Path::new("/f")];
    assert_eq!(ids.len(), 3, "root, lost+found and /f only: {ids:?}");
    assert!(ids.contains(&f));
    compare(&image, &c, &src, false);
}

#[test]
fn inline_directory_continued_in_system_data() {
    // mkfs and debugfs turn a full inline directory into a block one; the
    // kernel instead continues it in the system.data xattr. Build that by
    // hand: add a dirent for "spilled" (-> e1's inode) as system.data and
    // grow i_size past 60; debugfs's listing is the ground truth.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("four")).unwrap();
    for i in 1..=3 {
        std::fs::write(src.join(format!("four/e{i}")), b"s").unwrap();
    }
    let image = tmp.path().join("fs.img");
    mkfs("ext4", &["-O", "inline_data"], &src, &image, "16M");
    let c = crawl(&image);
    let p = paths(&c.model);
    let e1 = p[std::path::Path::new("/four/e1")];
    let mut val = Vec::new();
    val.extend_from_slice(&(e1 as u32).to_le_bytes());
    val.extend_from_slice(&40u16.to_le_bytes());
    val.extend_from_slice(&[7, 1]);
    val.extend_from_slice(b"spilled");
    val.resize(40, 0);
    let val_path = tmp.path().join("val");
    std::fs::write(&val_path, &val).unwrap();
    for cmd in [
        format!("ea_set -f {} /four system.data", val_path.display()),
        "sif /four size 100".to_string(),
    ] {
        run(std::process::Command::new("debugfs")
            .arg("-w")
            .arg("-R")
            .arg(cmd)
            .arg(&image));
    }
    let ls = output(
        std::process::Command::new("debugfs")
            .arg("-R")
            .arg("ls /four")
            .arg(&image),
    );
    assert!(ls.contains("spilled"), "debugfs: {ls}");
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let four = paths(&c.model)[std::path::Path::new("/four")];
    let mut names: Vec<String> = c
        .model
        .tree
        .entries(four)
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["e1", "e2", "e3", "spilled"]);
}

#[test]
fn ext4_quota_inodes_stay_hidden() {
    // No fsck_clean: mkfs -d does not account the copied files in the
    // quota files, which e2fsck reports.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let image = tmp.path().join("fs.img");
    mkfs("ext4", &["-O", "quota,project"], &src, &image, "64M");
    let c = crawl(&image);
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    compare(&image, &c, &src, false);
    let reachable: std::collections::BTreeSet<u64> = paths(&c.model).values().copied().collect();
    for id in c.model.files.keys() {
        assert!(*id == 2 || reachable.contains(id), "inode {id} unreachable");
    }
    // The quota files' blocks are mapped as metadata.
    assert!(c
        .model
        .blocks
        .runs()
        .any(|r| r.owner == Owner::OtherMetadata));
}
