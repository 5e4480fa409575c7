//! `gammaray crawl`: index a raw disk image, write the index beside it, and
//! optionally print the state listing.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gammaray_core::index::{self, DiskIndex};
use gammaray_core::listing::{self, ListingEntry};
use gammaray_core::partition::{read_partitions, Partition, PartitionTable};
use gammaray_core::{BlockDevice, FileDevice, FileSystem, FsModel, Progress, SliceDevice};
use indicatif::{ProgressBar, ProgressStyle};

use crate::CrawlArgs;

/// Warnings printed one by one before the rest are only counted.
const MAX_WARNINGS_SHOWN: usize = 20;

/// The file systems gammaray knows, probed in this order.
pub(crate) fn drivers() -> Vec<Box<dyn FileSystem>> {
    vec![Box::new(gammaray_ext4::Ext4)]
}

/// An indicatif bar behind gammaray's [`Progress`] trait; hidden unless
/// stderr is a terminal.
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Bar {
    pub(crate) fn new(label: String) -> Self {
        let pb = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} inodes ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_prefix(label);
        Bar(pb)
    }
}

impl Progress for Bar {
    fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
}

/// Counts and prints warnings, the first few in full.
#[derive(Default)]
pub(crate) struct Warnings {
    pub(crate) count: usize,
}

impl Warnings {
    pub(crate) fn report(&mut self, context: &str, w: &dyn std::fmt::Display) {
        self.count += 1;
        if self.count <= MAX_WARNINGS_SHOWN {
            tracing::warn!("{context}: {w}");
            eprintln!("gammaray: warning: {context}: {w}");
        }
    }
}

/// One partition whose file system a driver recognised and crawled.
pub(crate) struct CrawledPart {
    /// The partition.
    pub partition: Partition,
    /// Index of its driver in the list given to [`crawl_partitions`].
    pub driver: usize,
    /// The crawl's model.
    pub model: FsModel,
}

/// Reads `dev`'s partition table and crawls every partition whose file
/// system one of `drivers` recognises. Partitions that fail to crawl become
/// warnings.
pub(crate) fn crawl_partitions(
    dev: &dyn BlockDevice,
    disk: &Path,
    drivers: &[Box<dyn FileSystem>],
    warnings: &mut Warnings,
) -> Result<(PartitionTable, Vec<CrawledPart>)> {
    let table = read_partitions(dev)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    for w in &table.warnings {
        warnings.report("partition table", w);
    }
    let mut crawled = Vec::new();
    for p in &table.partitions {
        let part = SliceDevice::new(dev, p.start, p.len)
            .with_context(|| format!("partition {} does not fit in the disk", p.number))?;
        let Some(driver) = drivers.iter().position(|d| d.probe(&part)) else {
            tracing::info!("partition {}: no known file system", p.number);
            continue;
        };
        let name = drivers[driver].name();
        let bar = Bar::new(format!("part {} {name}", p.number));
        let crawl = drivers[driver].crawl(&part, &bar);
        bar.0.finish_and_clear();
        match crawl {
            Ok(c) => {
                for w in &c.warnings {
                    warnings.report(&format!("partition {}", p.number), w);
                }
                crawled.push(CrawledPart {
                    partition: p.clone(),
                    driver,
                    model: c.model,
                });
            }
            Err(e) => warnings.report(&format!("partition {} ({name})", p.number), &e),
        }
    }
    Ok((table, crawled))
}

/// Crawls every partition of `dev` whose file system a driver recognises.
pub(crate) fn crawl_disk(
    dev: &FileDevice,
    disk: &Path,
    warnings: &mut Warnings,
) -> Result<DiskIndex> {
    let (table, crawled) = crawl_partitions(dev, disk, &drivers(), warnings)?;
    Ok(DiskIndex {
        disk_size: dev.size(),
        scheme: table.scheme,
        partitions: table.partitions,
        filesystems: crawled
            .into_iter()
            .map(|c| (c.partition.number, c.model))
            .collect(),
    })
}

/// The listing of one file system, hashed from `pdev` (the partition's
/// window) when given.
pub(crate) fn part_listing(
    part: u32,
    model: &FsModel,
    pdev: Option<&dyn BlockDevice>,
    warnings: &mut Warnings,
) -> Vec<ListingEntry> {
    let (mut entries, ws) = listing::list(model, part);
    for w in &ws {
        warnings.report(&format!("partition {part} listing"), w);
    }
    if let Some(pdev) = pdev {
        for w in listing::add_hashes(&mut entries, model, pdev) {
            warnings.report(&format!("partition {part} hashing"), &w);
        }
    }
    entries
}

/// Sorts a listing by part, then path bytes (the state listing's order).
pub(crate) fn sort_listing(all: &mut [ListingEntry]) {
    all.sort_by(|a, b| (a.part, a.path.as_bytes()).cmp(&(b.part, b.path.as_bytes())));
}

/// The listing of every file system in `index`, sorted by part then path.
pub(crate) fn disk_listing(
    index: &DiskIndex,
    dev: Option<&FileDevice>,
    warnings: &mut Warnings,
) -> Result<Vec<ListingEntry>> {
    let mut all = Vec::new();
    for (part, model) in &index.filesystems {
        let pdev = match dev {
            Some(dev) => {
                let p = index
                    .partitions
                    .iter()
                    .find(|p| p.number == *part)
                    .with_context(|| format!("index has no partition {part}"))?;
                Some(SliceDevice::new(dev, p.start, p.len)?)
            }
            None => None,
        };
        all.extend(part_listing(
            *part,
            model,
            pdev.as_ref().map(|d| d as &dyn BlockDevice),
            warnings,
        ));
    }
    sort_listing(&mut all);
    Ok(all)
}

fn default_index_path(disk: &Path) -> PathBuf {
    let mut s = disk.as_os_str().to_owned();
    s.push(".gammaray");
    PathBuf::from(s)
}

fn count_files(index: &DiskIndex) -> usize {
    index.filesystems.iter().map(|(_, m)| m.files.len()).sum()
}

fn fs_names(index: &DiskIndex) -> String {
    let v: Vec<&str> = index
        .filesystems
        .iter()
        .map(|(_, m): &(u32, FsModel)| m.fs_type.as_str())
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// This process's resident set size, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Runs `gammaray crawl`.
pub fn run(args: &CrawlArgs) -> Result<()> {
    let mut warnings = Warnings::default();
    let dev = FileDevice::open(&args.disk)
        .with_context(|| format!("opening disk image {}", args.disk.display()))?;
    let started = Instant::now();
    let (index, summary) = if let Some(load) = &args.load {
        let before = resident_bytes();
        let index = index::read_index(load)?;
        let took = started.elapsed();
        let files = count_files(&index);
        let resident = match (before, resident_bytes()) {
            (Some(b), Some(a)) => format!(
                "; resident +{} bytes ({:.0} B/file)",
                a.saturating_sub(b),
                a.saturating_sub(b) as f64 / files.max(1) as f64
            ),
            _ => String::new(),
        };
        let summary = format!(
            "loaded {}: {} file systems ({}), {} files in {}{resident}",
            load.display(),
            index.filesystems.len(),
            fs_names(&index),
            files,
            secs(took)
        );
        (index, summary)
    } else {
        let index = crawl_disk(&dev, &args.disk, &mut warnings)?;
        let crawl_time = started.elapsed();
        let out = args
            .output
            .clone()
            .unwrap_or_else(|| default_index_path(&args.disk));
        let bytes = index::write_index(&out, &index)
            .with_context(|| format!("writing index {}", out.display()))?;
        let files = count_files(&index);
        let summary = format!(
            "crawled {}: {} partitions, {} file systems ({}), {} files in {} (+{} to write); index {} bytes ({:.1} B/file) at {}",
            args.disk.display(),
            index.partitions.len(),
            index.filesystems.len(),
            fs_names(&index),
            files,
            secs(crawl_time),
            secs(started.elapsed() - crawl_time),
            bytes,
            bytes as f64 / files.max(1) as f64,
            out.display()
        );
        (index, summary)
    };
    if args.list {
        let entries = disk_listing(&index, args.hash.then_some(&dev), &mut warnings)?;
        let stdout = std::io::stdout();
        let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
        listing::write_lines(&entries, &mut out)?;
        out.flush()?;
    }
    let warn = if warnings.count > 0 {
        format!("; {} warnings", warnings.count)
    } else {
        String::new()
    };
    eprintln!("gammaray: {summary}{warn}");
    // The process is about to exit: freeing a million records one by one
    // would only add to the wall time.
    std::mem::forget(index);
    Ok(())
}
