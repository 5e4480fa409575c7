//! One VM whose disk gammaray serves over NBD: the capture side (an NBD
//! server that applies the guest's writes to the image at once) and the
//! inference side (a thread that follows them through an [`UndoLog`], so
//! that it sees the disk as it was before each write).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{DiskWrite, InferConfig};
use gammaray_qemu::nbd::{Export, ImageExport, Listener, NbdServer, ServeUntil};
use tokio::sync::{mpsc, watch};

use super::pipeline::{wall_ns, DropPolicy, Pipeline, VmStats};
use super::undo::UndoLog;
use super::Output;
use crate::crawl::Warnings;
use crate::follow::start_followers;

/// Requests queued between the NBD server and inference (the queue's
/// bound; a full queue makes the guest's I/O wait).
pub const QUEUE_REQUESTS: usize = 4096;

/// With nothing queued, inference lets time pass this often.
const IDLE_TICK_MS: u64 = 500;

/// What to serve.
#[derive(Debug, Clone)]
pub struct ServeSpec {
    /// VM name (in events and channels).
    pub vm: String,
    /// The raw image.
    pub disk: PathBuf,
    /// Unix socket QEMU connects to.
    pub socket: PathBuf,
}

/// Serves `spec.disk` on `spec.socket` until the guest disconnects (after
/// having connected) or `stop` is set, following its writes into `out`.
pub fn serve_vm(
    spec: &ServeSpec,
    host: &str,
    cfg: &InferConfig,
    drop_policy: DropPolicy,
    out: Arc<dyn Output>,
    stop: Arc<AtomicBool>,
    stats: Arc<VmStats>,
) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&spec.disk)
        .with_context(|| format!("vm {}: opening disk {}", spec.vm, spec.disk.display()))?;
    let undo = Arc::new(UndoLog::new(file.try_clone()?)?);
    // Crawl before the guest can write: the disk is quiet now.
    let t0 = Instant::now();
    let mut warnings = Warnings::default();
    let followers = start_followers(&undo.view(), &spec.disk, cfg, &mut warnings)?;
    let followers = match followers {
        Ok(f) => f,
        Err(why) => bail!(
            "vm {}: nothing to follow on {}: {why}",
            spec.vm,
            spec.disk.display()
        ),
    };
    tracing::info!(
        vm = %spec.vm,
        partitions = followers.len(),
        secs = t0.elapsed().as_secs_f64(),
        "crawled; serving {} on {}",
        spec.disk.display(),
        spec.socket.display()
    );

    let (tx, mut rx) = mpsc::channel::<(Instant, DiskWrite)>(QUEUE_REQUESTS);
    let (wtx, mut wrx) = mpsc::channel::<DiskWrite>(64);
    let export = Export::Image(ImageExport::with_guard(file, wtx, undo.clone())?);
    let server = NbdServer::new(Arc::new(export), "");
    let (sd_tx, sd_rx) = watch::channel(false);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Sockets belong to the runtime.
    let enter = rt.enter();
    let listener = Listener::bind_unix(&spec.socket)
        .with_context(|| format!("vm {}: listening on {}", spec.vm, spec.socket.display()))?;
    drop(enter);
    let capture_stats = stats.clone();
    // Capture: stamp each request's arrival and hand it to inference.
    rt.spawn(async move {
        while let Some(w) = wrx.recv().await {
            capture_stats.writes.fetch_add(1, Ordering::Relaxed);
            capture_stats.bytes.fetch_add(w.len, Ordering::Relaxed);
            capture_stats
                .queued_bytes
                .fetch_add(w.data.len() as u64, Ordering::Relaxed);
            if tx.send((Instant::now(), w)).await.is_err() {
                break;
            }
        }
    });
    let stop_watch = stop.clone();
    rt.spawn(async move {
        while !stop_watch.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = sd_tx.send(true);
    });
    let socket = spec.socket.clone();
    let serving = rt.spawn(async move {
        let r = server
            .serve(listener, ServeUntil::LastClientGone, sd_rx)
            .await;
        let _ = std::fs::remove_file(&socket);
        r
    });

    // Inference, on this thread.
    let view = undo.view();
    let mut pipe = Pipeline::new(
        followers,
        &spec.vm,
        host,
        *cfg,
        drop_policy,
        out.clone(),
        stats.clone(),
    );
    loop {
        let next = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(IDLE_TICK_MS), rx.recv()).await
        });
        match next {
            Ok(Some((arrived, w))) => {
                pipe.write(&view, &w, arrived)?;
                undo.consume(&w);
                stats
                    .undo_pages
                    .store(undo.pages() as u64, Ordering::Relaxed);
            }
            Ok(None) => break,
            // Idle: let time pass (held writes expire, home writes waiting
            // for a flush that does not come are applied).
            Err(_) => pipe.idle(&view, wall_ns())?,
        }
    }
    pipe.finish(&view)?;
    let served = rt.block_on(serving);
    rt.shutdown_timeout(Duration::from_secs(1));
    match served {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("vm {}: NBD server", spec.vm)),
        Err(e) => bail!("vm {}: NBD server task: {e}", spec.vm),
    }
}
