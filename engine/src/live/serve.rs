//! One VM whose disk gammaray serves over NBD: the capture side (an NBD
//! server that applies the guest's writes to the image at once) and the
//! inference side (a thread that follows them through an [`UndoLog`], so
//! that it sees the disk as it was before each write).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::DiskWrite;
use gammaray_qemu::nbd::{Export, ImageExport, Listener, NbdServer, ServeUntil};
use tokio::sync::{mpsc, watch};

use super::pipeline::{follow_queue, Pipeline, VmContext};
use super::queue::{spawn_queuer, WriteQueue};
use super::undo::UndoLog;
use crate::crawl::Warnings;
use crate::follow::start_followers;

/// Requests in flight between the NBD server and the queuer.
pub const CAPTURE_REQUESTS: usize = 64;

/// With nothing queued, inference lets time pass this often.
pub const IDLE_TICK_MS: u64 = 500;

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
pub fn serve_vm(spec: &ServeSpec, ctx: &VmContext) -> Result<()> {
    let (cfg, stats) = (&ctx.infer, ctx.stats.clone());
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

    let queue = Arc::new(WriteQueue::new(ctx.queue_bytes));
    let (wtx, wrx) = mpsc::channel::<DiskWrite>(CAPTURE_REQUESTS);
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
    let queuer = spawn_queuer(&spec.vm, wrx, queue.clone(), stats.clone())?;
    let stop_watch = ctx.stop.clone();
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
    let mut pipe = Pipeline::new(followers, &spec.vm, ctx);
    let followed = follow_queue(
        &queue,
        &mut pipe,
        &view,
        Duration::from_millis(IDLE_TICK_MS),
        |w| {
            undo.consume(w);
            stats
                .undo_pages
                .store(undo.pages() as u64, Ordering::Relaxed);
            Ok(())
        },
        |_| {},
    );
    let _ = queuer.join();
    tracing::info!(vm = %spec.vm, peak_queued = queue.peak(), "source ended");
    followed?;
    let served = rt.block_on(serving);
    rt.shutdown_timeout(Duration::from_secs(1));
    match served {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("vm {}: NBD server", spec.vm)),
        Err(e) => bail!("vm {}: NBD server task: {e}", spec.vm),
    }
}
