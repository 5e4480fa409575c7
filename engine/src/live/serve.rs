//! One VM whose disk gammaray serves over NBD: the capture side (an NBD
//! server that applies the guest's writes to the image at once) and the
//! inference side (a thread that follows them through an [`UndoLog`], so
//! that it sees the disk as it was before each write).

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{DiskWrite, FileEvent, InferConfig, SliceDevice};
use gammaray_qemu::nbd::{Export, ImageExport, Listener, NbdServer, ServeUntil};
use tokio::sync::{mpsc, watch};

use super::undo::UndoLog;
use super::Output;
use crate::crawl::Warnings;
use crate::follow::{for_partition, stamp_part, start_followers};

/// Requests queued between the NBD server and inference (the queue's
/// bound; a full queue makes the guest's I/O wait).
pub const QUEUE_REQUESTS: usize = 4096;

/// Fault injection for tests of supervision: set to N to make inference
/// panic (once) on the N-th request it handles.
pub const FAULT_ENV: &str = "GAMMARAY_FAULT_INFER_PANIC_AT";

/// With nothing queued, inference lets time pass this often.
const IDLE_TICK_MS: u64 = 500;

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The data-drop policy (the paper's section VI-A), in bytes of queued
/// write data.
#[derive(Debug, Clone, Copy)]
pub struct DropPolicy {
    /// Whether data is ever dropped.
    pub enabled: bool,
    /// Start dropping above this many queued bytes.
    pub high_bytes: u64,
    /// Stop dropping below this many.
    pub low_bytes: u64,
}

/// The throttler's switch, with hysteresis: on above `high_bytes` of
/// queued data, off again below `low_bytes`.
#[derive(Debug)]
pub struct Throttle {
    policy: DropPolicy,
    on: bool,
}

impl Throttle {
    /// Off, with `policy`.
    pub fn new(policy: DropPolicy) -> Self {
        Throttle { policy, on: false }
    }

    /// Whether data is being dropped.
    pub fn on(&self) -> bool {
        self.on
    }

    /// Looks at the queue: `Some(new state)` when the switch flips.
    pub fn update(&mut self, queued: u64) -> Option<bool> {
        let flip = if self.on {
            queued < self.policy.low_bytes
        } else {
            self.policy.enabled && queued > self.policy.high_bytes
        };
        if flip {
            self.on = !self.on;
            Some(self.on)
        } else {
            None
        }
    }
}

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

/// Counters of one served VM, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct VmStats {
    /// Requests captured.
    pub writes: AtomicU64,
    /// Bytes captured.
    pub bytes: AtomicU64,
    /// Requests inferred.
    pub inferred: AtomicU64,
    /// Events emitted.
    pub events: AtomicU64,
    /// Nanoseconds from a request's arrival to the end of its inference,
    /// of the last request.
    pub lag_ns: AtomicU64,
    /// Pages the undo log holds (pages changed by writes not yet inferred).
    pub undo_pages: AtomicU64,
    /// Per request that produced events: microseconds from its arrival at
    /// the NBD server to its events leaving for the sinks (at most
    /// [`MAX_LATENCY_SAMPLES`] kept).
    pub event_latency_us: std::sync::Mutex<Vec<u32>>,
    /// Times a partition's inference failed and was rebuilt.
    pub restarts: AtomicU64,
    /// Requests given up after failing twice.
    pub skipped: AtomicU64,
    /// Bytes of write data queued for inference.
    pub queued_bytes: AtomicU64,
    /// Times the data-drop policy switched on.
    pub drop_episodes: AtomicU64,
    /// Bytes of data writes handled while dropping.
    pub dropped_bytes: AtomicU64,
    /// The inferences' counters, `(partition, name, value)`, refreshed as
    /// inference goes.
    pub counters: std::sync::Mutex<Vec<(u32, &'static str, u64)>>,
}

/// Latency samples kept per VM.
pub const MAX_LATENCY_SAMPLES: usize = 1 << 20;

impl VmStats {
    /// `p50/p99/max` of the event latencies, in milliseconds, if any.
    pub fn latency_summary(&self) -> Option<(f64, f64, f64, usize)> {
        let mut v = self
            .event_latency_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |p: f64| f64::from(v[((v.len() - 1) as f64 * p).round() as usize]) / 1e3;
        Some((at(0.5), at(0.99), at(1.0), v.len()))
    }
}

fn publish_counters(followers: &[crate::follow::Follower], stats: &VmStats) {
    let mut c = stats.counters.lock().unwrap_or_else(|e| e.into_inner());
    c.clear();
    for f in followers {
        for k in f.inference.counters() {
            c.push((f.number, k.name, k.value));
        }
    }
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
    let mut followers = match followers {
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
    let mut events: Vec<FileEvent> = Vec::new();
    let mut seq = 0u64;
    let mut throttle = Throttle::new(drop_policy);
    let mut nth = 0u64;
    let fault_at: Option<u64> = std::env::var(FAULT_ENV).ok().and_then(|v| v.parse().ok());
    let vm: Arc<str> = spec.vm.as_str().into();
    let host: Arc<str> = host.into();
    loop {
        let next = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(IDLE_TICK_MS), rx.recv()).await
        });
        let (arrived, w) = match next {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(_) => {
                publish_counters(&followers, &stats);
                out.flush();
                // Idle: let time pass (held writes expire, home writes
                // waiting for a flush that does not come are applied).
                let now = wall_ns();
                for f in followers.iter_mut() {
                    let dev = SliceDevice::new(&view, f.start, f.len)?;
                    let from = events.len();
                    f.inference.tick(&dev, now, &mut events);
                    stamp_part(&mut events[from..], f.number);
                }
                if !events.is_empty() {
                    stats
                        .events
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    out.emit(&host, &vm, &mut seq, &mut events);
                }
                continue;
            }
        };
        // The throttler: data drop on above the high water mark, off below
        // the low one.
        let queued = stats.queued_bytes.load(Ordering::Relaxed);
        if let Some(on) = throttle.update(queued) {
            if on {
                stats.drop_episodes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(vm = %spec.vm, queued, "queue above its high water mark: data drop on");
            } else {
                tracing::info!(vm = %spec.vm, queued, "queue below its low water mark: data drop off");
            }
            for f in followers.iter_mut() {
                f.inference.set_data_drop(on);
            }
        }
        if throttle.on() {
            stats
                .dropped_bytes
                .fetch_add(w.data.len() as u64, Ordering::Relaxed);
        }
        nth += 1;
        for f in followers.iter_mut() {
            if let Some(clipped) = for_partition(&w, f) {
                let before = SliceDevice::new(&view, f.start, f.len)?;
                let from = events.len();
                let fault = fault_at == Some(nth);
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if fault {
                        panic!("fault injected by {FAULT_ENV} at request {nth}");
                    }
                    f.inference.write(&before, &clipped, &mut events);
                }));
                if run.is_err() {
                    // Supervision: rebuild this partition's inference from
                    // the disk as it was before this request (the undo
                    // view), and give the request to the new one.
                    events.truncate(from);
                    stats.restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(vm = %spec.vm, part = f.number, "inference failed; re-crawling and restarting it");
                    if let Err(e) = crate::follow::restart(f, &view, cfg) {
                        tracing::error!(vm = %spec.vm, part = f.number, "restart failed: {e:#}");
                        continue;
                    }
                    f.inference.set_data_drop(throttle.on());
                    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        f.inference.write(&before, &clipped, &mut events);
                    }));
                    if again.is_err() {
                        events.truncate(from);
                        stats.skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(vm = %spec.vm, part = f.number, "request {} failed twice; skipped", w.seq);
                        let _ = crate::follow::restart(f, &view, cfg);
                    }
                }
                stamp_part(&mut events[from..], f.number);
            }
        }
        undo.consume(&w);
        stats
            .queued_bytes
            .fetch_sub(w.data.len() as u64, Ordering::Relaxed);
        if stats.inferred.load(Ordering::Relaxed).is_multiple_of(256) {
            publish_counters(&followers, &stats);
        }
        stats
            .undo_pages
            .store(undo.pages() as u64, Ordering::Relaxed);
        stats.inferred.fetch_add(1, Ordering::Relaxed);
        stats
            .lag_ns
            .store(arrived.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if !events.is_empty() {
            stats
                .events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            out.emit(&host, &vm, &mut seq, &mut events);
            let us = u32::try_from(arrived.elapsed().as_micros()).unwrap_or(u32::MAX);
            let mut lat = stats
                .event_latency_us
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if lat.len() < MAX_LATENCY_SAMPLES {
                lat.push(us);
            }
        }
    }
    for f in followers.iter_mut() {
        let dev = SliceDevice::new(&view, f.start, f.len)?;
        let from = events.len();
        f.inference.settle(&dev, &mut events);
        stamp_part(&mut events[from..], f.number);
    }
    out.emit(&host, &vm, &mut seq, &mut events);
    out.flush();
    publish_counters(&followers, &stats);
    let served = rt.block_on(serving);
    rt.shutdown_timeout(Duration::from_secs(1));
    match served {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e).with_context(|| format!("vm {}: NBD server", spec.vm)),
        Err(e) => bail!("vm {}: NBD server task: {e}", spec.vm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_switches_with_hysteresis() {
        let mut t = Throttle::new(DropPolicy {
            enabled: true,
            high_bytes: 100,
            low_bytes: 50,
        });
        assert_eq!(t.update(100), None);
        assert_eq!(t.update(101), Some(true));
        assert_eq!(t.update(60), None, "still above the low mark");
        assert!(t.on());
        assert_eq!(t.update(49), Some(false));
        assert_eq!(t.update(99), None);
        let mut off = Throttle::new(DropPolicy {
            enabled: false,
            high_bytes: 1,
            low_bytes: 0,
        });
        assert_eq!(off.update(1 << 40), None);
    }
}
