//! A VM whose disk gammaray serves over NBD (a `serve` source): an NBD
//! server that applies the guest's writes to the image at once and hands
//! them to the queuer; inference reads the image through an [`UndoLog`],
//! so that it sees the disk as it was before each write.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{BlockDevice, DiskWrite};
use gammaray_qemu::nbd::{Export, ImageExport, Listener, NbdServer, ServeUntil};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::inferencer::DiskView;
use super::pipeline::{Pipeline, VmStats};
use super::supervisor::{Ready, SourceKit};
use super::undo::UndoLog;
use crate::crawl::Warnings;
use crate::follow::start_followers;

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
/// having connected) or the VM's stop flag is set; the disk is crawled
/// first, and the guest's writes go to `kit.tx`.
pub fn run(spec: &ServeSpec, kit: SourceKit, rt: &Runtime) -> Result<()> {
    let SourceKit { ctx, tx, ready } = kit;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&spec.disk)
        .with_context(|| format!("vm {}: opening disk {}", spec.vm, spec.disk.display()))?;
    let undo = Arc::new(UndoLog::new(file.try_clone()?)?);
    // Crawl before the guest can write: the disk is quiet now.
    let t0 = Instant::now();
    let mut warnings = Warnings::default();
    let followers = start_followers(&undo.view(), &spec.disk, &ctx.infer, &mut warnings)?;
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
    ready.do_send(Ready {
        pipe: Pipeline::new(followers, &spec.vm, &ctx),
        disk: Box::new(UndoDisk {
            undo: undo.clone(),
            stats: ctx.stats.clone(),
        }),
    });

    let export = Export::Image(ImageExport::with_guard(file, tx, undo)?);
    let server = NbdServer::new(Arc::new(export), "");
    let (sd_tx, sd_rx) = watch::channel(false);
    // Sockets belong to the runtime.
    let enter = rt.enter();
    let listener = Listener::bind_unix(&spec.socket)
        .with_context(|| format!("vm {}: listening on {}", spec.vm, spec.socket.display()))?;
    drop(enter);
    let stop = ctx.stop.clone();
    rt.spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = sd_tx.send(true);
    });
    let socket = spec.socket.clone();
    let served = rt.block_on(async move {
        let r = server
            .serve(listener, ServeUntil::LastClientGone, sd_rx)
            .await;
        let _ = std::fs::remove_file(&socket);
        r
    });
    served
        .map(|_| ())
        .with_context(|| format!("vm {}: NBD server", spec.vm))
}

/// The served image as it was before the write being inferred: the image
/// with the pages that queued writes changed put back (the undo log).
struct UndoDisk {
    undo: Arc<UndoLog>,
    stats: Arc<VmStats>,
}

impl DiskView for UndoDisk {
    fn follow(
        &mut self,
        w: &DiskWrite,
        f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>,
    ) -> Result<()> {
        f(&self.undo.view())?;
        self.undo.consume(w);
        self.stats
            .undo_pages
            .store(self.undo.pages() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn current(&mut self, f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>) -> Result<()> {
        f(&self.undo.view())
    }
}
