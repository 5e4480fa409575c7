//! `gammaray-testbed`: build the guest, record workloads, replay traces.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use gammaray_testbed::{
    disk, record, trace, write_truth, Drive, FsKind, Guest, RecordSpec, RunSpec, Workload,
};

#[derive(Parser)]
#[command(
    name = "gammaray-testbed",
    about = "Real Linux guests for gammaray's tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or find in the cache) the guest kernel and initramfs.
    Build,
    /// Record a workload: base.img, trace.log, final.img, truth.jsonl, ops.txt.
    Record {
        /// logs, tree, attrs, bigdir, edits or nosync.
        #[arg(long)]
        workload: Workload,
        /// ext4 or ntfs.
        #[arg(long)]
        fs: FsKind,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Disk size in MiB.
        #[arg(long, default_value_t = 64)]
        disk_mib: u64,
        /// Run this busybox ash script (with the `op_*` helpers) instead of
        /// the workload's own; the workload then only names the recording.
        #[arg(long)]
        script: Option<PathBuf>,
        /// Kill QEMU after this many seconds.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Boot the guest once with a script on a fresh (or given) disk and print
    /// the ground truth.
    Run {
        /// A busybox ash script, run in the mounted file system.
        #[arg(long)]
        script: PathBuf,
        /// ext4 or ntfs.
        #[arg(long)]
        fs: FsKind,
        /// Working directory (serial log, disk if none is given).
        #[arg(long)]
        dir: PathBuf,
        /// Use this disk image instead of a fresh one.
        #[arg(long)]
        disk: Option<PathBuf>,
        /// Boot from an NBD server on this unix socket instead of a disk
        /// file (for example `gammaray run --serve DISK --socket SOCK`).
        #[arg(long, conflicts_with = "disk")]
        nbd: Option<PathBuf>,
        /// Open QEMU's QMP server on this unix socket (for live attach).
        #[arg(long)]
        qmp: Option<PathBuf>,
        /// Kill QEMU after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Make a fresh test disk (the seed tree on ext4 or NTFS), as the
    /// recordings start from.
    Disk {
        /// ext4 or ntfs.
        #[arg(long)]
        fs: FsKind,
        /// The image to write.
        #[arg(long)]
        out: PathBuf,
        /// Size in MiB.
        #[arg(long, default_value_t = 64)]
        disk_mib: u64,
    },
    /// Apply a dm-log-writes trace to a copy of a base image.
    Replay {
        /// The image the trace started from.
        #[arg(long)]
        base: PathBuf,
        /// The trace.
        #[arg(long)]
        log: PathBuf,
        /// Where to write the result.
        #[arg(long)]
        out: PathBuf,
        /// Compare the result with this image and fail if they differ.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Apply only the first N entries.
        #[arg(long)]
        entries: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Build => {
            let g = Guest::new()?;
            println!("kernel:  {}", g.image.kernel.boot_image().display());
            println!("initrd:  {}", g.image.initrd.display());
            println!("accel:   {:?}", g.accel);
        }
        Cmd::Record {
            workload,
            fs,
            out,
            disk_mib,
            script,
            timeout,
        } => {
            let mut spec = RecordSpec::new(workload, fs, &out);
            spec.disk_mib = disk_mib;
            spec.timeout = std::time::Duration::from_secs(timeout);
            if let Some(path) = script {
                spec.script = Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("--script {}", path.display()))?,
                );
            }
            let rec =
                record(&spec).with_context(|| format!("recording {workload} on {}", fs.name()))?;
            println!(
                "recorded {workload} on {} in {}: {} ops, {} names, prepare {:.1}s, guest {:.1}s",
                fs.name(),
                rec.dir.display(),
                rec.truth.ops.len(),
                rec.truth.listing.len(),
                rec.prepare_time.as_secs_f64(),
                rec.guest_time.as_secs_f64()
            );
        }
        Cmd::Run {
            script,
            fs,
            dir,
            disk,
            nbd,
            qmp,
            timeout,
        } => {
            std::fs::create_dir_all(&dir)?;
            let drive = match (nbd, disk) {
                (Some(sock), _) => Drive::Nbd(sock),
                (None, Some(d)) => Drive::Raw(d),
                (None, None) => {
                    let d = dir.join("disk.img");
                    disk::make_base_image(fs, &d, disk::DEFAULT_DISK_MIB)?;
                    Drive::Raw(d)
                }
            };
            let text = std::fs::read_to_string(&script)
                .with_context(|| format!("reading {}", script.display()))?;
            let mut spec = RunSpec::new(&dir, text, fs, drive);
            spec.timeout = std::time::Duration::from_secs(timeout);
            spec.qmp = qmp;
            let out = Guest::new()?.run(&spec)?;
            write_truth(&dir, &out.truth)?;
            for op in &out.truth.ops {
                println!("{op}");
            }
            for e in &out.truth.listing {
                println!("{}", serde_json::to_string(e)?);
            }
            eprintln!("guest ran {:.1}s", out.elapsed.as_secs_f64());
        }
        Cmd::Disk { fs, out, disk_mib } => {
            disk::make_base_image(fs, &out, disk_mib)
                .with_context(|| format!("making {}", out.display()))?;
            eprintln!("made {} ({} MiB, {})", out.display(), disk_mib, fs.name());
        }
        Cmd::Replay {
            base,
            log,
            out,
            expect,
            entries,
        } => {
            std::fs::copy(&base, &out).with_context(|| format!("copying {}", base.display()))?;
            let st = trace::apply_first(&log, &out, entries.unwrap_or(u64::MAX))?;
            println!("{st:?}");
            if let Some(e) = expect {
                if let Some(at) = trace::first_difference(&out, &e)? {
                    bail!("{} and {} differ at byte {at}", out.display(), e.display());
                }
                println!("identical to {}", e.display());
            }
        }
    }
    Ok(())
}
