//! A VM whose writes come from a recorded dm-log-writes trace (a `replay`
//! source): the trace is followed over the disk image it started from,
//! kept read-only under an in-memory overlay, optionally at the pace it
//! was recorded at.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{FileDevice, OverlayDevice};
use gammaray_qemu::dmlog::{ReadOptions, TraceReader};

use super::pipeline::{Pipeline, VmContext};
use crate::crawl::Warnings;
use crate::follow::start_followers;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplaySpec {
    /// VM name (in events and channels).
    pub vm: String,
    /// The image the trace started from (never written).
    pub disk: PathBuf,
    /// The dm-log-writes trace.
    pub log: PathBuf,
    /// Follow the trace at its recorded timing (entries without a time,
    /// as QEMU's `blklogwrites` writes them, are not delayed).
    pub pace: bool,
}

/// Follows `spec.log` over `spec.disk` into `out`, until the trace ends or
/// `stop` is set.
pub fn replay_vm(spec: &ReplaySpec, ctx: &VmContext) -> Result<()> {
    let (cfg, stats, stop) = (&ctx.infer, ctx.stats.clone(), &ctx.stop);
    let base = FileDevice::open(&spec.disk)
        .with_context(|| format!("vm {}: opening disk {}", spec.vm, spec.disk.display()))?;
    let trace = File::open(&spec.log)
        .with_context(|| format!("vm {}: opening trace {}", spec.vm, spec.log.display()))?;
    let reader = TraceReader::with_options(
        trace,
        ReadOptions {
            past_super_count: true,
            tail: None,
        },
    )
    .with_context(|| format!("vm {}: reading trace {}", spec.vm, spec.log.display()))?;
    let mut warnings = Warnings::default();
    let followers = match start_followers(&base, &spec.disk, cfg, &mut warnings)? {
        Ok(f) => f,
        Err(why) => bail!(
            "vm {}: nothing to follow on {}: {why}",
            spec.vm,
            spec.disk.display()
        ),
    };
    let mut overlay = OverlayDevice::new(Box::new(base));
    let mut pipe = Pipeline::new(followers, &spec.vm, ctx);
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    for item in reader {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let entry = match item {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(vm = %spec.vm, "trace {}: {e}; stopped there", spec.log.display());
                break;
            }
        };
        let w = entry.write;
        if spec.pace && w.ts_ns > 0 {
            let t0 = *first_ts.get_or_insert(w.ts_ns);
            let due = started + Duration::from_nanos(w.ts_ns.saturating_sub(t0));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        stats.writes.fetch_add(1, Ordering::Relaxed);
        stats.bytes.fetch_add(w.len, Ordering::Relaxed);
        stats
            .queued_bytes
            .fetch_add(w.data.len() as u64, Ordering::Relaxed);
        pipe.write(&overlay, &w, Instant::now())?;
        overlay.apply(&w);
    }
    pipe.finish(&overlay)
}
