//! For every workload on ext4 and NTFS: record a real guest run behind
//! QEMU's blklogwrites driver, then check three things against sources
//! that are not gammaray:
//! 1. base.img + trace.log (applied by the testbed's own applier) equals
//!    the disk QEMU left behind, byte for byte;
//! 2. the guest's ground-truth listing shows what the workload script did;
//! 3. booting the final disk again gives the same listing (the truth
//!    describes what is on disk, not just the kernel's caches);
//! 4. for `logs`, the base image plus the trace up to its mid-workload
//!    snapshot, booted, lists exactly that snapshot.

use std::path::Path;

use gammaray_testbed::{
    guest_available, record_with, trace, Drive, FsKind, Guest, ListingEntry, RecordSpec, Recording,
    RunSpec, Workload,
};

fn find<'a>(l: &'a [ListingEntry], path: &str) -> Option<&'a ListingEntry> {
    l.iter().find(|e| e.path == path)
}

/// Workload-specific facts, straight from the scripts.
fn check_truth(w: Workload, fs: FsKind, l: &[ListingEntry]) -> Result<(), String> {
    let need = |p: &str| find(l, p).ok_or_else(|| format!("{p} missing from the listing"));
    let gone = |p: &str| match find(l, p) {
        Some(_) => Err(format!("{p} should be gone")),
        None => Ok(()),
    };
    let root = need("/")?;
    if root.kind != "dir" {
        return Err("root is not a directory".into());
    }
    if fs == FsKind::Ext4 {
        need("/lost+found")?;
    }
    match w {
        Workload::Logs => {
            need("/var/log/app.log.1")?;
            gone("/var/log/app.log.2")?;
            let s = need("/var/log/syslog")?;
            let s1 = need("/var/log/syslog.1")?;
            if s.size >= s1.size {
                return Err("syslog should be smaller than syslog.1 after copy-truncate".into());
            }
            need("/var/log/nginx/access.log")?;
        }
        Workload::Tree => {
            need("/proj/README.txt")?;
            need("/proj/src/helpers.c")?;
            need("/proj/name with spaces.txt")?;
            need("/proj/caf\u{e9}.txt")?;
            need("/deep/b/c/d/leaf.txt")?;
            need("/proj/notes.txt")?;
            gone("/archive")?;
            gone("/proj/src/main.c")?;
            gone("/home/user/docs")?;
            if fs == FsKind::Ext4 {
                need("/proj/quote\"back\\slash|pipe.txt")?;
            }
        }
        Workload::Attrs => {
            let h = need("/attrs/hardlink.txt")?;
            let t = need("/attrs/shared/third-link.txt")?;
            if h.nlink != 2 || t.sha256 != h.sha256 || h.uid != 1000 {
                return Err(format!("hard links wrong: {h:?} {t:?}"));
            }
            let p = need("/attrs/prog")?;
            if p.mode != 0o4755 || p.gid != 100 || p.mtime != 1_000_000_000 {
                return Err(format!("prog attributes wrong: {p:?}"));
            }
            if need("/attrs/shared")?.mode != 0o1777 {
                return Err("sticky bit lost".into());
            }
            if need("/attrs/rel-link")?.target.as_deref() != Some("plain.txt") {
                return Err("rel-link target wrong".into());
            }
            if need("/attrs/fifo")?.kind != "fifo" || need("/attrs/null")?.kind != "chardev" {
                return Err("special files wrong".into());
            }
            gone("/attrs/plain.txt")?;
        }
        Workload::Bigdir => {
            let n = l.iter().filter(|e| e.path.starts_with("/big/")).count();
            // 3000 created, 1000 deleted, then /big/sub added.
            if n != 2001 {
                return Err(format!("/big holds {n} names, expected 2001"));
            }
            need("/big/sub/last")?;
            need("/big/renamed-with-a-longer-name-1")?;
            gone("/big/entry-0")?;
        }
        Workload::Edits => {
            let b = need("/srv/data/blob.bin")?;
            if b.size != 200_000 {
                return Err(format!("blob.bin size {}", b.size));
            }
            if need("/srv/data/big.bin")?.size != 4096 {
                return Err("big.bin not truncated".into());
            }
            gone("/home/user/notes.txt~")?;
            gone("/etc/.app.conf.tmp")?;
        }
        Workload::Nosync => {
            need("/scratch/kept")?;
            gone("/scratch/tmp-0")?;
            gone("/scratch/d")?;
            if need("/scratch/blob")?.size != 1000 {
                return Err("blob not truncated".into());
            }
        }
    }
    Ok(())
}

fn run_case(w: Workload, fs: FsKind) {
    let name = format!("{}_{}", w.name(), fs.name());
    if !guest_available(&name) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("gr-testbed-{name}-"))
        .tempdir()
        .expect("temp dir");
    match check(w, fs, dir.path()) {
        Ok(()) => {}
        Err(msg) => {
            let kept = dir.keep();
            panic!("{name}: {msg}\n(recording kept in {})", kept.display());
        }
    }
}

fn check(w: Workload, fs: FsKind, dir: &Path) -> Result<(), String> {
    let guest = Guest::new().map_err(|e| e.to_string())?;
    let rec = record_with(&guest, &RecordSpec::new(w, fs, dir.join("rec")))
        .map_err(|e| format!("recording: {e}"))?;
    eprintln!(
        "{} on {}: guest {:.1}s, {} ops, {} names",
        w.name(),
        fs.name(),
        rec.guest_time.as_secs_f64(),
        rec.truth.ops.len(),
        rec.truth.listing.len()
    );

    // 1. replay equals the final disk
    let replayed = dir.join("replayed.img");
    let st = trace::replay_to(&rec.base, &rec.trace, &replayed).map_err(|e| e.to_string())?;
    if st.writes == 0 || st.flushes == 0 {
        return Err(format!("implausible trace: {st:?}"));
    }
    if let Some(at) =
        trace::first_difference(&replayed, &rec.final_img).map_err(|e| e.to_string())?
    {
        return Err(format!(
            "base + trace differs from final.img at byte {at} ({st:?})"
        ));
    }
    let _ = std::fs::remove_file(&replayed);

    // the final disk is consistent by the file system's own checker
    if fs == FsKind::Ext4 {
        let e2fsck = gammaray_testbed::find_tool("e2fsck").ok_or("e2fsck not installed")?;
        let out = std::process::Command::new(e2fsck)
            .args(["-f", "-n"])
            .arg(&rec.final_img)
            .output()
            .map_err(|e| format!("e2fsck: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "e2fsck -fn final.img: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    // 2. the truth shows what the script did
    if rec.truth.ops.is_empty() {
        return Err("no OP lines".into());
    }
    for op in &rec.truth.ops {
        gammaray_testbed::truth::split_op(op).ok_or_else(|| format!("bad OP line {op:?}"))?;
    }
    if w == Workload::Tree {
        let want = (
            "write".to_string(),
            vec!["/proj/name with spaces.txt".to_string(), "7".to_string()],
        );
        if !rec
            .truth
            .ops
            .iter()
            .any(|o| gammaray_testbed::truth::split_op(o).as_ref() == Some(&want))
        {
            return Err("no OP line for the name with spaces".into());
        }
    }
    check_truth(w, fs, &rec.truth.listing)?;
    let loaded = Recording::load(&rec.dir).map_err(|e| e.to_string())?;
    if loaded.truth.listing != rec.truth.listing
        || loaded.truth.ops != rec.truth.ops
        || loaded.truth.snapshots != rec.truth.snapshots
    {
        return Err("truth.jsonl, ops.txt or a snapshot does not round-trip".into());
    }
    if w == Workload::Logs {
        let snap = rec
            .truth
            .snapshots
            .iter()
            .find(|s| s.label == "rotated")
            .ok_or("no snapshot \"rotated\"")?;
        find(&snap.listing, "/var/log/app.log.1").ok_or("snapshot lacks app.log.1")?;
        if find(&snap.listing, "/var/log/nginx").is_some() {
            return Err("snapshot shows a later directory".into());
        }
        let op = &rec.truth.ops[snap.after_ops];
        if op != "OP snapshot rotated" {
            return Err(format!("snapshot position wrong: {op}"));
        }
        // base + the trace up to the snapshot, booted, lists the snapshot
        let n = snap.trace_entries.ok_or("snapshot has no trace position")?;
        let mid = dir.join("mid.img");
        std::fs::copy(&rec.base, &mid).map_err(|e| e.to_string())?;
        trace::apply_first(&rec.trace, &mid, n).map_err(|e| e.to_string())?;
        let out = guest
            .run(&RunSpec::new(
                dir.join("mid"),
                "true\n",
                fs,
                Drive::Raw(mid),
            ))
            .map_err(|e| format!("boot at the snapshot: {e}"))?;
        let diff = gammaray_testbed::listing::diff(&snap.listing, &out.truth.listing);
        if !diff.is_empty() {
            return Err(format!(
                "disk at trace entry {n} differs from the snapshot: {diff:?}"
            ));
        }
    }

    // 3. a second boot on (a copy of) the final disk lists the same
    let again = dir.join("again.img");
    std::fs::copy(&rec.final_img, &again).map_err(|e| e.to_string())?;
    let out = guest
        .run(&RunSpec::new(
            dir.join("again"),
            "true\n",
            fs,
            Drive::Raw(again),
        ))
        .map_err(|e| format!("second boot: {e}"))?;
    let diff = gammaray_testbed::listing::diff(&rec.truth.listing, &out.truth.listing);
    if !diff.is_empty() || out.truth.listing != rec.truth.listing {
        return Err(format!("second boot lists differently: {diff:?}"));
    }
    Ok(())
}

macro_rules! cases {
    ($($name:ident: $w:ident, $fs:ident;)*) => {$(
        #[test]
        fn $name() {
            run_case(Workload::$w, FsKind::$fs);
        }
    )*};
}

cases! {
    logs_ext4: Logs, Ext4;
    logs_ntfs: Logs, Ntfs;
    tree_ext4: Tree, Ext4;
    tree_ntfs: Tree, Ntfs;
    attrs_ext4: Attrs, Ext4;
    attrs_ntfs: Attrs, Ntfs;
    bigdir_ext4: Bigdir, Ext4;
    bigdir_ntfs: Bigdir, Ntfs;
    edits_ext4: Edits, Ext4;
    edits_ntfs: Edits, Ntfs;
    nosync_ext4: Nosync, Ext4;
    nosync_ntfs: Nosync, Ntfs;
}
