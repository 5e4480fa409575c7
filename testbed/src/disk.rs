//! Fresh test disks: an unpartitioned raw image holding ext4 or NTFS, with
//! the same small seed tree on both (workloads edit these files).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cache;
use crate::cpio::{Member, Writer};
use crate::error::{Error, IoContext, Result};
use crate::qemu::{Drive, FsKind, Guest, RunSpec};
use crate::tools;

/// Default disk size.
pub const DEFAULT_DISK_MIB: u64 = 64;
/// Modification time of every seed file and directory.
pub const SEED_MTIME: u32 = 1_700_000_000;

/// Seed directories, parents first (paths relative to the root).
pub const SEED_DIRS: [&str; 8] = [
    "etc",
    "var",
    "var/log",
    "home",
    "home/user",
    "home/user/docs",
    "srv",
    "srv/data",
];

/// Seed files: relative path and contents.
pub fn seed_files() -> Vec<(&'static str, Vec<u8>)> {
    let lines = |prefix: &str, n: usize| -> Vec<u8> {
        (0..n)
            .map(|i| format!("{prefix} seed line {i}\n"))
            .collect::<String>()
            .into_bytes()
    };
    // 64 KiB with a pattern that is not all one byte.
    let blob: Vec<u8> = (0..65536u32).map(|i| ((i * 31) % 251) as u8).collect();
    vec![
        ("etc/hostname", b"testbed\n".to_vec()),
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n".to_vec(),
        ),
        ("etc/app.conf", b"key=value\nother=1\n".to_vec()),
        ("var/log/app.log", lines("app", 10)),
        ("var/log/syslog", lines("syslog", 10)),
        ("home/user/notes.txt", b"first notes\n".to_vec()),
        ("home/user/docs/readme.md", b"# readme\n".to_vec()),
        ("srv/data/blob.bin", blob),
    ]
}

/// The seed tree as a cpio newc archive (for seeding inside the guest).
pub fn seed_archive() -> Vec<u8> {
    let mut w = Writer::new(SEED_MTIME);
    for d in SEED_DIRS {
        w.add(&Member::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    for (p, data) in seed_files() {
        w.add(&Member::File {
            path: p.into(),
            mode: 0o644,
            data,
        });
    }
    w.finish()
}

/// Writes the seed tree into the empty directory `dir` with fixed times.
pub fn write_seed_tree(dir: &Path) -> Result<()> {
    for d in SEED_DIRS {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).ctx("creating", &p)?;
    }
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(SEED_MTIME));
    for (p, data) in seed_files() {
        let p = dir.join(p);
        std::fs::write(&p, data).ctx("writing", &p)?;
        set_mtime(&p, t)?;
    }
    for d in SEED_DIRS.iter().rev() {
        set_mtime(&dir.join(d), t)?;
    }
    set_mtime(dir, t)
}

fn set_mtime(p: &Path, t: SystemTime) -> Result<()> {
    let f = std::fs::File::open(p).ctx("opening", p)?;
    f.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))
        .ctx("setting times on", p)
}

fn sized_file(path: &Path, mib: u64) -> Result<()> {
    let f = std::fs::File::create(path).ctx("creating", path)?;
    f.set_len(mib << 20).ctx("sizing", path)
}

/// Creates a fresh image at `path` with file system `fs` and the seed tree.
/// ext4 is seeded by `mkfs.ext4 -d`; NTFS by a guest boot that unpacks the
/// seed archive onto a fresh `mkntfs` image, done once and cached.
pub fn make_base_image(fs: FsKind, path: &Path, mib: u64) -> Result<()> {
    make_base_image_with(fs, path, mib, &[])
}

/// Like [`make_base_image`], with more `mkfs.ext4` arguments after the
/// standard ones (for example `-J size=4` for the smallest journal mke2fs
/// makes with 4 KiB blocks: 1024 blocks). ext4 only: extra arguments for
/// NTFS are an error.
pub fn make_base_image_with(fs: FsKind, path: &Path, mib: u64, mkfs_args: &[String]) -> Result<()> {
    match fs {
        FsKind::Ext4 => make_ext4(path, mib, mkfs_args),
        FsKind::Ntfs if !mkfs_args.is_empty() => Err(Error::Guest {
            message: format!("extra mkfs arguments {mkfs_args:?} are for ext4 only"),
            serial: PathBuf::new(),
        }),
        FsKind::Ntfs => {
            let key = cache::digest(&[
                &seed_archive(),
                &mib.to_le_bytes(),
                crate::initramfs::INIT_SCRIPT.as_bytes(),
                NTFS_SEED_SCRIPT.as_bytes(),
            ]);
            let dir = cache::cached_dir(&format!("ntfs-base-{key}"), |d| seed_ntfs(d, mib))?;
            std::fs::copy(dir.join("base.img"), path).ctx("copying cached NTFS base to", path)?;
            Ok(())
        }
    }
}

fn make_ext4(path: &Path, mib: u64, extra: &[String]) -> Result<()> {
    let seed = path.with_extension("seed.d");
    let _ = std::fs::remove_dir_all(&seed);
    std::fs::create_dir_all(&seed).ctx("creating", &seed)?;
    write_seed_tree(&seed)?;
    sized_file(path, mib)?;
    let r = tools::run(
        tools::tool("mkfs.ext4")?
            .args([
                "-F",
                "-q",
                "-b",
                "4096",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
            ])
            .args(extra)
            .arg("-d")
            .arg(&seed)
            .arg(path),
    );
    let _ = std::fs::remove_dir_all(&seed);
    r.map(|_| ())
}

/// Unpacks the seed archive in the guest (`cpio` as root; ntfs3 ignores
/// ownership, so its errors are tolerated).
const NTFS_SEED_SCRIPT: &str =
    "cpio -idm < /sys/firmware/qemu_fw_cfg/by_name/opt/gr/seed/raw 2>/dev/null || true\n\
[ -f \"$R/srv/data/blob.bin\" ]\n";

fn seed_ntfs(dir: &Path, mib: u64) -> Result<()> {
    let img = dir.join("base.img");
    sized_file(&img, mib)?;
    tools::run(tools::tool("mkntfs")?.args(["-F", "-Q", "-q"]).arg(&img))?;
    let archive = dir.join("seed.cpio");
    std::fs::write(&archive, seed_archive()).ctx("writing", &archive)?;
    let work: PathBuf = dir.join("seed-run");
    let guest = Guest::new()?;
    let mut spec = RunSpec::new(
        &work,
        NTFS_SEED_SCRIPT,
        FsKind::Ntfs,
        Drive::Raw(img.clone()),
    );
    spec.fw_cfg.push(("seed".into(), archive.clone()));
    let out = guest.run(&spec)?;
    let have = out
        .truth
        .listing
        .iter()
        .filter(|e| e.kind == "file")
        .count();
    if have < seed_files().len() {
        return Err(Error::Guest {
            message: format!("NTFS seeding left {have} files"),
            serial: out.serial,
        });
    }
    let _ = std::fs::remove_file(&archive);
    Ok(())
}
