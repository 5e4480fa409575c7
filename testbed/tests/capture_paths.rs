//! For every workload on ext4 and NTFS and every capture path of
//! `gammaray capture` (served disk, live blklogwrites, live mirror): the
//! base image plus the trace gammaray captured, applied by the testbed's
//! own applier (not gammaray's), equals the disk that run left behind,
//! byte for byte. The `gammaray` binary comes from `$GAMMARAY_BIN` or is
//! built with `cargo build -p gammaray`.

use gammaray_testbed::{
    guest_available, record_capture, trace, CapturePath, FsKind, Guest, RecordSpec, Workload,
};

fn run_case(w: Workload, fs: FsKind, path: CapturePath) {
    let name = format!("{}_{}_{}", w.name(), fs.name(), path.name());
    if !guest_available(&name) {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("gr-cap-{name}-"))
        .tempdir()
        .expect("temp dir");
    let result = (|| -> Result<String, String> {
        let guest = Guest::new().map_err(|e| e.to_string())?;
        let spec = RecordSpec::new(w, fs, dir.path().join("rec"));
        let rec = record_capture(&guest, &spec, path).map_err(|e| e.to_string())?;
        let replayed = dir.path().join("replayed.img");
        let st = trace::replay_to(&rec.base, &rec.trace, &replayed).map_err(|e| e.to_string())?;
        if st.writes == 0 {
            return Err(format!("no writes captured: {st:?}"));
        }
        if path != CapturePath::AttachMirror && st.flushes == 0 {
            return Err(format!("no flushes captured: {st:?}"));
        }
        if let Some(at) =
            trace::first_difference(&replayed, &rec.final_img).map_err(|e| e.to_string())?
        {
            return Err(format!(
                "base + captured trace differs from the final disk at byte {at} ({st:?})"
            ));
        }
        if rec.truth.listing.is_empty() || rec.truth.ops.is_empty() {
            return Err("no ground truth".into());
        }
        Ok(format!(
            "guest {:.1}s, {st:?}",
            rec.guest_time.as_secs_f64()
        ))
    })();
    match result {
        Ok(msg) => eprintln!("{name}: {msg}"),
        Err(msg) => {
            let kept = dir.keep();
            panic!("{name}: {msg}\n(run kept in {})", kept.display());
        }
    }
}

macro_rules! cases {
    ($($name:ident: $w:ident, $fs:ident, $path:ident;)*) => {$(
        #[test]
        fn $name() {
            run_case(Workload::$w, FsKind::$fs, CapturePath::$path);
        }
    )*};
}

cases! {
    logs_ext4_serve: Logs, Ext4, Serve;
    logs_ext4_blklogwrites: Logs, Ext4, AttachBlklogwrites;
    logs_ext4_mirror: Logs, Ext4, AttachMirror;
    logs_ntfs_serve: Logs, Ntfs, Serve;
    logs_ntfs_blklogwrites: Logs, Ntfs, AttachBlklogwrites;
    logs_ntfs_mirror: Logs, Ntfs, AttachMirror;
    tree_ext4_serve: Tree, Ext4, Serve;
    tree_ext4_blklogwrites: Tree, Ext4, AttachBlklogwrites;
    tree_ext4_mirror: Tree, Ext4, AttachMirror;
    tree_ntfs_serve: Tree, Ntfs, Serve;
    tree_ntfs_blklogwrites: Tree, Ntfs, AttachBlklogwrites;
    tree_ntfs_mirror: Tree, Ntfs, AttachMirror;
    attrs_ext4_serve: Attrs, Ext4, Serve;
    attrs_ext4_blklogwrites: Attrs, Ext4, AttachBlklogwrites;
    attrs_ext4_mirror: Attrs, Ext4, AttachMirror;
    attrs_ntfs_serve: Attrs, Ntfs, Serve;
    attrs_ntfs_blklogwrites: Attrs, Ntfs, AttachBlklogwrites;
    attrs_ntfs_mirror: Attrs, Ntfs, AttachMirror;
    bigdir_ext4_serve: Bigdir, Ext4, Serve;
    bigdir_ext4_blklogwrites: Bigdir, Ext4, AttachBlklogwrites;
    bigdir_ext4_mirror: Bigdir, Ext4, AttachMirror;
    bigdir_ntfs_serve: Bigdir, Ntfs, Serve;
    bigdir_ntfs_blklogwrites: Bigdir, Ntfs, AttachBlklogwrites;
    bigdir_ntfs_mirror: Bigdir, Ntfs, AttachMirror;
    edits_ext4_serve: Edits, Ext4, Serve;
    edits_ext4_blklogwrites: Edits, Ext4, AttachBlklogwrites;
    edits_ext4_mirror: Edits, Ext4, AttachMirror;
    edits_ntfs_serve: Edits, Ntfs, Serve;
    edits_ntfs_blklogwrites: Edits, Ntfs, AttachBlklogwrites;
    edits_ntfs_mirror: Edits, Ntfs, AttachMirror;
    nosync_ext4_serve: Nosync, Ext4, Serve;
    nosync_ext4_blklogwrites: Nosync, Ext4, AttachBlklogwrites;
    nosync_ext4_mirror: Nosync, Ext4, AttachMirror;
    nosync_ntfs_serve: Nosync, Ntfs, Serve;
    nosync_ntfs_blklogwrites: Nosync, Ntfs, AttachBlklogwrites;
    nosync_ntfs_mirror: Nosync, Ntfs, AttachMirror;
}
