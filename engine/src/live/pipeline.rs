//! What every source of writes shares: following one VM's requests through
//! its partitions' inferences, with the throttler (data-drop policy) and
//! supervision (a failed inference is rebuilt from the disk), and handing
//! the events to the output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use gammaray_core::{BlockDevice, DiskWrite, FileEvent, InferConfig, SliceDevice};

use super::Output;
use crate::follow::{for_partition, restart, stamp_part, Follower};

/// Fault injection for tests of supervision: set to N to make inference
/// panic (once) on the N-th request it handles.
pub const FAULT_ENV: &str = "GAMMARAY_FAULT_INFER_PANIC_AT";

/// Nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
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
    #[cfg(test)]
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
    /// Requests captured per second, over the last second.
    pub write_rate: AtomicU64,
    /// Set when the VM's inference has finished.
    pub ended: std::sync::atomic::AtomicBool,
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

pub fn publish_counters(followers: &[crate::follow::Follower], stats: &VmStats) {
    let mut c = stats.counters.lock().unwrap_or_else(|e| e.into_inner());
    c.clear();
    for f in followers {
        for k in f.inference.counters() {
            c.push((f.number, k.name, k.value));
        }
    }
}

/// What every VM of one `gammaray run` shares, and its own counters.
#[derive(Clone)]
pub struct VmContext {
    /// Host name in events.
    pub host: String,
    /// Inference settings.
    pub infer: InferConfig,
    /// The data-drop policy.
    pub drop_policy: DropPolicy,
    /// The write queue's byte limit.
    pub queue_bytes: u64,
    /// Sinks are flushed at least this often while writes flow.
    pub flush_every: std::time::Duration,
    /// Where events go.
    pub out: Arc<dyn Output>,
    /// Set to stop.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// This VM's counters.
    pub stats: Arc<VmStats>,
    /// Where to write the final state listing (`DIR/VM.jsonl`).
    pub state_dir: Option<std::path::PathBuf>,
}

/// One VM's inference side.
pub struct Pipeline {
    followers: Vec<Follower>,
    vm: Arc<str>,
    host: Arc<str>,
    cfg: InferConfig,
    dropping: bool,
    out: Arc<dyn Output>,
    stats: Arc<VmStats>,
    events: Vec<FileEvent>,
    state_dir: Option<std::path::PathBuf>,
    flush_every: std::time::Duration,
    flushed: Instant,
    seq: u64,
    nth: u64,
    fault_at: Option<u64>,
}

impl Pipeline {
    /// Follows `followers` for VM `vm`.
    pub fn new(followers: Vec<Follower>, vm: &str, ctx: &VmContext) -> Self {
        Pipeline {
            followers,
            vm: vm.into(),
            host: ctx.host.as_str().into(),
            cfg: ctx.infer,
            dropping: false,
            out: ctx.out.clone(),
            stats: ctx.stats.clone(),
            state_dir: ctx.state_dir.clone(),
            flush_every: ctx.flush_every,
            flushed: Instant::now(),
            events: Vec::new(),
            seq: 0,
            nth: 0,
            fault_at: std::env::var(FAULT_ENV).ok().and_then(|v| v.parse().ok()),
        }
    }

    /// Switches data drop on or off for the writes that follow.
    pub fn set_data_drop(&mut self, on: bool) {
        self.dropping = on;
        for f in self.followers.iter_mut() {
            f.inference.set_data_drop(on);
        }
    }

    /// Follows request `w`, which arrived at `arrived`; `view` reads the
    /// disk as it was before `w`.
    pub fn write(&mut self, view: &dyn BlockDevice, w: &DiskWrite, arrived: Instant) -> Result<()> {
        let stats = self.stats.clone();
        if self.dropping {
            stats
                .dropped_bytes
                .fetch_add(w.data.len() as u64, Ordering::Relaxed);
        }
        self.nth += 1;
        let (nth, fault_at, on) = (self.nth, self.fault_at, self.dropping);
        for f in self.followers.iter_mut() {
            let Some(clipped) = for_partition(w, f) else {
                continue;
            };
            let before = SliceDevice::new(view, f.start, f.len)?;
            let events = &mut self.events;
            let from = events.len();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if fault_at == Some(nth) {
                    panic!("fault injected by {FAULT_ENV} at request {nth}");
                }
                f.inference.write(&before, &clipped, events);
            }));
            if run.is_err() {
                // Supervision: rebuild this partition's inference from the
                // disk as it was before this request, and give the request
                // to the new one.
                events.truncate(from);
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(vm = %self.vm, part = f.number, "inference failed; re-crawling and restarting it");
                if let Err(e) = restart(f, view, &self.cfg) {
                    tracing::error!(vm = %self.vm, part = f.number, "restart failed: {e:#}");
                    continue;
                }
                f.inference.set_data_drop(on);
                let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    f.inference.write(&before, &clipped, events);
                }));
                if again.is_err() {
                    events.truncate(from);
                    stats.skipped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(vm = %self.vm, part = f.number, "request {} failed twice; skipped", w.seq);
                    let _ = restart(f, view, &self.cfg);
                }
            }
            stamp_part(&mut events[from..], f.number);
        }
        stats
            .queued_bytes
            .fetch_sub(w.data.len() as u64, Ordering::Relaxed);
        if stats.inferred.load(Ordering::Relaxed).is_multiple_of(256) {
            publish_counters(&self.followers, &stats);
        }
        stats.inferred.fetch_add(1, Ordering::Relaxed);
        stats
            .lag_ns
            .store(arrived.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if self.flushed.elapsed() >= self.flush_every {
            self.out.flush();
            self.flushed = Instant::now();
        }
        if self.emit() {
            let us = u32::try_from(arrived.elapsed().as_micros()).unwrap_or(u32::MAX);
            let mut lat = stats
                .event_latency_us
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if lat.len() < MAX_LATENCY_SAMPLES {
                lat.push(us);
            }
        }
        Ok(())
    }

    /// Nothing to do for a while: time passes (`now_ns`), counters are
    /// published, sinks made durable.
    pub fn idle(&mut self, view: &dyn BlockDevice, now_ns: u64) -> Result<()> {
        publish_counters(&self.followers, &self.stats);
        self.out.flush();
        self.flushed = Instant::now();
        for f in self.followers.iter_mut() {
            let dev = SliceDevice::new(view, f.start, f.len)?;
            let from = self.events.len();
            f.inference.tick(&dev, now_ns, &mut self.events);
            stamp_part(&mut self.events[from..], f.number);
        }
        self.emit();
        Ok(())
    }

    /// The source ended: what waits for a flush is applied, everything
    /// is sent and made durable.
    pub fn finish(&mut self, view: &dyn BlockDevice) -> Result<()> {
        for f in self.followers.iter_mut() {
            let dev = SliceDevice::new(view, f.start, f.len)?;
            let from = self.events.len();
            f.inference.settle(&dev, &mut self.events);
            stamp_part(&mut self.events[from..], f.number);
        }
        self.emit();
        self.out.flush();
        publish_counters(&self.followers, &self.stats);
        self.stats.ended.store(true, Ordering::Relaxed);
        if let Some(dir) = &self.state_dir {
            let path = dir.join(format!("{}.jsonl", self.vm));
            self.write_state(view, &path)
                .with_context(|| format!("--state-dir: writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Writes the state listing of every followed file system, files
    /// hashed from `view`, to `path`.
    fn write_state(&self, view: &dyn BlockDevice, path: &std::path::Path) -> Result<()> {
        use std::io::Write;
        let mut warnings = crate::crawl::Warnings::default();
        let mut all = Vec::new();
        for f in &self.followers {
            let pdev = SliceDevice::new(view, f.start, f.len)?;
            all.extend(crate::crawl::part_listing(
                f.number,
                &f.inference.model(),
                Some(&pdev),
                &mut warnings,
            ));
        }
        crate::crawl::sort_listing(&mut all);
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        gammaray_core::listing::write_lines(&all, &mut out)?;
        out.flush()?;
        Ok(())
    }

    /// Sends the pending events; true if there were any.
    fn emit(&mut self) -> bool {
        if self.events.is_empty() {
            return false;
        }
        self.stats
            .events
            .fetch_add(self.events.len() as u64, Ordering::Relaxed);
        self.out
            .emit(&self.host, &self.vm, &mut self.seq, &mut self.events);
        true
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
