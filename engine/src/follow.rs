//! Following a disk's partitions: one inference per file system, shared
//! by `gammaray replay` and `gammaray run`.

use std::path::Path;

use anyhow::{Context, Result};
use gammaray_core::{
    BlockDevice, DiskWrite, Error as CoreError, FileEvent, InferConfig, Inference, SliceDevice,
    WriteFlags,
};

use crate::crawl::{crawl_partitions, drivers, Warnings};

/// One partition whose writes are followed.
pub struct Follower {
    /// Partition number (Linux numbering).
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// File-system driver name.
    pub fs: &'static str,
    /// The partition's inference.
    pub inference: Box<dyn Inference>,
}

/// This machine's host name (Linux), or `localhost`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The request as a partition's inference sees it, or `None` if it does
/// not touch the partition. Marks carry a label, not a range, and go to
/// every partition unchanged.
pub fn for_partition(w: &DiskWrite, f: &Follower) -> Option<DiskWrite> {
    if w.flags.contains(WriteFlags::MARK) {
        return Some(w.clone());
    }
    w.clip(f.start, f.len)
}

/// An inference sees only its partition's window and does not know the
/// partition's number: the engine sets it.
pub fn stamp_part(events: &mut [FileEvent], part: u32) {
    for e in events {
        e.part = part;
    }
}

/// Re-crawls `f`'s partition on `dev` and gives it a new inference (after
/// the old one failed): the model is rebuilt from the disk as `dev` reads
/// it, which must be the state inference had reached.
pub fn restart(f: &mut Follower, dev: &dyn BlockDevice, cfg: &InferConfig) -> Result<()> {
    let drivers = drivers();
    let driver = drivers
        .iter()
        .find(|d| d.name() == f.fs)
        .with_context(|| format!("no driver named {}", f.fs))?;
    let pdev = SliceDevice::new(dev, f.start, f.len)?;
    let crawl = driver
        .crawl(&pdev, &gammaray_core::NoProgress)
        .with_context(|| format!("re-crawling partition {}", f.number))?;
    f.inference = driver
        .infer(&pdev, crawl.model, cfg)
        .with_context(|| format!("restarting inference of partition {}", f.number))?;
    if cfg.lazy_budget_bytes.is_some() {
        release_freed_memory();
    }
    Ok(())
}

/// Crawls `dev` (the disk at `disk`) and starts an inference for every
/// partition whose file system has one. The inner `Err` says why nothing
/// can be followed.
pub fn start_followers(
    dev: &dyn BlockDevice,
    disk: &Path,
    cfg: &InferConfig,
    warnings: &mut Warnings,
) -> Result<std::result::Result<Vec<Follower>, String>> {
    let drivers = drivers();
    let (_, crawled) = crawl_partitions(dev, disk, &drivers, warnings)?;
    let mut followers = Vec::new();
    let mut skipped = Vec::new();
    for c in crawled {
        let p = &c.partition;
        let driver = &drivers[c.driver];
        let pdev = SliceDevice::new(dev, p.start, p.len)
            .with_context(|| format!("partition {} does not fit in the disk", p.number))?;
        match driver.infer(&pdev, c.model, cfg) {
            Ok(inference) => followers.push(Follower {
                number: p.number,
                start: p.start,
                len: p.len,
                fs: driver.name(),
                inference,
            }),
            Err(e @ CoreError::Unsupported { .. }) => {
                eprintln!(
                    "gammaray: partition {} ({}): {} inference unsupported ({e}); its writes are not followed",
                    p.number,
                    driver.name(),
                    driver.name()
                );
                skipped.push(format!("partition {} ({})", p.number, driver.name()));
            }
            Err(e) => {
                warnings.report(
                    &format!(
                        "partition {} ({}): starting inference",
                        p.number,
                        driver.name()
                    ),
                    &e,
                );
                skipped.push(format!("partition {} ({})", p.number, driver.name()));
            }
        }
    }
    if cfg.lazy_budget_bytes.is_some() {
        release_freed_memory();
    }
    if followers.is_empty() {
        let why = if skipped.is_empty() {
            "no partition holds a file system gammaray knows".to_string()
        } else {
            format!("no inference for {}", skipped.join(", "))
        };
        return Ok(Err(why));
    }
    Ok(Ok(followers))
}

/// Gives the memory freed after a crawl back to the system (glibc keeps
/// freed heap pages otherwise): under the lazy-load policy the model just
/// moved to its scratch store, and the resident set should show it.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // takes no pointers and is thread-safe in glibc.
    unsafe {
        libc::malloc_trim(0);
    }
}
