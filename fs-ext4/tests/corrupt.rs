//! Corruption tests: change one documented on-disk field of a real image
//! and check that the crawl reports it (error or warning naming the
//! structure) without panicking, and keeps what is intact.

mod common;

use common::*;
use gammaray_core::{Error, FileDevice, FileSystem, NoProgress, Owner};
use gammaray_ext4::Ext4;

fn image(extra: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let img = tmp.path().join("fs.img");
    mkfs("ext4", extra, &src, &img, "16M");
    (tmp, img)
}

fn warnings_about(c: &gammaray_core::Crawl, needle: &str) -> usize {
    c.warnings
        .iter()
        .filter(|w| w.to_string().contains(needle))
        .count()
}

#[test]
fn huge_s_log_block_size_fails_the_crawl() {
    let (_t, img) = image(&[]);
    patch(&img, 1024 + 0x18, &u32::MAX.to_le_bytes());
    let dev = FileDevice::open(&img).unwrap();
    assert!(!Ext4.probe(&dev));
    let err = Ext4.crawl(&dev, &NoProgress).unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { structure: "ext4 superblock", offset: 1024, detail } if detail.contains("s_log_block_size")),
        "{err}"
    );
}

#[test]
fn absurd_counts_fail_the_crawl() {
    for (off, v) in [
        (0x0usize, u32::MAX),
        (0x4, u32::MAX),
        (0x28, 0),
        (0x20, u32::MAX),
    ] {
        let (_t, img) = image(&[]);
        patch(&img, 1024 + off as u64, &v.to_le_bytes());
        let dev = FileDevice::open(&img).unwrap();
        let r = Ext4.crawl(&dev, &NoProgress);
        assert!(r.is_err(), "field {off:#x} = {v}: crawl should fail");
    }
}

#[test]
fn extent_header_depth_100_is_a_warning() {
    let (_t, img) = image(&[]);
    let off = inode_offset(&img, "/data");
    // i_block starts at 0x28; eh_depth is at +6.
    patch(&img, off + 0x28 + 6, &100u16.to_le_bytes());
    let c = crawl(&img);
    assert_eq!(warnings_about(&c, "eh_depth 100"), 1, "{:#?}", c.warnings);
    let w = c
        .warnings
        .iter()
        .find(|w| w.to_string().contains("eh_depth"))
        .unwrap();
    assert!(
        matches!(w, Error::Corrupt { structure: "ext4 extent node", offset, .. } if *offset == off + 0x28)
    );
    // The file is still listed, with no blocks; the rest is intact.
    let p = paths(&c.model);
    let id = p[std::path::Path::new("/data")];
    assert!(c.model.files.contains_key(&id));
    assert!(c.model.blocks.runs().all(|r| r.owner.file() != Some(id)));
    assert_eq!(
        c.model.tree.entries(p[std::path::Path::new("/dir")]).len(),
        40
    );
}

#[test]
fn dirent_rec_len_zero_is_a_warning() {
    let (_t, img) = image(&[]);
    let c = crawl(&img);
    let dir = paths(&c.model)[std::path::Path::new("/dir")];
    let run = *c
        .model
        .blocks
        .runs()
        .find(|r| {
            r.owner
                == Owner::DirData {
                    file: dir,
                    logical: 0,
                }
        })
        .unwrap();
    let bs = u64::from(c.model.block_size);
    // Third entry: after "." (12) and ".." (12).
    patch(&img, run.start * bs + 24 + 4, &0u16.to_le_bytes());
    let c = crawl(&img);
    assert_eq!(warnings_about(&c, "rec_len 0"), 1, "{:#?}", c.warnings);
    assert!(c.model.tree.entries(dir).len() < 40);
}

#[test]
fn dirent_name_len_past_record_is_a_warning() {
    let (_t, img) = image(&[]);
    let c = crawl(&img);
    let dir = paths(&c.model)[std::path::Path::new("/dir")];
    let run = *c
        .model
        .blocks
        .runs()
        .find(|r| {
            r.owner
                == Owner::DirData {
                    file: dir,
                    logical: 0,
                }
        })
        .unwrap();
    let bs = u64::from(c.model.block_size);
    patch(&img, run.start * bs + 24 + 6, &[250]);
    let c = crawl(&img);
    assert_eq!(warnings_about(&c, "name_len 250"), 1, "{:#?}", c.warnings);
}

#[test]
fn extent_index_pointing_to_itself_is_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = fragmented_image(tmp.path(), 1500);
    let c = crawl(&img);
    let frag = paths(&c.model)[std::path::Path::new("/frag")];
    let bs = u64::from(c.model.block_size);
    let dev = FileDevice::open(&img).unwrap();
    use gammaray_core::BlockDevice;
    // Find the depth-1 index block and point its first entry at itself.
    let mut found = None;
    for r in c.model.blocks.runs() {
        if r.owner != (Owner::ExtentTree { file: frag }) {
            continue;
        }
        for b in r.start..r.start + r.len {
            let mut h = [0u8; 12];
            dev.read_at(b * bs, &mut h).unwrap();
            if u16::from_le_bytes([h[6], h[7]]) == 1 {
                found = Some(b);
            }
        }
    }
    let node = found.expect("a depth-1 index node");
    patch(&img, node * bs + 12 + 4, &(node as u32).to_le_bytes());
    patch(&img, node * bs + 12 + 8, &0u16.to_le_bytes());
    let c = crawl(&img);
    assert!(
        warnings_about(&c, "eh_depth 1, expected 0") >= 1,
        "{:#?}",
        c.warnings
    );
}

#[test]
fn two_index_entries_sharing_a_child_are_read_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = fragmented_image(tmp.path(), 1500);
    let off = inode_offset(&img, "/frag");
    let bs = 4096u64;
    let dev = FileDevice::open(&img).unwrap();
    use gammaray_core::BlockDevice;
    let mut root = [0u8; 60];
    dev.read_at(off + 0x28, &mut root).unwrap();
    assert!(u16::from_le_bytes([root[6], root[7]]) >= 1);
    // Make every root index entry point at the first child.
    let child = root[16..20].to_vec();
    let entries = u16::from_le_bytes([root[2], root[3]]) as usize;
    for i in 1..entries.max(2) {
        root[12 + 12 * i + 4..12 + 12 * i + 8].copy_from_slice(&child);
    }
    root[2..4].copy_from_slice(&(entries.max(2) as u16).to_le_bytes());
    patch(&img, off + 0x28, &root);
    let c = crawl(&img);
    assert!(
        warnings_about(&c, "referenced twice") >= 1,
        "{:#?}",
        c.warnings
    );
    let _ = bs;
}

#[test]
fn truncated_image_gives_warnings_not_a_panic() {
    let (_t, img) = image(&[]);
    let full = std::fs::read(&img).unwrap();
    for keep in [2048usize, 8192, 100_000, full.len() / 3, full.len() / 2] {
        let dev: Vec<u8> = full[..keep].to_vec();
        if let Ok(c) = Ext4.crawl(&dev, &NoProgress) {
            assert!(!c.warnings.is_empty(), "cut at {keep}: no warning");
        }
    }
}

#[test]
fn random_byte_flips_in_metadata_never_panic() {
    // A cheap in-process fuzz over the metadata-heavy start of the image;
    // cargo-fuzz (fuzz/) does this properly.
    for extra in [
        &[][..],
        &["-O", "inline_data"][..],
        &["-t", "ext2", "-b", "1024"][..],
    ] {
        let (_t, img) = image(extra);
        let orig = std::fs::read(&img).unwrap();
        let c = Ext4.crawl(&orig, &NoProgress).unwrap();
        // Bytes worth flipping: metadata blocks (not file data).
        let bs = c.model.block_size as usize;
        let mut meta = Vec::new();
        for r in c.model.blocks.runs() {
            if !matches!(r.owner, Owner::FileData { .. } | Owner::Journal { .. }) {
                for b in r.start..(r.start + r.len).min(r.start + 64) {
                    meta.push(b as usize);
                }
            }
        }
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            let mut img = orig.clone();
            for _ in 0..8 {
                let b = meta[(next() as usize) % meta.len()];
                let pos = b * bs + (next() as usize) % bs;
                if (1024..2048).contains(&pos) && next() % 4 != 0 {
                    continue; // mostly keep the superblock usable
                }
                img[pos] = next() as u8;
            }
            let _ = Ext4.crawl(&img, &NoProgress);
        }
    }
}

#[test]
fn bad_group_checksum_means_the_itable_unused_hint_is_ignored() {
    for extra in [&[][..], &["-O", "^metadata_csum,uninit_bg"][..]] {
        let (_t, img) = image(extra);
        let before = crawl(&img);
        // Group 0's descriptor starts right after the superblock's block;
        // claim all of its inodes unused without fixing bg_checksum.
        let bs = u64::from(before.model.block_size);
        let gdt = if bs == 1024 { 2048 } else { bs };
        patch(&img, gdt + 0x1C, &u16::MAX.to_le_bytes());
        let c = crawl(&img);
        assert_eq!(
            warnings_about(&c, "bg_checksum mismatch"),
            1,
            "{:#?}",
            c.warnings
        );
        assert_eq!(c.model.files.len(), before.model.files.len());
    }
}

#[test]
fn bad_superblock_checksum_is_a_warning() {
    let (_t, img) = image(&[]);
    // s_volume_name changes, s_checksum does not.
    patch(&img, 1024 + 0x78, b"renamed");
    let c = crawl(&img);
    assert_eq!(warnings_about(&c, "s_checksum"), 1, "{:#?}", c.warnings);
    assert!(c.model.files.len() > 40);
}

#[test]
fn groups_sharing_one_inode_table_are_read_once() {
    // Point group 1's inode table at group 0's: without the overlap check
    // the same inodes would be read twice under other numbers.
    let (_t, img) = image(&["-O", "^metadata_csum,^uninit_bg,^flex_bg,^64bit"]);
    let before = crawl(&img);
    let bs = u64::from(before.model.block_size);
    let gdt = if bs == 1024 { 2048 } else { bs };
    let dev = FileDevice::open(&img).unwrap();
    use gammaray_core::BlockDevice;
    let mut d0 = [0u8; 32];
    dev.read_at(gdt, &mut d0).unwrap();
    patch(&img, gdt + 32 + 8, &d0[8..12]);
    let c = crawl(&img);
    assert_eq!(
        warnings_about(&c, "overlaps another group"),
        1,
        "{:#?}",
        c.warnings
    );
    assert_eq!(c.model.files.len(), before.model.files.len());
}
