//! A VM whose writes come from a recorded dm-log-writes trace (a `replay`
//! source): the trace is followed over the disk image it started from,
//! kept read-only under an in-memory overlay, optionally at the pace it
//! was recorded at.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{BlockDevice, DiskWrite, FileDevice, OverlayDevice};
use gammaray_qemu::dmlog::{ReadOptions, TraceReader};

use super::inferencer::DiskView;
use super::pipeline::Pipeline;
use super::supervisor::{Ready, SourceKit};
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

/// Reads `spec.log` into `kit.tx` until the trace ends or the VM's stop
/// flag is set; inference follows it over `spec.disk` (never written: the
/// trace's writes go to an in-memory overlay).
pub fn run(spec: &ReplaySpec, kit: SourceKit) -> Result<()> {
    let SourceKit { ctx, tx, ready } = kit;
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
    let followers = match start_followers(&base, &spec.disk, &ctx.infer, &mut warnings)? {
        Ok(f) => f,
        Err(why) => bail!(
            "vm {}: nothing to follow on {}: {why}",
            spec.vm,
            spec.disk.display()
        ),
    };
    ready.do_send(Ready {
        pipe: Pipeline::new(followers, &spec.vm, &ctx),
        disk: Box::new(OverlayDisk(OverlayDevice::new(Box::new(base)))),
    });
    let started = Instant::now();
    let mut first_ts: Option<u64> = None;
    for item in reader {
        if ctx.stop.load(Ordering::Relaxed) {
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
        if tx.blocking_send(w).is_err() {
            break;
        }
    }
    Ok(())
}

/// The trace's base image with the writes followed so far laid over it.
struct OverlayDisk(OverlayDevice);

impl DiskView for OverlayDisk {
    fn follow(
        &mut self,
        w: &DiskWrite,
        f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>,
    ) -> Result<()> {
        f(&self.0)?;
        self.0.apply(w);
        Ok(())
    }

    fn current(&mut self, f: &mut dyn FnMut(&dyn BlockDevice) -> Result<()>) -> Result<()> {
        f(&self.0)
    }
}
