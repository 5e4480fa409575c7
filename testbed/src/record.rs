//! Recording a workload: a fresh disk, a guest run behind QEMU's
//! `blklogwrites` driver, and everything a later test needs in one
//! directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::disk;
use crate::error::{IoContext, Result};
use crate::listing;
use crate::pace::Pacer;
use crate::qemu::{Drive, FsKind, Guest, GuestOutput, RunSpec};
use crate::truth::{Snapshot, Truth};
use crate::workload::Workload;

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    /// The workload.
    pub workload: Workload,
    /// The file system.
    pub fs: FsKind,
    /// Output directory (created; existing recording files are replaced).
    pub out: PathBuf,
    /// Disk size in MiB.
    pub disk_mib: u64,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// Run this script instead of the workload's own (the workload then
    /// only names the recording).
    pub script: Option<String>,
}

impl RecordSpec {
    /// A spec with a 64 MiB disk and a 180 s timeout.
    pub fn new(workload: Workload, fs: FsKind, out: impl Into<PathBuf>) -> Self {
        RecordSpec {
            workload,
            fs,
            out: out.into(),
            disk_mib: disk::DEFAULT_DISK_MIB,
            timeout: Duration::from_secs(180),
            script: None,
        }
    }

    /// The script the guest will run.
    pub fn script(&self) -> &str {
        self.script.as_deref().unwrap_or(self.workload.script())
    }
}

/// A finished recording. Files, all in [`Recording::dir`]:
/// `base.img` (the disk before), `final.img` (after), `trace.log`
/// (dm-log-writes, 512-byte log sectors), `truth.jsonl` (the guest's state
/// listing), `ops.txt` (one `OP ...` line per operation), `serial.log`, and
/// `truth.LABEL.jsonl` for each `gr_snapshot LABEL` the workload took
/// (indexed in `snapshots.txt`: label, operations before it, trace entries
/// before it).
#[derive(Debug, Clone)]
pub struct Recording {
    /// The output directory.
    pub dir: PathBuf,
    /// The disk before the run.
    pub base: PathBuf,
    /// The disk after the run.
    pub final_img: PathBuf,
    /// The trace.
    pub trace: PathBuf,
    /// The ground-truth listing file.
    pub truth_path: PathBuf,
    /// The operations file.
    pub ops_path: PathBuf,
    /// The serial log.
    pub serial: PathBuf,
    /// Parsed ground truth.
    pub truth: Truth,
    /// Time spent preparing the disk.
    pub prepare_time: Duration,
    /// Time QEMU ran.
    pub guest_time: Duration,
}

impl Recording {
    /// Loads a recording left in `dir` by [`record`] (or
    /// `gammaray-testbed record`).
    pub fn load(dir: &Path) -> Result<Recording> {
        let truth_path = dir.join("truth.jsonl");
        let ops_path = dir.join("ops.txt");
        let listing = listing::read(&truth_path)?;
        let ops: Vec<String> = std::fs::read_to_string(&ops_path)
            .ctx("reading", &ops_path)?
            .lines()
            .map(str::to_string)
            .collect();
        let mut snapshots = Vec::new();
        let index_path = dir.join("snapshots.txt");
        let index = std::fs::read_to_string(&index_path).unwrap_or_default();
        for l in index.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let [label, after, n] = f[..] else {
                return Err(crate::Error::Truth {
                    line: 0,
                    message: "snapshots.txt line needs 3 fields",
                    text: l.to_string(),
                });
            };
            let p = dir.join(format!("truth.{label}.jsonl"));
            snapshots.push(Snapshot {
                label: label.to_string(),
                after_ops: after.parse().unwrap_or(0),
                listing: listing::read(&p)?,
                trace_entries: n.parse().ok(),
            });
        }
        Ok(Recording {
            dir: dir.to_path_buf(),
            base: dir.join("base.img"),
            final_img: dir.join("final.img"),
            trace: dir.join("trace.log"),
            truth_path,
            ops_path,
            serial: dir.join("serial.log"),
            truth: Truth {
                ops,
                listing,
                snapshots,
                paced: Vec::new(),
            },
            prepare_time: Duration::ZERO,
            guest_time: Duration::ZERO,
        })
    }
}

/// (snapshot label, trace entries when the guest paused for it).
type SnapshotMarks = Vec<(String, Option<u64>)>;

/// Records `spec.workload` on `spec.fs` into `spec.out`.
pub fn record(spec: &RecordSpec) -> Result<Recording> {
    let guest = Guest::new()?;
    record_with(&guest, spec)
}

/// Like [`record`], with a guest already set up.
pub fn record_with(guest: &Guest, spec: &RecordSpec) -> Result<Recording> {
    let dir = &spec.out;
    let Prepared {
        base,
        final_img,
        trace,
        prepare_time,
    } = prepare(spec)?;
    std::fs::File::create(&trace).ctx("creating", &trace)?;

    let mut run = RunSpec::new(
        dir,
        spec.script(),
        spec.fs,
        Drive::LogWrites {
            disk: final_img.clone(),
            log: trace.clone(),
        },
    );
    run.timeout = spec.timeout;
    // Pacing, so that each gr_snapshot can note how far the trace has got.
    let pace = dir.join("pace.sock");
    let pacer = Pacer::listen(&pace)?;
    run.pace = Some(pace.clone());
    let marks: Arc<Mutex<SnapshotMarks>> = Arc::default();
    let seen = Arc::clone(&marks);
    let trace_path = trace.clone();
    let running = guest.spawn(&run)?;
    let server = pacer.serve(move |name| {
        if let Some(label) = name.strip_prefix("snap-") {
            let n = crate::trace::count_entries(&trace_path, 512).ok();
            if let Ok(mut v) = seen.lock() {
                v.push((label.to_string(), n));
            }
        }
    });
    let mut out = running.wait()?;
    let _ = server.join();
    let _ = std::fs::remove_file(&pace);
    let marks = marks.lock().map(|v| v.clone()).unwrap_or_default();
    for s in &mut out.truth.snapshots {
        s.trace_entries = marks
            .iter()
            .find(|(l, _)| *l == s.label)
            .and_then(|(_, n)| *n);
    }
    tracing::info!(
        workload = %spec.workload,
        fs = spec.fs.name(),
        seconds = out.elapsed.as_secs_f64(),
        ops = out.truth.ops.len(),
        names = out.truth.listing.len(),
        "recorded"
    );
    finish(dir, base, final_img, trace, out, prepare_time)
}

/// The files of a run about to start, and how long making them took.
pub(crate) struct Prepared {
    pub(crate) base: PathBuf,
    pub(crate) final_img: PathBuf,
    pub(crate) trace: PathBuf,
    pub(crate) prepare_time: Duration,
}

/// Creates `spec.out`, removes a previous run's files, makes a fresh
/// `base.img` and copies it to `final.img` (the disk the guest will use).
pub(crate) fn prepare(spec: &RecordSpec) -> Result<Prepared> {
    let dir = &spec.out;
    std::fs::create_dir_all(dir).ctx("creating", dir)?;
    let t0 = Instant::now();
    let base = dir.join("base.img");
    let final_img = dir.join("final.img");
    let trace = dir.join("trace.log");
    for f in [&base, &final_img, &trace] {
        let _ = std::fs::remove_file(f);
    }
    disk::make_base_image(spec.fs, &base, spec.disk_mib)?;
    std::fs::copy(&base, &final_img).ctx("copying base image to", &final_img)?;
    Ok(Prepared {
        base,
        final_img,
        trace,
        prepare_time: t0.elapsed(),
    })
}

/// Writes the run's ground truth into `dir` and assembles its
/// [`Recording`].
pub(crate) fn finish(
    dir: &Path,
    base: PathBuf,
    final_img: PathBuf,
    trace: PathBuf,
    out: GuestOutput,
    prepare_time: Duration,
) -> Result<Recording> {
    write_truth(dir, &out.truth)?;
    Ok(Recording {
        dir: dir.to_path_buf(),
        base,
        final_img,
        trace,
        truth_path: dir.join("truth.jsonl"),
        ops_path: dir.join("ops.txt"),
        serial: out.serial,
        truth: out.truth,
        prepare_time,
        guest_time: out.elapsed,
    })
}

/// Writes `truth.jsonl`, `ops.txt` and one `truth.LABEL.jsonl` per
/// snapshot into `dir`.
pub fn write_truth(dir: &Path, truth: &Truth) -> Result<()> {
    listing::write(&dir.join("truth.jsonl"), &truth.listing)?;
    let mut index = String::new();
    for s in &truth.snapshots {
        listing::write(&dir.join(format!("truth.{}.jsonl", s.label)), &s.listing)?;
        let n = s
            .trace_entries
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        index.push_str(&format!("{} {} {n}\n", s.label, s.after_ops));
    }
    let p = dir.join("snapshots.txt");
    std::fs::write(&p, index).ctx("writing", &p)?;
    let ops: String = truth.ops.iter().map(|o| format!("{o}\n")).collect();
    let p = dir.join("ops.txt");
    std::fs::write(&p, ops).ctx("writing", &p)
}
