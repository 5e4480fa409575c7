//! `gammaray capture`: record a guest's disk writes from stock QEMU into a
//! dm-log-writes trace.
//!
//! - `--serve DISK --socket SOCK`: serve the raw image over NBD (QEMU opens
//!   `file=nbd+unix:///?socket=SOCK`); every write, write-zeroes, trim and
//!   flush is applied to DISK and logged, until the client disconnects or
//!   SIGTERM/SIGINT.
//! - `--attach QMP_SOCK --drive NODE [--via mirror|blklogwrites]`: tap a
//!   running VM over QMP until SIGTERM/SIGINT (or the VM quits, or the tap
//!   fails), then detach so that the VM's block graph is as it was.
//!
//! The default `--via` is `mirror`: if gammaray dies while attached, QEMU's
//! mirror job just ends with an error and the guest carries on, whereas a
//! `blklogwrites` filter whose log device vanished fails the guest's writes.
//! `blklogwrites` is the choice when the guest's flushes must be recorded
//! (an active mirror does not forward them).
//!
//! Requests go from the NBD server to the trace writer through a bounded
//! channel: when the writer falls behind, the guest's I/O waits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gammaray_core::write::{DiskWrite, WriteFlags};
use gammaray_qemu::attach::{self, Via};
use gammaray_qemu::dmlog::TraceWriter;
use gammaray_qemu::nbd::{
    Export, ImageExport, Listener, LogExport, NbdServer, ServeUntil, SinkExport,
};
use gammaray_qemu::qmp::Qmp;
use tokio::sync::{mpsc, watch};

use crate::{AttachVia, CaptureArgs};

/// Requests in flight between the NBD server and the trace writer. Each is
/// at most 32 MiB (the NBD maximum payload) and typically 4 KiB.
const QUEUE_DEPTH: usize = 64;
/// Log sector size of the traces written (and of the `blklogwrites` log).
const LOG_SECTOR: u32 = 512;
/// Timeout of each QMP step.
const QMP_TIMEOUT: Duration = Duration::from_secs(15);

/// Counts shown in the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    writes: u64,
    bytes: u64,
    zeroes: u64,
    discards: u64,
    flushes: u64,
    fua: u64,
    marks: u64,
}

impl Totals {
    fn add(&mut self, w: &DiskWrite) {
        if w.flags.contains(WriteFlags::MARK) {
            self.marks += 1;
            return;
        }
        if w.flags.contains(WriteFlags::FLUSH) {
            self.flushes += 1;
        }
        if w.flags.contains(WriteFlags::FUA) {
            self.fua += 1;
        }
        if w.flags.contains(WriteFlags::DISCARD) {
            self.discards += 1;
        } else if w.flags.contains(WriteFlags::ZEROES) {
            self.zeroes += 1;
        } else if w.has_data() {
            self.writes += 1;
            self.bytes += w.data.len() as u64;
        }
    }
}

/// Runs `gammaray capture`.
pub fn run(args: &CaptureArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<DiskWrite>(QUEUE_DEPTH);
    let writer = spawn_writer(&args.log, rx)?;
    let result = rt.block_on(async {
        if let Some(disk) = &args.serve {
            // OK: clap requires --socket with --serve.
            let socket = args.socket.as_deref().context("--serve needs --socket")?;
            serve(disk, socket, tx).await
        } else if let Some(qmp) = &args.attach {
            let drive = args.drive.as_deref().context("--attach needs --drive")?;
            attach_and_record(qmp, drive, args.via, tx).await
        } else {
            bail!("give --serve or --attach")
        }
    });
    // All senders are gone now: the writer drains the queue and finishes.
    let totals = writer
        .join()
        .map_err(|_| anyhow::anyhow!("trace writer thread panicked"))?
        .with_context(|| format!("writing {}", args.log.display()))?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "gammaray capture: {} writes ({} bytes), {} flushes, {} FUA, {} write-zeroes, {} discards in {:.1}s -> {}",
        totals.writes,
        totals.bytes,
        totals.flushes,
        totals.fua,
        totals.zeroes,
        totals.discards,
        secs,
        args.log.display()
    );
    result
}

fn spawn_writer(
    path: &Path,
    mut rx: mpsc::Receiver<DiskWrite>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<Totals>>> {
    let mut trace = TraceWriter::create(path, LOG_SECTOR)
        .with_context(|| format!("creating trace {}", path.display()))?;
    Ok(std::thread::Builder::new()
        .name("trace-writer".into())
        .spawn(move || {
            let mut totals = Totals::default();
            loop {
                let w = match rx.try_recv() {
                    Ok(w) => w,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        // Idle: make the super current so that a reader
                        // tailing the trace sees everything so far.
                        trace.sync_super()?;
                        match rx.blocking_recv() {
                            Some(w) => w,
                            None => break,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                };
                totals.add(&w);
                trace.append(&w)?;
            }
            trace.finish()?;
            Ok(totals)
        })?)
}

/// SIGTERM and SIGINT, caught from the moment this is made (so that a
/// signal during attach is handled after it, not by dying half-attached).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when SIGTERM or SIGINT arrives.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn serve(disk: &Path, socket: &Path, tx: mpsc::Sender<DiskWrite>) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let size = file.metadata()?.len();
    if size % u64::from(LOG_SECTOR) != 0 {
        bail!(
            "{}: size {size} is not a multiple of {LOG_SECTOR} bytes",
            disk.display()
        );
    }
    let export = Export::Image(ImageExport::new(file, tx)?);
    let server = NbdServer::new(Arc::new(export), "");
    let listener = Listener::bind_unix(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    tracing::info!(
        "serving {} ({size} bytes) on {}",
        disk.display(),
        socket.display()
    );
    let (sd_tx, sd_rx) = watch::channel(false);
    let mut signals = Signals::new()?;
    let signal = tokio::spawn(async move {
        let sig = signals.recv().await;
        tracing::info!("{sig}: stopping");
        let _ = sd_tx.send(true);
    });
    let served = server
        .serve(listener, ServeUntil::LastClientGone, sd_rx)
        .await;
    signal.abort();
    let _ = std::fs::remove_file(socket);
    served?;
    Ok(())
}

async fn attach_and_record(
    qmp_path: &Path,
    drive: &str,
    via: AttachVia,
    tx: mpsc::Sender<DiskWrite>,
) -> anyhow::Result<()> {
    let mut signals = Signals::new()?;
    let via = match via {
        AttachVia::Mirror => Via::Mirror,
        AttachVia::Blklogwrites => Via::Blklogwrites,
    };
    let mut qmp = Qmp::connect(qmp_path, QMP_TIMEOUT)
        .await
        .with_context(|| format!("connecting to QMP at {}", qmp_path.display()))?;
    let info = attach::inspect_drive(&mut qmp, drive).await?;
    tracing::info!("tapping {info:?} via {via:?}");
    let dir = SocketDir::new()?;
    let socket = dir.0.join("nbd.sock");
    let export = match via {
        Via::Mirror => Export::Sink(SinkExport::new(info.size, tx)),
        Via::Blklogwrites => Export::Log(LogExport::new(LOG_SECTOR, tx)?),
    };
    let server = NbdServer::new(Arc::new(export), "");
    let listener = Listener::bind_unix(&socket)?;
    let (sd_tx, sd_rx) = watch::channel(false);
    let srv = server.clone();
    let serving =
        tokio::spawn(async move { srv.serve(listener, ServeUntil::Shutdown, sd_rx).await });
    let tag = attach::tag_for_pid(std::process::id());
    // Clear what a gammaray that died while attached left (its mirror job
    // and NBD node); a pid that no longer exists marks them.
    match attach::cleanup_stale(&mut qmp, |pid| Path::new(&format!("/proc/{pid}")).exists()).await {
        Ok(removed) if !removed.is_empty() => tracing::warn!("removed stale {removed:?}"),
        Ok(_) => {}
        Err(e) => tracing::warn!("cleaning up stale attachments: {e}"),
    }
    let mut events = qmp.subscribe();
    let attachment = match attach::attach(&mut qmp, info, via, &socket, &tag, LOG_SECTOR).await {
        Ok(a) => a,
        Err(e) => {
            let _ = sd_tx.send(true);
            let _ = serving.await;
            return Err(e).context("attaching");
        }
    };
    eprintln!(
        "gammaray capture: attached to {} via {via:?}; SIGTERM or SIGINT detaches",
        attachment.drive.node
    );
    let job = attachment.job.clone();
    // Record until a signal, the VM's end, or the tap failing.
    let why = tokio::select! {
        sig = signals.recv() => sig.to_string(),
        ev = async {
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        let ours = job.as_deref().is_some_and(|j| ev.data.get("device").and_then(|d| d.as_str()) == Some(j));
                        if ev.name == "SHUTDOWN" || (ours && matches!(ev.name.as_str(), "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_ERROR")) {
                            return format!("QEMU event {} {}", ev.name, ev.data);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return "QMP connection closed".to_string(),
                }
            }
        } => ev,
    };
    tracing::info!("detaching: {why}");
    let detached = attachment.detach(&mut qmp).await;
    // The NBD client is gone once blockdev-del returned; stop serving.
    let _ = sd_tx.send(true);
    let _ = serving.await;
    if let Export::Log(l) = server.export().as_ref() {
        if !l.is_idle() {
            tracing::warn!("blklogwrites log ended inside an entry: {:?}", l.stats());
        }
    }
    drop(server);
    detached.context("detaching")?;
    eprintln!("gammaray capture: detached ({why})");
    Ok(())
}

/// A private directory for the NBD socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("gammaray-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(SocketDir(dir))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
