//! `gammaray crawl --list --hash` against ground truth: trees generated here
//! are put into ext2/3/4 images by e2fsprogs (`mkfs -d`), and every path,
//! type, mode, uid, gid, size, nlink, mtime, symlink target and sha256 that
//! gammaray reports must match the source tree as the host's kernel sees it.
//! The path set is cross-checked against sleuthkit's `fls -r -p`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

fn gammaray() -> &'static str {
    env!("CARGO_BIN_EXE_gammaray")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic bytes (xorshift), so contents differ between files.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 123_456_789,
        },
    ];
    // SAFETY: c is a valid NUL-terminated path and ts has two elements.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// What the tree should contain besides plain files.
#[derive(Clone, Copy)]
struct TreeSpec {
    big_dir: usize,
    fragmented: bool,
    deep_indirect: bool,
    inline_small: bool,
}

/// Builds a source tree exercising the crawler.
fn make_tree(root: &Path, spec: TreeSpec) {
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    fs::create_dir_all(root.join("var/log/app")).unwrap();
    fs::create_dir_all(root.join("home/alice/.cache")).unwrap();
    let sizes = [
        0usize,
        1,
        59,
        60,
        61,
        4095,
        4096,
        4097,
        49_152,
        100_000,
        1 << 20,
    ];
    for (i, size) in sizes.iter().enumerate() {
        fs::write(
            root.join(format!("var/log/app/f{i}.bin")),
            bytes(i as u64, *size),
        )
        .unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .unwrap();
    fs::write(root.join("etc/shadow"), b"root:*:19000:0:99999:7:::\n").unwrap();
    fs::set_permissions(root.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
    chown(&root.join("etc/shadow"), 0, 42);
    fs::write(root.join("etc/ssh/sshd_config"), bytes(99, 3000)).unwrap();
    fs::write(root.join("home/alice/notes.txt"), b"hello\n").unwrap();
    chown(&root.join("home/alice"), 1000, 1000);
    chown(&root.join("home/alice/notes.txt"), 1000, 4_000_000_000);
    fs::set_permissions(
        root.join("home/alice/notes.txt"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(
        root.join("home/alice/.cache"),
        fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    // Hard links.
    fs::hard_link(root.join("etc/passwd"), root.join("etc/passwd.link")).unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("home/alice/passwd")).unwrap();
    // Short (fast) and long (slow) symlinks.
    std::os::unix::fs::symlink("../etc/passwd", root.join("home/alice/short")).unwrap();
    let long = format!("/{}", "very-long-directory-name/".repeat(8));
    std::os::unix::fs::symlink(&long, root.join("home/alice/long")).unwrap();
    // Sparse file: data at 0, a hole, data at 10 MiB.
    {
        let mut f = fs::File::create(root.join("var/sparse.img")).unwrap();
        f.write_all(&bytes(7, 8192)).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&bytes(8, 5000)).unwrap();
    }
    if spec.fragmented {
        // Data in every other block: one extent per data block, far more
        // than the four that fit in the inode, so the tree needs depth >= 1.
        let mut f = fs::File::create(root.join("var/fragmented.bin")).unwrap();
        for i in 0..600u64 {
            f.seek(SeekFrom::Start(i * 8192)).unwrap();
            f.write_all(&bytes(1000 + i, 4096)).unwrap();
        }
    }
    if spec.deep_indirect {
        // With 1 KiB blocks, byte 80 MiB lies beyond the double-indirect
        // range (12 + 256 + 65536 blocks): triple-indirect.
        let mut f = fs::File::create(root.join("var/deep.bin")).unwrap();
        f.write_all(&bytes(3, 300_000)).unwrap();
        f.seek(SeekFrom::Start(80 << 20)).unwrap();
        f.write_all(&bytes(4, 3000)).unwrap();
    }
    if spec.inline_small {
        fs::create_dir_all(root.join("inline")).unwrap();
        for i in 0..20 {
            fs::write(
                root.join(format!("inline/s{i}")),
                bytes(500 + i, i as usize * 7),
            )
            .unwrap();
        }
    }
    if spec.big_dir > 0 {
        let d = root.join("var/spool");
        fs::create_dir_all(&d).unwrap();
        for i in 0..spec.big_dir {
            fs::write(
                d.join(format!("msg-{i:06}-{}", "x".repeat(i % 40))),
                format!("{i}\n"),
            )
            .unwrap();
        }
    }
    // Deterministic times on everything, children before parents.
    let mut all = Vec::new();
    walk(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64 * 37);
    }
    set_mtime(root, 1_650_000_000);
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

/// The listing the source tree implies, keyed by path. Directory sizes are
/// left out: they depend on the file system that holds the source tree.
fn expected(root: &Path, part: u32) -> BTreeMap<String, Value> {
    let mut paths = vec![root.to_path_buf()];
    walk(root, &mut paths);
    let mut out = BTreeMap::new();
    for p in paths {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap();
        let path = format!("/{}", rel.display());
        let ft = md.file_type();
        let (ty, size, nlink) = if ft.is_dir() {
            let subdirs = fs::read_dir(&p)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count() as u64;
            ("dir", None, 2 + subdirs + u64::from(path == "/"))
        } else if ft.is_symlink() {
            ("symlink", Some(md.len()), md.nlink())
        } else {
            ("file", Some(md.len()), md.nlink())
        };
        let mut v = serde_json::json!({
            "part": part, "path": if path == "/" { "/".to_string() } else { path.clone() },
            "type": ty, "mode": md.mode() & 0o7777, "uid": md.uid(), "gid": md.gid(),
            "nlink": nlink, "mtime": md.mtime(),
        });
        if let Some(s) = size {
            v["size"] = s.into();
        }
        if ft.is_symlink() {
            v["target"] = fs::read_link(&p)
                .unwrap()
                .to_string_lossy()
                .into_owned()
                .into();
        } else if ft.is_file() {
            v["sha256"] = hex::encode(Sha256::digest(fs::read(&p).unwrap())).into();
        }
        if path == "/" {
            // mkfs gives the root its own creation time, not the tree's.
            v.as_object_mut().unwrap().remove("mtime");
        }
        out.insert(if path == "/" { "/".into() } else { path }, v);
    }
    out
}

fn crawl_listing(img: &Path, out_dir: &Path) -> Vec<Value> {
    let idx = out_dir.join("disk.gammaray");
    let stdout = run(Command::new(gammaray())
        .args(["crawl", "--list", "--hash", "-o"])
        .arg(&idx)
        .arg(img));
    assert!(idx.exists(), "index not written");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect()
}

/// Compares gammaray's lines for `part` with the source tree. `/lost+found`
/// is made by mkfs, not the tree; it must be a root-owned directory.
fn compare(got: &[Value], part: u32, want: &BTreeMap<String, Value>) {
    let mine: BTreeMap<String, &Value> = got
        .iter()
        .filter(|v| v["part"] == part)
        .map(|v| (v["path"].as_str().unwrap().to_string(), v))
        .collect();
    let lf = mine.get("/lost+found").expect("mkfs makes /lost+found");
    assert_eq!(lf["type"], "dir");
    let got_paths: BTreeSet<&String> = mine.keys().filter(|p| *p != "/lost+found").collect();
    let want_paths: BTreeSet<&String> = want.keys().collect();
    assert_eq!(got_paths, want_paths, "path sets differ");
    for (path, w) in want {
        let g = mine[path];
        for (k, wv) in w.as_object().unwrap() {
            assert_eq!(
                &g[k], wv,
                "{path}: field {k}: gammaray {} vs truth {}",
                g[k], wv
            );
        }
    }
}

/// Paths from `fls -r -p`, without deleted entries and virtual files.
fn fls_paths(img: &Path, offset_sectors: Option<u64>) -> BTreeSet<String> {
    let mut cmd = Command::new("fls");
    cmd.args(["-r", "-p"]);
    if let Some(o) = offset_sectors {
        cmd.args(["-o", &o.to_string()]);
    }
    let out = run(cmd.arg(img));
    out.lines()
        .filter_map(|l| {
            let (meta, name) = l.split_once('\t')?;
            if meta.contains('*') || meta.starts_with("V/V") || name.starts_with("$OrphanFiles") {
                return None;
            }
            Some(format!("/{name}"))
        })
        .collect()
}

fn mkfs(tool: &str, img: &Path, size: &str, src: &Path, extra: &[&str]) {
    let _ = fs::remove_file(img);
    run(Command::new(tool)
        .args(["-F", "-q"])
        .args(extra)
        .arg("-d")
        .arg(src)
        .arg(img)
        .arg(size));
    run(Command::new("e2fsck").arg("-fn").arg(img));
}

fn check_image(tool: &str, size: &str, extra: &[&str], spec: TreeSpec) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src, spec);
    let img = dir.path().join("disk.img");
    mkfs(tool, &img, size, &src, extra);
    let got = crawl_listing(&img, dir.path());
    compare(&got, 1, &expected(&src, 1));
    if have("fls") {
        let mine: BTreeSet<String> = got
            .iter()
            .map(|v| v["path"].as_str().unwrap().to_string())
            .filter(|p| p != "/")
            .collect();
        assert_eq!(
            mine,
            fls_paths(&img, None),
            "gammaray and fls disagree on paths"
        );
    }
}

const PLAIN: TreeSpec = TreeSpec {
    big_dir: 0,
    fragmented: true,
    deep_indirect: false,
    inline_small: false,
};

#[test]
fn ext4_tree_with_htree_dir_matches_source() {
    check_image(
        "mkfs.ext4",
        "256M",
        &["-b", "4096"],
        TreeSpec {
            big_dir: 20_000,
            ..PLAIN
        },
    );
}

#[test]
fn ext4_inline_data_matches_source() {
    check_image(
        "mkfs.ext4",
        "64M",
        &["-O", "inline_data", "-I", "256"],
        TreeSpec {
            inline_small: true,
            ..PLAIN
        },
    );
}

#[test]
fn ext4_1k_blocks_metadata_csum_off_matches_source() {
    check_image(
        "mkfs.ext4",
        "128M",
        &["-b", "1024", "-O", "^metadata_csum,^64bit"],
        PLAIN,
    );
}

#[test]
fn ext3_indirect_blocks_match_source() {
    check_image(
        "mkfs.ext3",
        "160M",
        &["-b", "1024"],
        TreeSpec {
            deep_indirect: true,
            ..PLAIN
        },
    );
}

#[test]
fn ext2_matches_source() {
    check_image("mkfs.ext2", "64M", &["-b", "4096"], PLAIN);
}

/// Writes `img` into `disk` at byte `offset`.
fn place(disk: &Path, img: &Path, offset: u64) {
    let data = fs::read(img).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&data).unwrap();
}

fn partitioned(label: &str, script: &str, parts: &[(u32, u64)]) {
    if !have("sfdisk") {
        panic!("sfdisk is required (package fdisk)");
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    fs::File::create(&disk).unwrap().set_len(200 << 20).unwrap();
    run_with_input(
        Command::new("sfdisk").arg("-q").arg(&disk),
        &format!("label: {label}\n{script}"),
    );
    let mut wants = Vec::new();
    for (i, (part, start_mib)) in parts.iter().enumerate() {
        let src = dir.path().join(format!("src{part}"));
        make_tree(&src, PLAIN);
        fs::write(src.join(format!("partition-{part}")), format!("{i}")).unwrap();
        let img = dir.path().join(format!("p{part}.img"));
        mkfs("mkfs.ext4", &img, "40M", &src, &[]);
        place(&disk, &img, start_mib << 20);
        wants.push((*part, expected(&src, *part), *start_mib));
    }
    let got = crawl_listing(&disk, dir.path());
    let parts_seen: BTreeSet<u64> = got.iter().map(|v| v["part"].as_u64().unwrap()).collect();
    assert_eq!(
        parts_seen,
        parts
            .iter()
            .map(|(p, _)| u64::from(*p))
            .collect::<BTreeSet<_>>()
    );
    for (part, want, start_mib) in &wants {
        compare(&got, *part, want);
        if have("fls") {
            let mine: BTreeSet<String> = got
                .iter()
                .filter(|v| v["part"] == *part)
                .map(|v| v["path"].as_str().unwrap().to_string())
                .filter(|p| p != "/")
                .collect();
            assert_eq!(
                mine,
                fls_paths(&disk, Some(start_mib * 2048)),
                "fls, part {part}"
            );
        }
    }
}

#[test]
fn mbr_with_logical_partition_matches_sources() {
    // Primary 1 at 1 MiB, extended from 50 MiB, logical 5 at 51 MiB and
    // logical 6 at 100 MiB.
    partitioned(
        "dos",
        "start=2048, size=81920, type=83\nstart=102400, size=307200, type=5\nstart=104448, size=81920, type=83\nstart=204800, size=81920, type=83\n",
        &[(1, 1), (5, 51), (6, 100)],
    );
}

#[test]
fn gpt_matches_sources() {
    partitioned(
        "gpt",
        "start=2048, size=81920\nstart=104448, size=90000\n",
        &[(1, 1), (2, 51)],
    );
}

/// Runs `cmd` with `input` on its stdin; it must succeed.
fn run_with_input(cmd: &mut Command, input: &str) {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
}

/// Runs a debugfs command script read-write against `img`.
fn debugfs_script(img: &Path, script: &str) {
    run_with_input(
        Command::new("debugfs").args(["-w", "-f", "-"]).arg(img),
        script,
    );
}

/// A 64bit file system larger than 16 TiB (a sparse image on tmpfs: the
/// host's ext4 cannot hold a 17 TiB file) with a file whose data lies past
/// block 2^32. debugfs writes the file, then its extent is moved there with
/// debugfs's extent editor, and e2fsck confirms the image is consistent.
#[test]
fn ext4_64bit_over_16tib_with_data_past_block_2_pow_32() {
    let dir = tempfile::Builder::new()
        .prefix("gammaray-big")
        .tempdir_in("/dev/shm")
        .expect("/dev/shm is needed for a sparse 17 TiB image");
    let src = dir.path().join("src");
    make_tree(&src, PLAIN);
    let img = dir.path().join("big.img");
    fs::File::create(&img).unwrap().set_len(17 << 40).unwrap();
    run(Command::new("mkfs.ext4")
        .args([
            "-F", "-q", "-O", "64bit", "-b", "4096", "-N", "200000", "-d",
        ])
        .arg(&src)
        .arg(&img));
    let data = bytes(77, 100_000);
    let data_path = dir.path().join("high.bin");
    fs::write(&data_path, &data).unwrap();
    let blocks = data.len().div_ceil(4096) as u64;
    let high: u64 = (1 << 32) + 4096;
    place(&img, &data_path, high * 4096);
    let script = format!("mkdir high\nwrite {} high/data.bin\n", data_path.display());
    debugfs_script(&img, &script);
    let stat = run(Command::new("debugfs")
        .args(["-R", "stat high/data.bin"])
        .arg(&img));
    let old: u64 = stat
        .lines()
        .skip_while(|l| !l.starts_with("EXTENTS"))
        .nth(1)
        .and_then(|l| l.split(':').nth(1))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no extent in {stat}"));
    let edit = format!(
        "extent_open high/data.bin\nroot\nreplace_node 0 {blocks} {high}\nextent_close\nfreeb {old} {blocks}\nsetb {high} {blocks}\n"
    );
    debugfs_script(&img, &edit);
    let stat = run(Command::new("debugfs")
        .args(["-R", "stat high/data.bin"])
        .arg(&img));
    assert!(
        stat.contains(&format!("{high}-")),
        "extent not moved: {stat}"
    );
    // debugfs's setb/freeb leave the groups' free counts stale: let e2fsck
    // fix those summaries, then insist that the image is clean.
    let _ = Command::new("e2fsck").arg("-fy").arg(&img).output();
    run(Command::new("e2fsck").arg("-fn").arg(&img));

    let got = crawl_listing(&img, dir.path());
    let file = got
        .iter()
        .find(|v| v["path"] == "/high/data.bin")
        .expect("/high/data.bin listed");
    assert_eq!(file["size"], data.len() as u64);
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&data)));
    // Everything mkfs -d copied must match too.
    let rest: Vec<Value> = got
        .iter()
        .filter(|v| !v["path"].as_str().unwrap().starts_with("/high"))
        .cloned()
        .collect();
    let mut want = expected(&src, 1);
    // The extra top-level directory adds one link to the root.
    if let Some(root) = want.get_mut("/") {
        root["nlink"] = (root["nlink"].as_u64().unwrap() + 1).into();
    }
    compare(&rest, 1, &want);
}
