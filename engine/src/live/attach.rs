//! Live attach to a running VM over QMP (the paper's online case):
//!
//! 1. start capturing: with the VM paused for the few QMP commands it
//!    takes, start a point-in-time copy of its drive (QEMU's backup job,
//!    into `disk`, see [`gammaray_qemu::snapshot`]) and the tap (an active
//!    mirror, or a `blklogwrites` filter, to gammaray's NBD server), then
//!    resume it;
//! 2. crawl the copy once QEMU has finished it, while the guest's writes
//!    queue up (bounded: past `policy.queue_bytes` the guest waits);
//! 3. replay the queued writes over the copy, emitting their events;
//! 4. catch up, and go on following the writes live.
//!
//! The copy is exactly the disk as of the first tapped write, so no write
//! is missed or seen twice, and inference always reads the disk as it was
//! before each write: the writes are applied to the copy after they are
//! inferred. `disk` stays gammaray's own copy of the guest's disk.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{BlockDevice, DiskWrite, FileDevice, WriteFlags};
use gammaray_qemu::attach::{self, Attachment, Via};
use gammaray_qemu::nbd::{Export, Listener, LogExport, NbdServer, ServeUntil, SinkExport};
use gammaray_qemu::qmp::Qmp;
use gammaray_qemu::snapshot;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

use super::inferencer::DiskView;
use super::pipeline::{Pipeline, VmStats};
use super::supervisor::{Ready, SourceKit};
use crate::crawl::Warnings;
use crate::follow::start_followers;

/// Timeout of each QMP step.
const QMP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for QEMU to finish the copy.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);
/// Log sector size of a `blklogwrites` tap.
const LOG_SECTOR: u32 = 512;
/// Zeroes are written to the copy in pieces of at most this many bytes.
const ZERO_CHUNK: u64 = 1 << 20;

/// What to attach to.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    /// VM name (in events and channels).
    pub vm: String,
    /// gammaray's copy of the guest's disk (created or overwritten; never
    /// one of the files QEMU has open).
    pub disk: PathBuf,
    /// QEMU's QMP socket.
    pub qmp: PathBuf,
    /// The guest drive's node, drive id or device id.
    pub drive: String,
    /// How writes are taken out of QEMU.
    pub via: Via,
    /// QEMU's copy of the drive runs at most this fast (bytes/s; 0: no limit).
    pub copy_rate: u64,
}

/// Everything the attachment holds while it lasts.
struct Tap {
    qmp: Qmp,
    attachment: Attachment,
    server: NbdServer,
    serving: tokio::task::JoinHandle<std::io::Result<u64>>,
    shutdown: watch::Sender<bool>,
    events: tokio::sync::broadcast::Receiver<gammaray_qemu::qmp::Event>,
    copy: snapshot::Copy,
    _dir: SocketDir,
}

/// Attaches to `spec.qmp`'s drive and captures its writes into `kit.tx`
/// until the VM's stop flag is set, the VM quits or the tap fails, then
/// detaches. Inference starts once the copy is crawled, with the writes
/// queued meanwhile first.
pub fn run(spec: &AttachSpec, kit: SourceKit, rt: &Runtime) -> Result<()> {
    let SourceKit { ctx, tx, ready } = kit;
    let vm = spec.vm.as_str();

    // 1. Capture and copy, started together.
    let t0 = Instant::now();
    let mut tap = rt.block_on(start(spec, tx))?;
    eprintln!(
        "gammaray: vm {vm}: attached to {} via {:?}; copying the disk to {}",
        tap.attachment.drive.node,
        spec.via,
        spec.disk.display()
    );

    // 2. QEMU finishes the copy; then it is crawled. Writes queue up.
    let bar = bytes_bar(format!("{vm}: copy"));
    let copy = std::mem::take(&mut tap.copy);
    let copied = rt.block_on(copy.finish(&mut tap.qmp, COPY_TIMEOUT, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }));
    bar.finish_and_clear();
    if let Err(e) = copied {
        let _ = rt.block_on(detach(tap, "the copy failed"));
        return Err(e).with_context(|| format!("vm {vm}: copying the disk"));
    }
    let copied_secs = t0.elapsed().as_secs_f64();
    let crawled = (|| -> Result<_> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&spec.disk)
            .with_context(|| format!("vm {vm}: opening the copy {}", spec.disk.display()))?;
        let dev = FileDevice::from_file(file.try_clone()?)?;
        let mut warnings = Warnings::default();
        match start_followers(&dev, &spec.disk, &ctx.infer, &mut warnings)
            .with_context(|| format!("vm {vm}: crawling the copy"))?
        {
            Ok(f) => Ok((f, CopyDisk { file, dev })),
            Err(why) => bail!("vm {vm}: nothing to follow: {why}"),
        }
    })();
    let (followers, disk) = match crawled {
        Ok(x) => x,
        Err(e) => {
            let _ = rt.block_on(detach(tap, "nothing to follow"));
            return Err(e);
        }
    };
    let backlog = ctx.stats.writes.load(Ordering::Relaxed);
    eprintln!(
        "gammaray: vm {vm}: disk copied in {copied_secs:.2} s and crawled in {:.2} s; catching up on {backlog} writes queued meanwhile",
        t0.elapsed().as_secs_f64() - copied_secs
    );

    // 3 and 4. The inferencer replays the queue over the copy, catches up
    // and follows live.
    ready.do_send(Ready {
        pipe: Pipeline::new(followers, vm, &ctx),
        disk: Box::new(disk),
    });
    let (stats, vm_name) = (ctx.stats.clone(), vm.to_string());
    let caught_up = std::thread::Builder::new()
        .name(format!("catch-up-{vm}"))
        .spawn(move || report_catch_up(&vm_name, &stats, backlog))?;
    let detached = rt.block_on(watch_and_detach(tap, ctx.stop.clone()));
    let _ = caught_up.join();
    detached.with_context(|| format!("vm {vm}: detaching"))
}

/// Shows the catch-up and says when the writes queued during the copy and
/// crawl have all been inferred.
fn report_catch_up(vm: &str, stats: &VmStats, backlog: u64) {
    let t0 = Instant::now();
    let bar = count_bar(format!("{vm}: catch-up"), backlog);
    loop {
        let n = stats.inferred.load(Ordering::Relaxed);
        bar.set_position(n.min(backlog));
        if n >= backlog {
            break;
        }
        if stats.ended.load(Ordering::Relaxed) {
            bar.finish_and_clear();
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bar.finish_and_clear();
    eprintln!(
        "gammaray: vm {vm}: caught up: {backlog} queued writes followed in {:.2} s; following live",
        t0.elapsed().as_secs_f64()
    );
}

/// gammaray's copy of the attached disk, kept as of the write being
/// inferred: each write is applied to it once inferred.
struct CopyDisk {
    file: std::fs::File,
    dev: FileDevice,
}

impl DiskView for CopyDisk {
    fn follow(
        &mut self,
        w: &DiskWrite,
        f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>,
    ) -> Result<()> {
        f(&self.dev)?;
        apply(&self.file, w)
    }

    fn current(&mut self, f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>) -> Result<()> {
        f(&self.dev)
    }
}

/// Connects, checks, and starts the copy and the tap with the VM paused.
async fn start(spec: &AttachSpec, tx: mpsc::Sender<DiskWrite>) -> Result<Tap> {
    let vm = &spec.vm;
    if !spec.qmp.exists() {
        bail!(
            "vm {vm}: source.qmp {} does not exist (is the VM running, with -qmp unix:{},server=on,wait=off?)",
            spec.qmp.display(),
            spec.qmp.display()
        );
    }
    let mut qmp = Qmp::connect(&spec.qmp, QMP_TIMEOUT)
        .await
        .with_context(|| format!("vm {vm}: connecting to QMP at {}", spec.qmp.display()))?;
    let info = attach::inspect_drive(&mut qmp, &spec.drive)
        .await
        .with_context(|| format!("vm {vm}"))?;
    // Never write the copy over a file QEMU uses.
    let ours = canonical(&spec.disk);
    for f in snapshot::open_files(&mut qmp).await? {
        if canonical(&f) == ours {
            bail!(
                "vm {vm}: disk {} is a file QEMU has open; for an attach source, `disk` names gammaray's own copy of the guest's disk",
                spec.disk.display()
            );
        }
    }
    // The tap first, then the copy. A mirror job keeps other jobs off its
    // source node (and `blockdev-mirror` wants a root node, which the
    // drive is not once a copy's filter sits above it), so beside a mirror
    // the copy is taken one level down, from the raw drive's file node,
    // which holds the same bytes.
    let mut source = info.clone();
    if spec.via == Via::Mirror {
        match (&info.file_child, info.driver.as_str()) {
            (Some(file), "raw") => source.node = file.clone(),
            _ => {
                bail!(
                    "vm {vm}: drive {} is {} without a file node; live attach copies raw drives only",
                    info.node,
                    info.driver
                );
            }
        }
    }
    let file = std::fs::File::create(&spec.disk)
        .with_context(|| format!("vm {vm}: creating the copy {}", spec.disk.display()))?;
    file.set_len(info.size)
        .with_context(|| format!("vm {vm}: sizing the copy {}", spec.disk.display()))?;
    drop(file);

    match attach::cleanup_stale(&mut qmp, |pid| Path::new(&format!("/proc/{pid}")).exists()).await {
        Ok(removed) if !removed.is_empty() => tracing::warn!(vm = %vm, "removed stale {removed:?}"),
        Ok(_) => {}
        Err(e) => tracing::warn!(vm = %vm, "cleaning up stale attachments: {e}"),
    }

    let dir = SocketDir::new(vm)?;
    let socket = dir.0.join("nbd.sock");
    let export = match spec.via {
        Via::Mirror => Export::Sink(SinkExport::new(info.size, tx)),
        Via::Blklogwrites => Export::Log(LogExport::new(LOG_SECTOR, tx)?),
    };
    let server = NbdServer::new(Arc::new(export), "");
    let listener = Listener::bind_unix(&socket)?;
    let (shutdown, sd_rx) = watch::channel(false);
    let srv = server.clone();
    let serving =
        tokio::spawn(async move { srv.serve(listener, ServeUntil::Shutdown, sd_rx).await });
    // One tag per process: each VM is its own QEMU. (QEMU node names are
    // at most 31 characters.)
    let tag = attach::tag_for_pid(std::process::id());
    let events = qmp.subscribe();

    // The switch: the VM is paused (QEMU drains its I/O) so that the copy
    // and the tap start at the same point of the write stream.
    let was_running = snapshot::is_running(&mut qmp).await?;
    let paused = Instant::now();
    if was_running {
        snapshot::pause(&mut qmp).await?;
    }
    let switched = async {
        let a = attach::attach(&mut qmp, info.clone(), spec.via, &socket, &tag, LOG_SECTOR).await?;
        match snapshot::start_copy(&mut qmp, &source, &spec.disk, &tag, spec.copy_rate).await {
            Ok(copy) => Ok((copy, a)),
            Err(e) => {
                if let Err(e2) = a.detach(&mut qmp).await {
                    tracing::warn!("rollback: detaching: {e2}");
                }
                Err(e)
            }
        }
    }
    .await;
    if was_running {
        if let Err(e) = snapshot::resume(&mut qmp).await {
            tracing::error!(vm = %vm, "resuming the VM after attaching: {e}");
        }
    }
    let held = paused.elapsed();
    let (copy, attachment) = match switched {
        Ok(x) => x,
        Err(e) => {
            let _ = shutdown.send(true);
            let _ = serving.await;
            return Err(e).with_context(|| format!("vm {vm}: attaching"));
        }
    };
    tracing::info!(vm = %vm, paused_ms = held.as_secs_f64() * 1e3, "copy and tap started");
    eprintln!(
        "gammaray: vm {vm}: guest paused {:.1} ms to start the copy and the tap",
        held.as_secs_f64() * 1e3
    );
    Ok(Tap {
        qmp,
        attachment,
        server,
        serving,
        shutdown,
        events,
        copy,
        _dir: dir,
    })
}

/// Waits for `stop`, the VM's end or the tap's failure, then detaches.
async fn watch_and_detach(mut tap: Tap, stop: Arc<AtomicBool>) -> Result<()> {
    let job = tap.attachment.job.clone();
    let why = loop {
        if stop.load(Ordering::Relaxed) {
            break "stopped".to_string();
        }
        match tokio::time::timeout(Duration::from_millis(100), tap.events.recv()).await {
            Err(_) => {}
            Ok(Ok(ev)) => {
                let ours = job
                    .as_deref()
                    .is_some_and(|j| ev.data.get("device").and_then(|d| d.as_str()) == Some(j));
                if ev.name == "SHUTDOWN"
                    || (ours
                        && matches!(
                            ev.name.as_str(),
                            "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_ERROR"
                        ))
                {
                    break format!("QEMU event {} {}", ev.name, ev.data);
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) => break "the QMP connection closed".to_string(),
        }
    };
    detach(tap, &why).await
}

/// Undoes the attachment and stops the NBD server (which ends the queue).
async fn detach(mut tap: Tap, why: &str) -> Result<()> {
    tracing::info!("detaching: {why}");
    let gone = why.contains("SHUTDOWN") || why.contains("closed");
    if !tap.copy.job.is_empty() {
        let copy = std::mem::take(&mut tap.copy);
        let _ = copy.abort(&mut tap.qmp).await;
    }
    let detached = tap.attachment.detach(&mut tap.qmp).await;
    let _ = tap.shutdown.send(true);
    let _ = tap.serving.await;
    drop(tap.server);
    match detached {
        Ok(()) => {
            eprintln!("gammaray: detached ({why})");
            Ok(())
        }
        // A VM that quit takes its block graph with it.
        Err(e) if gone => {
            eprintln!("gammaray: the VM is gone ({why}); nothing to detach ({e})");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies `w` to the copy (after inference has seen it).
fn apply(file: &std::fs::File, w: &DiskWrite) -> Result<()> {
    if w.flags.intersects(WriteFlags::MARK | WriteFlags::DISCARD) {
        return Ok(());
    }
    if w.flags.contains(WriteFlags::ZEROES) {
        let zeros = vec![0u8; ZERO_CHUNK.min(w.len) as usize];
        let mut at = w.offset;
        let end = w.offset.saturating_add(w.len);
        while at < end {
            let n = (end - at).min(ZERO_CHUNK) as usize;
            file.write_all_at(&zeros[..n], at)
                .context("writing zeroes to the copy")?;
            at += n as u64;
        }
        return Ok(());
    }
    if !w.data.is_empty() {
        file.write_all_at(&w.data, w.offset)
            .context("writing to the copy")?;
    }
    Ok(())
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn bytes_bar(label: String) -> ProgressBar {
    let pb = bar();
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label);
    pb
}

fn count_bar(label: String, len: u64) -> ProgressBar {
    let pb = bar();
    pb.set_length(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} writes ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label);
    pb
}

fn bar() -> ProgressBar {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    }
}

/// A private directory for the tap's NBD socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(vm: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "gammaray-attach-{}-{}",
            std::process::id(),
            vm.replace('/', "_")
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(SocketDir(dir))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
