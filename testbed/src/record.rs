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
    /// More `mkfs.ext4` arguments for the base image (ext4 only), e.g.
    /// `["-J", "size=4"]` for a small journal.
    pub mkfs_args: Vec<String>,
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
            mkfs_args: Vec::new(),
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
    disk::make_base_image_with(spec.fs, &base, spec.disk_mib, &spec.mkfs_args)?;
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

/// The guest's end of the first boot of [`record_crash`]: a listing of the
/// file system as the kernel sees it (the snapshot [`CRASH_SNAPSHOT`],
/// taken without a `sync`), then an immediate reset with no unmount and no
/// checkpoint (QEMU runs with `-no-reboot`, so the reset ends it).
const CRASH_TAIL: &str =
    "\ngr_listing crash\ngr_op snapshot crash\necho GR-CRASH\necho b > /proc/sysrq-trigger\nsleep 30\n";

/// The label of the snapshot the first boot of [`record_crash`] takes
/// right before it crashes.
pub const CRASH_SNAPSHOT: &str = "crash";

/// A recording of two boots of one disk, the first crashing after its
/// last `sync` (see [`record_crash`]).
#[derive(Debug, Clone)]
pub struct CrashRecording {
    /// The first boot: `base` is `base.img`, `trace` is `trace1.log`,
    /// `final_img` is `crashed.img` (the disk as the crash left it, its
    /// journal not replayed). It has no final listing of its own: its
    /// `truth.listing` is the snapshot [`CRASH_SNAPSHOT`] it took after its
    /// last operation, which is what the journal recovery must give if the
    /// workload made everything durable. Its files are in `boot1/` (`ops.txt`, `truth.jsonl`,
    /// `serial.log`).
    pub first: Recording,
    /// The second boot, an ordinary run on the crashed disk: `base` is
    /// `crashed.img`, `trace` is `trace2.log` (the kernel's journal
    /// recovery, then the workload), `final_img` is `final.img`.
    pub second: Recording,
}

impl CrashRecording {
    /// Loads a recording left in `dir` by [`record_crash`].
    pub fn load(dir: &Path) -> Result<CrashRecording> {
        let mut first = Recording::load(&dir.join("boot1"))?;
        first.base = dir.join("base.img");
        first.trace = dir.join("trace1.log");
        first.final_img = dir.join("crashed.img");
        let mut second = Recording::load(dir)?;
        second.base = dir.join("crashed.img");
        second.trace = dir.join("trace2.log");
        Ok(CrashRecording { first, second })
    }

    /// The traces of both boots, in order (replay them over `first.base`).
    pub fn traces(&self) -> [&Path; 2] {
        [&self.first.trace, &self.second.trace]
    }
}

/// Records two boots of one ext4 disk behind `blklogwrites`, each into its
/// own trace. The first boot runs `first_script`, then lists the file
/// system (no `sync`) and crashes (`echo b > /proc/sysrq-trigger`). The
/// script must make durable itself whatever the listing should hold: note
/// that `sync(2)` (and `syncfs`) also write the block device's dirty
/// buffers, i.e. put the committed metadata home, while `fsync(2)` (busybox
/// `sync FILE`) commits the jbd2 transaction only, leaving the metadata in
/// the journal for the next mount to replay. The second boot mounts the
/// same disk (the kernel replays the journal: home writes of the committed
/// blocks, with no new commit blocks), runs `spec.script()` and finishes
/// normally (sync, listing, unmount). Fails if the crashed disk does not
/// need journal recovery.
///
/// Files in `spec.out`: `base.img`, `trace1.log`, `crashed.img`,
/// `trace2.log`, `final.img`, the second boot's `truth.jsonl`, `ops.txt`,
/// `serial.log`, and the first boot's in `boot1/`.
pub fn record_crash(spec: &RecordSpec, first_script: &str) -> Result<CrashRecording> {
    if spec.fs != FsKind::Ext4 {
        return Err(crate::Error::Guest {
            message: "record_crash supports ext4 only".into(),
            serial: PathBuf::new(),
        });
    }
    let guest = Guest::new()?;
    let dir = &spec.out;
    let Prepared {
        base,
        final_img,
        prepare_time,
        ..
    } = prepare(spec)?;
    let trace1 = dir.join("trace1.log");
    let trace2 = dir.join("trace2.log");
    let crashed = dir.join("crashed.img");
    let boot1 = dir.join("boot1");
    for f in [&trace1, &trace2, &crashed] {
        let _ = std::fs::remove_file(f);
    }
    let _ = std::fs::remove_dir_all(&boot1);

    // First boot: the workload, a sync, a crash.
    std::fs::File::create(&trace1).ctx("creating", &trace1)?;
    let mut run = RunSpec::new(
        &boot1,
        format!("{first_script}{CRASH_TAIL}"),
        spec.fs,
        Drive::LogWrites {
            disk: final_img.clone(),
            log: trace1.clone(),
        },
    );
    run.timeout = spec.timeout;
    let t1 = Instant::now();
    let mut running = guest.spawn(&run)?;
    running.wait_exit()?;
    let guest_time = t1.elapsed();
    let serial1 = running.serial_log().to_path_buf();
    let text = std::fs::read(&serial1).ctx("reading serial log", &serial1)?;
    let with_serial = |e: crate::Error| match e {
        crate::Error::Guest { message, .. } => crate::Error::Guest {
            message,
            serial: serial1.clone(),
        },
        other => other,
    };
    let mut truth1 = crate::truth::parse_crashed_serial(&text).map_err(with_serial)?;
    let snap = truth1
        .snapshots
        .iter()
        .find(|s| s.label == CRASH_SNAPSHOT)
        .ok_or_else(|| crate::Error::Guest {
            message: "the first boot crashed before its crash snapshot".into(),
            serial: serial1.clone(),
        })?;
    truth1.listing = snap.listing.clone();
    write_truth(&boot1, &truth1)?;
    std::fs::copy(&final_img, &crashed).ctx("copying the crashed disk to", &crashed)?;
    if !needs_recovery(&crashed)? {
        return Err(crate::Error::Guest {
            message: "the first boot's crash left a clean journal (no needs_recovery flag)".into(),
            serial: serial1,
        });
    }
    let first = Recording {
        dir: boot1.clone(),
        base,
        final_img: crashed.clone(),
        trace: trace1,
        truth_path: boot1.join("truth.jsonl"),
        ops_path: boot1.join("ops.txt"),
        serial: serial1,
        truth: truth1,
        prepare_time,
        guest_time,
    };

    // Second boot: journal recovery at mount, the workload, a clean end.
    std::fs::File::create(&trace2).ctx("creating", &trace2)?;
    let mut run = RunSpec::new(
        dir,
        spec.script(),
        spec.fs,
        Drive::LogWrites {
            disk: final_img.clone(),
            log: trace2.clone(),
        },
    );
    run.timeout = spec.timeout;
    let out = guest.run(&run)?;
    tracing::info!(
        workload = %spec.workload,
        seconds = out.elapsed.as_secs_f64(),
        ops_first = first.truth.ops.len(),
        ops = out.truth.ops.len(),
        "recorded a crash and a second boot"
    );
    let second = finish(dir, crashed, final_img, trace2, out, Duration::ZERO)?;
    Ok(CrashRecording { first, second })
}

/// Whether the ext4 file system in `img` has the `needs_recovery` feature
/// (`EXT4_FEATURE_INCOMPAT_RECOVER`): its journal holds transactions not
/// yet written home.
pub fn needs_recovery(img: &Path) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(img).ctx("opening", img)?;
    let mut b = [0u8; 4];
    f.seek(SeekFrom::Start(1024 + 0x60))
        .and_then(|_| f.read_exact(&mut b))
        .ctx("reading the ext4 superblock of", img)?;
    Ok(u32::from_le_bytes(b) & 0x4 != 0)
}
