//! Helpers shared by the image tests: build a source tree, make an image
//! of it with e2fsprogs, crawl it, and compare the model with the tree.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use gammaray_core::FileSystem;
use gammaray_core::{BlockDevice, Crawl, FileDevice, FileType, FsModel, NoProgress, Owner};
use gammaray_ext4::Ext4;

/// Deterministic bytes (xorshift) so contents differ from block to block.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a command, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Output of a command (stdout), panicking on failure.
pub fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A varied tree: sizes around block and inline boundaries, a sparse file,
/// short and long symlinks, hard links, nested dirs, odd modes and owners,
/// a FIFO, and names with odd bytes.
pub fn build_tree(root: &Path) {
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    };
    for (i, size) in [
        0usize,
        1,
        59,
        60,
        61,
        100,
        1023,
        1024,
        1025,
        4095,
        4096,
        4097,
        12 * 4096 + 7,
        300_000,
    ]
    .into_iter()
    .enumerate()
    {
        w(&format!("sizes/f{size}"), &pattern(i as u64 + 1, size));
    }
    w("a/b/c/d/e/deep.txt", b"deep\n");

    w("names/with space", b"x");
    w("names/caf\u{e9}", b"y");
    w(&format!("names/{}", "n".repeat(255)), b"long name");
    // Sparse: a hole, then data far out.
    let sparse = root.join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&sparse).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&pattern(99, 5000)).unwrap();
    }
    std::os::unix::fs::symlink("sizes/f1", root.join("short-link")).unwrap();
    std::os::unix::fs::symlink("t".repeat(59), root.join("link59")).unwrap();
    std::os::unix::fs::symlink("t".repeat(60), root.join("link60")).unwrap();
    let long = format!("/{}", "long/".repeat(150));
    std::os::unix::fs::symlink(&long, root.join("long-link")).unwrap();
    std::os::unix::fs::symlink("dangling/nowhere", root.join("a/dangling")).unwrap();
    fs::hard_link(root.join("sizes/f4096"), root.join("a/hard1")).unwrap();
    fs::hard_link(root.join("sizes/f4096"), root.join("a/b/hard2")).unwrap();
    run(Command::new("mkfifo").arg(root.join("a/fifo")));
    for (p, mode) in [
        ("sizes/f1", 0o4755),
        ("sizes/f59", 0o600),
        ("a/b", 0o1777),
        ("names/caf\u{e9}", 0o2640),
    ] {
        fs::set_permissions(root.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    let chown = |p: &str, uid: u32, gid: u32| {
        std::os::unix::fs::lchown(root.join(p), Some(uid), Some(gid)).unwrap();
    };
    chown("sizes/f100", 1000, 2000);
    chown("sizes/f61", 70_000, 80_000);
    chown("short-link", 1234, 5678);
    // An xattr too big for the inode body: mkfs puts it in an xattr block.
    run(Command::new("python3").arg("-c").arg(format!(
        "import os; os.setxattr({:?}, 'user.big', b'v' * 600)",
        root.join("sizes/f100").display().to_string()
    )));
    // Fixed mtimes, one with nanoseconds and one before 1970.
    let touch = |p: &str, t: &str| {
        run(Command::new("touch")
            .args(["-h", "-d", t])
            .arg(root.join(p)))
    };
    touch("sizes/f0", "2001-02-03 04:05:06.123456789 UTC");
    touch("sizes/f1", "1969-07-20 20:17:40 UTC");
}

/// A directory with `n` entries (large enough for an htree).
pub fn big_dir(root: &Path, n: usize) {
    let d = root.join("many");
    fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        fs::write(d.join(format!("entry-{i:06}-with-a-longer-name")), []).unwrap();
    }
}

/// `mkfs.<kind> -F -q -d src <extra> image size`.
pub fn mkfs(kind: &str, extra: &[&str], src: &Path, image: &Path, size: &str) {
    run(Command::new(format!("mkfs.{kind}"))
        .args(["-F", "-q"])
        .args(extra)
        .arg("-d")
        .arg(src)
        .arg(image)
        .arg(size));
}

/// e2fsck must find the image clean (our ground truth is only as good as
/// the image).
pub fn fsck_clean(image: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(image));
}

pub fn crawl(image: &Path) -> Crawl {
    let dev = FileDevice::open(image).unwrap();
    assert!(Ext4.probe(&dev));
    Ext4.crawl(&dev, &NoProgress).unwrap()
}

/// Every path in the model, from the root (`/` itself excluded), with its
/// file id. Stops at depth 64 in case of a cyclic tree.
pub fn paths(m: &FsModel) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(PathBuf::from("/"), m.root, 0usize)];
    while let Some((p, dir, depth)) = stack.pop() {
        assert!(depth < 64, "tree too deep at {p:?}");
        for e in m.tree.entries(dir) {
            use std::os::unix::ffi::OsStrExt;
            let child = p.join(std::ffi::OsStr::from_bytes(&e.name));
            assert!(
                out.insert(child.clone(), e.child).is_none(),
                "duplicate {child:?}"
            );
            if m.files.get(&e.child).map(|f| f.ftype) == Some(FileType::Dir) {
                stack.push((child, e.child, depth + 1));
            }
        }
    }
    out
}

/// A file's contents read through the block map (and inline data).
pub struct Reader {
    runs: HashMap<u64, Vec<(u64, u64, u64, bool)>>,
}

impl Reader {
    pub fn new(m: &FsModel) -> Self {
        let mut runs: HashMap<u64, Vec<(u64, u64, u64, bool)>> = HashMap::new();
        for r in m.blocks.runs() {
            match r.owner {
                Owner::FileData { file, logical } => runs
                    .entry(file)
                    .or_default()
                    .push((logical, r.start, r.len, false)),
                Owner::Unwritten { file, logical } => runs
                    .entry(file)
                    .or_default()
                    .push((logical, r.start, r.len, true)),
                _ => {}
            }
        }
        Reader { runs }
    }

    pub fn read(&self, m: &FsModel, dev: &dyn BlockDevice, id: u64) -> Vec<u8> {
        let f = &m.files[&id];
        if let Some(d) = m.inline.get(&id) {
            return d.clone();
        }
        let bs = u64::from(m.block_size);
        let mut data = vec![0u8; f.size as usize];
        for &(logical, start, len, unwritten) in
            self.runs.get(&id).map(Vec::as_slice).unwrap_or(&[])
        {
            if unwritten {
                continue;
            }
            for k in 0..len {
                let pos = (logical + k) * bs;
                if pos >= f.size {
                    break;
                }
                let n = bs.min(f.size - pos) as usize;
                let mut buf = vec![0u8; n];
                dev.read_at((start + k) * bs, &mut buf).unwrap();
                data[pos as usize..pos as usize + n].copy_from_slice(&buf);
            }
        }
        data
    }
}

fn ftype_of(md: &fs::Metadata) -> FileType {
    FileType::from_unix_mode(md.mode()).unwrap()
}

/// Compares the crawl of `image` with the tree `src`: every path exists
/// with the same type, permission bits, owner, size, link count, mtime
/// (nanoseconds when `nsec`), symlink target and contents.
pub fn compare(image: &Path, crawl: &Crawl, src: &Path, nsec: bool) {
    let m = &crawl.model;
    let dev = FileDevice::open(image).unwrap();
    let got = paths(m);
    let mut want: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = Path::new("/").join(p.strip_prefix(src).unwrap());
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            want.insert(rel, p);
        }
    }
    let got_names: Vec<_> = got
        .keys()
        .filter(|p| !p.starts_with("/lost+found"))
        .cloned()
        .collect();
    let want_names: Vec<_> = want.keys().cloned().collect();
    assert_eq!(got_names, want_names, "names differ");
    let reader = Reader::new(m);
    for (rel, host) in &want {
        let md = fs::symlink_metadata(host).unwrap();
        let id = got[rel];
        let f = m
            .files
            .get(&id)
            .unwrap_or_else(|| panic!("{rel:?}: inode {id} not in files"));
        let ft = ftype_of(&md);
        assert_eq!(f.ftype, ft, "{rel:?} type");
        assert_eq!(u32::from(f.mode), md.mode() & 0o7777, "{rel:?} mode");
        assert_eq!((f.uid, f.gid), (md.uid(), md.gid()), "{rel:?} owner");
        assert_eq!({ f.mtime.sec }, md.mtime(), "{rel:?} mtime");
        if nsec {
            assert_eq!(i64::from(f.mtime.nsec), md.mtime_nsec(), "{rel:?} mtime ns");
        }
        if ft != FileType::Dir {
            assert_eq!(u64::from(f.nlink), md.nlink(), "{rel:?} nlink");
            assert_eq!(f.size, md.size(), "{rel:?} size");
        }
        match ft {
            FileType::File => {
                let data = reader.read(m, &dev, id);
                assert!(data == fs::read(host).unwrap(), "{rel:?} contents differ");
            }
            FileType::Symlink => {
                use std::os::unix::ffi::OsStrExt;
                let t = fs::read_link(host).unwrap();
                assert_eq!(
                    f.target.as_deref(),
                    Some(t.as_os_str().as_bytes()),
                    "{rel:?} target"
                );
            }
            _ => {}
        }
    }
}

/// Byte offset of the inode of `path` in `image` (from `debugfs imap`).
pub fn inode_offset(image: &Path, path: &str) -> u64 {
    let out = output(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("imap {path}"))
            .arg(image),
    );
    let block: u64 = out
        .split("located at block ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("imap output: {out}"));
    let off = out
        .split("offset 0x")
        .nth(1)
        .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
        .unwrap_or_else(|| panic!("imap output: {out}"));
    let dev = FileDevice::open(image).unwrap();
    let mut sb = [0u8; 1024];
    dev.read_at(1024, &mut sb).unwrap();
    let bs = 1024u64 << u32::from_le_bytes(sb[0x18..0x1C].try_into().unwrap());
    block * bs + off
}

/// Overwrites bytes of `image` at `offset`.
pub fn patch(image: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(image).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// A small source tree for corruption tests.
pub fn small_tree(root: &Path) {
    fs::create_dir_all(root.join("dir")).unwrap();
    for i in 0..40 {
        fs::write(root.join(format!("dir/file-{i:03}")), pattern(i, 3000)).unwrap();
    }
    fs::write(root.join("data"), pattern(7, 50_000)).unwrap();
}

/// Builds an image whose file `/frag` is spread over about `holes`
/// extents: many small files are written, every other one deleted with
/// debugfs, then a big file is written into the holes.
pub fn fragmented_image(dir: &std::path::Path, holes: usize) -> (std::path::PathBuf, Vec<u8>) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..holes * 2 {
        std::fs::write(src.join(format!("small/{i}")), pattern(i as u64, 4096)).unwrap();
    }
    let image = dir.join("frag.img");
    mkfs("ext4", &["-O", "^has_journal"], &src, &image, "64M");
    let cmds = dir.join("cmds");
    let mut script = String::new();
    for i in (0..holes * 2).step_by(2) {
        script.push_str(&format!("rm /small/{i}\n"));
    }
    let big = pattern(4242, holes * 4096);
    let big_path = dir.join("big");
    std::fs::write(&big_path, &big).unwrap();
    script.push_str(&format!("write {} frag\n", big_path.display()));
    std::fs::write(&cmds, script).unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(&image));
    fsck_clean(&image);
    (image, big)
}

/// A hostile-input case must finish within this (a debug build; a hang
/// fails it).
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `f` on a thread and fails when it panics or outlives [`DEADLINE`];
/// `what` names the work in the failure ("crawl", "inference").
pub fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish in {DEADLINE:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Whether this machine's debugfs has the journal commands the journal
/// tests drive (`journal_write`, `logdump`; e2fsprogs 1.43 or later).
pub fn debugfs_has_journal_commands() -> bool {
    match Command::new("debugfs")
        .args(["-R", "help", "/dev/null"])
        .output()
    {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
            text.contains("journal_write") && text.contains("logdump")
        }
        Err(_) => false,
    }
}
