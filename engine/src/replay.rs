//! `gammaray replay`: follow a recorded dm-log-writes trace over the image
//! it started from, emitting file events and, optionally, the final state
//! listing.
//!
//! With `--sink URL` (repeatable) every event is also handed, in batches
//! of [`SINK_BATCH`] events, to the sink the URL names (`redis://…`,
//! `file:…`; see `gammaray_sinks::from_url`), through the same sink code
//! as `gammaray run`.
//!
//! The base image is opened read-only; the trace's writes are kept in an
//! [`OverlayDevice`] in memory. Each write is shown to every partition's
//! inference *before* it is applied, so the inference can compare old and
//! new contents.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use gammaray_core::{
    BlockDevice, EventKind, FileDevice, FileEvent, InferConfig, OverlayDevice, SliceDevice,
};
use gammaray_qemu::dmlog::{ReadOptions, TraceEntry, TraceError, TraceReader};
use gammaray_sinks::{Sink, Stamped};
use indicatif::{ProgressBar, ProgressStyle};

use crate::crawl::{part_listing, sort_listing, Warnings};
use crate::follow::{for_partition, hostname, stamp_part, start_followers, Follower};
use crate::ReplayArgs;

/// Where events go, stamped with sequence number, host and VM.
struct EventSink {
    out: Box<dyn Write>,
    path: String,
    host: String,
    vm: String,
    seq: u64,
    by_kind: BTreeMap<&'static str, u64>,
    /// The `--sink` sinks.
    extra: Vec<Box<dyn Sink>>,
    /// Events for them not sent yet (sent by [`SINK_BATCH`]).
    pending: Vec<Arc<Stamped>>,
}

/// Events are handed to the `--sink` sinks in batches of this many (one
/// Redis pipeline each), and at the end.
const SINK_BATCH: usize = 512;

impl EventSink {
    fn emit(&mut self, events: &mut Vec<FileEvent>) -> Result<()> {
        let (host, vm): (Arc<str>, Arc<str>) = (self.host.as_str().into(), self.vm.as_str().into());
        for e in events.drain(..) {
            self.seq += 1;
            *self.by_kind.entry(e.kind.as_str()).or_default() += 1;
            let line = e.to_json(self.seq, &self.host, &self.vm);
            self.out
                .write_all(line.as_bytes())
                .and_then(|()| self.out.write_all(b"\n"))
                .with_context(|| format!("writing events to {}", self.path))?;
            if !self.extra.is_empty() {
                self.pending.push(Arc::new(Stamped::new(
                    self.seq,
                    host.clone(),
                    vm.clone(),
                    e,
                )));
            }
        }
        if self.pending.len() >= SINK_BATCH {
            self.send_pending();
        }
        Ok(())
    }

    /// Hands the pending events to every `--sink` sink.
    fn send_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        for s in &mut self.extra {
            if let Err(e) = s.send(&self.pending) {
                tracing::warn!("--sink {}: {e}", s.name());
            }
        }
        self.pending.clear();
    }
}

/// Builds the `--sink URL` sinks and checks that each one's server
/// answers (a replay fails at once rather than wait for a broker or a topic
/// that is not there).
fn build_sinks(urls: &[String]) -> Result<Vec<Box<dyn Sink>>> {
    urls.iter()
        .map(|url| {
            let cfg = gammaray_sinks::from_url(url).map_err(|e| anyhow!("--sink {e}"))?;
            let name = gammaray_sinks::redis::redact_url(url);
            gammaray_sinks::build_checked(&name, &cfg, gammaray_sinks::HEALTH_CHECK_TIMEOUT)
                .with_context(|| format!("--sink {name}"))
        })
        .collect()
}

/// A progress bar over the trace's bytes, hidden unless stderr is a terminal.
fn trace_bar(len: u64) -> ProgressBar {
    let pb = if std::io::stderr().is_terminal() {
        ProgressBar::new(len)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "replay [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

/// How long each call of [`Inference::write`] took: the figures of the
/// replay benchmark (inference alone, without reading the trace, applying
/// it to the overlay or writing events).
#[derive(Debug, Default)]
struct Timings {
    /// Nanoseconds per call (saturating at 4 s).
    ns: Vec<u32>,
    /// Bytes of the requests timed.
    bytes: u64,
}

impl Timings {
    fn record(&mut self, d: std::time::Duration, bytes: u64) {
        self.ns
            .push(u32::try_from(d.as_nanos()).unwrap_or(u32::MAX));
        self.bytes += bytes;
    }

    /// `inference: T s, X MB/s, N writes/s; per write p50 A us, p99 B us, max C us`.
    fn describe(&mut self) -> String {
        if self.ns.is_empty() {
            return "inference: no writes".into();
        }
        self.ns.sort_unstable();
        let total: u64 = self.ns.iter().map(|&n| u64::from(n)).sum();
        let secs = (total as f64 / 1e9).max(1e-9);
        let pct = |p: f64| {
            let i = ((self.ns.len() as f64 - 1.0) * p).round() as usize;
            f64::from(self.ns[i.min(self.ns.len() - 1)]) / 1e3
        };
        format!(
            "inference: {:.3} s, {:.1} MB/s, {:.0} writes/s; per write p50 {:.1} us, p99 {:.1} us, max {:.1} us",
            secs,
            self.bytes as f64 / 1e6 / secs,
            self.ns.len() as f64 / secs,
            pct(0.50),
            pct(0.99),
            pct(1.0),
        )
    }
}

/// Feeds every entry of `trace` to the followers, then applies it to
/// `overlay`, and emits the events. Returns the number of entries read and
/// the error that ended the trace early, if any. The progress bar shows
/// `bar_base` plus the entry's offset in its trace.
fn follow(
    trace: &mut dyn Iterator<Item = Result<TraceEntry, TraceError>>,
    overlay: &mut OverlayDevice,
    followers: &mut [Follower],
    sink: &mut EventSink,
    bar: &ProgressBar,
    bar_base: u64,
    timings: &mut Timings,
) -> Result<(u64, Option<TraceError>)> {
    let mut events: Vec<FileEvent> = Vec::new();
    let mut entries = 0u64;
    let mut last_ts = 0u64;
    let mut error = None;
    for item in trace {
        let entry = match item {
            Ok(e) => e,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        entries += 1;
        let w = entry.write;
        if w.ts_ns > last_ts {
            last_ts = w.ts_ns;
            for f in followers.iter_mut() {
                let before = SliceDevice::new(&*overlay, f.start, f.len)?;
                let from = events.len();
                f.inference.tick(&before, w.ts_ns, &mut events);
                stamp_part(&mut events[from..], f.number);
            }
        }
        for f in followers.iter_mut() {
            if let Some(clipped) = for_partition(&w, f) {
                let before = SliceDevice::new(&*overlay, f.start, f.len)?;
                let from = events.len();
                let t0 = Instant::now();
                f.inference.write(&before, &clipped, &mut events);
                timings.record(t0.elapsed(), clipped.len);
                stamp_part(&mut events[from..], f.number);
            }
        }
        overlay.apply(&w);
        sink.emit(&mut events)?;
        // Cheap: indicatif only redraws a few times a second.
        bar.set_position(bar_base + entry.log_offset);
    }
    // The trace ended: what waits for a flush that will not come is
    // applied now.
    for f in followers.iter_mut() {
        let dev = SliceDevice::new(&*overlay, f.start, f.len)?;
        let from = events.len();
        f.inference.settle(&dev, &mut events);
        stamp_part(&mut events[from..], f.number);
    }
    sink.emit(&mut events)?;
    Ok((entries, error))
}

/// Runs `gammaray replay`.
pub fn run(args: &ReplayArgs) -> Result<()> {
    let started = Instant::now();
    // The sinks first: a bad --sink fails before any work.
    let extra = build_sinks(&args.sinks)?;
    let base = FileDevice::open(&args.disk)
        .with_context(|| format!("opening --disk {}", args.disk.display()))?;
    // Open every trace first, so that a missing one fails before any work.
    let mut readers = Vec::with_capacity(args.log.len());
    let mut trace_len = 0u64;
    for log in &args.log {
        let trace_file =
            File::open(log).with_context(|| format!("opening --log {}", log.display()))?;
        let len = trace_file.metadata().map(|m| m.len()).unwrap_or(0);
        let is_file = trace_file.metadata().map(|m| m.is_file()).unwrap_or(false);
        // A writer that stopped without a final flush leaves entries past the
        // super's count; on a regular file they are real. (On a block device,
        // stale entries of an older run may follow, so stop at the count.)
        let opts = ReadOptions {
            past_super_count: is_file,
            tail: None,
        };
        let reader = TraceReader::with_options(trace_file, opts)
            .with_context(|| format!("reading --log {}", log.display()))?;
        readers.push((log, reader, trace_len));
        trace_len += len;
    }

    let mut cfg = InferConfig {
        lazy_budget_bytes: args.lazy_load,
        ..InferConfig::default()
    };
    if let Some(secs) = args.unknown_ttl {
        if !secs.is_finite() || secs < 0.0 {
            bail!("--unknown-ttl {secs}: expected a non-negative number of seconds");
        }
        cfg.unknown_ttl_ns = (secs * 1e9) as u64;
    }
    if let Some(b) = args.unknown_budget {
        cfg.unknown_budget_bytes = b;
    }

    // Crawl the base image and start one inference per file system.
    let mut warnings = Warnings::default();
    let followers = start_followers(&base, &args.disk, &cfg, &mut warnings)?;
    let mut followers = match followers {
        Ok(f) => f,
        Err(why) => bail!("nothing to replay on --disk {}: {why}", args.disk.display()),
    };

    let host = args.host.clone().unwrap_or_else(hostname);
    let vm = args.vm.clone().unwrap_or_else(|| {
        args.disk
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vm".into())
    });
    let (out, path): (Box<dyn Write>, String) = match &args.events {
        Some(p) => (
            Box::new(BufWriter::with_capacity(
                1 << 20,
                File::create(p).with_context(|| format!("creating --events {}", p.display()))?,
            )),
            p.display().to_string(),
        ),
        None => (
            Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout())),
            "stdout".into(),
        ),
    };
    let mut sink = EventSink {
        out,
        path,
        host,
        vm,
        seq: 0,
        by_kind: BTreeMap::new(),
        extra,
        pending: Vec::new(),
    };

    // Follow the traces, in order, over one overlay and one inference per
    // partition: a later trace continues where the one before left the
    // disk (for example the next boot of the same VM).
    let mut overlay = match &args.scratch {
        Some(path) => OverlayDevice::with_scratch(Box::new(base.clone()), path)
            .with_context(|| format!("making --scratch {}", path.display()))?,
        None => OverlayDevice::new(Box::new(base.clone())),
    };
    let bar = trace_bar(trace_len);
    let replay_started = Instant::now();
    let mut timings = Timings::default();
    let mut entries = 0u64;
    let mut per_log = Vec::with_capacity(readers.len());
    for (log, mut reader, bar_base) in readers {
        let seq_before = sink.seq;
        let (n, trace_error) = follow(
            &mut reader,
            &mut overlay,
            &mut followers,
            &mut sink,
            &bar,
            bar_base,
            &mut timings,
        )?;
        entries += n;
        per_log.push((log, n, sink.seq - seq_before));
        match trace_error {
            None => {}
            Some(e) if n == 0 => {
                bar.finish_and_clear();
                bail!("--log {}: no entry could be read: {e}", log.display());
            }
            Some(e @ TraceError::Truncated { .. }) => {
                bar.suspend(|| {
                    eprintln!(
                        "gammaray: warning: --log {} has a truncated tail ({e}); replayed the {n} entries before it",
                        log.display()
                    )
                });
            }
            Some(e) => {
                bar.suspend(|| {
                    eprintln!(
                        "gammaray: warning: --log {}: bad entry ({e}); stopped after {n} entries",
                        log.display()
                    )
                });
            }
        }
    }
    bar.finish_and_clear();
    sink.out
        .flush()
        .with_context(|| format!("writing events to {}", sink.path))?;
    let replay_time = replay_started.elapsed();
    if per_log.len() > 1 {
        for (log, n, evs) in &per_log {
            eprintln!(
                "gammaray: --log {}: {n} entries, {evs} events",
                log.display()
            );
        }
    }

    // The final state, hashed from the disk as the trace leaves it.
    if let Some(state) = &args.state {
        let mut all = Vec::new();
        for f in &followers {
            let pdev = SliceDevice::new(&overlay, f.start, f.len)?;
            all.extend(part_listing(
                f.number,
                &f.inference.model(),
                args.hash.then_some(&pdev as &dyn BlockDevice),
                &mut warnings,
            ));
        }
        sort_listing(&mut all);
        let file =
            File::create(state).with_context(|| format!("creating --state {}", state.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        gammaray_core::listing::write_lines(&all, &mut out)
            .and_then(|()| out.flush())
            .with_context(|| format!("writing --state {}", state.display()))?;
    }

    sink.send_pending();
    let mut undelivered = Vec::new();
    for s in &mut sink.extra {
        if let Err(e) = s.flush() {
            tracing::warn!("--sink {}: {e}", s.name());
        }
        let st = s.stats();
        eprintln!(
            "gammaray: --sink {}: {} events sent, {} failed, {} dropped",
            s.name(),
            st.sent,
            st.failed,
            st.dropped
        );
        if st.failed + st.dropped > 0 {
            undelivered.push(format!(
                "--sink {}: {} of {} events not delivered",
                s.name(),
                st.failed + st.dropped,
                sink.seq
            ));
        }
    }

    summary(
        &args.log,
        entries,
        &overlay,
        &sink,
        &followers,
        replay_time.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        warnings.count,
        &mut timings,
    );
    if !undelivered.is_empty() {
        bail!("{}", undelivered.join("; "));
    }
    Ok(())
}

/// The summary line on stderr.
#[allow(clippy::too_many_arguments)]
fn summary(
    logs: &[PathBuf],
    entries: u64,
    overlay: &OverlayDevice,
    sink: &EventSink,
    followers: &[Follower],
    replay_secs: f64,
    total_secs: f64,
    warnings: usize,
    timings: &mut Timings,
) {
    let st = overlay.stats();
    let kinds: Vec<String> = [
        EventKind::Create,
        EventKind::Delete,
        EventKind::Modify,
        EventKind::Attrib,
        EventKind::Move,
        EventKind::Lost,
    ]
    .iter()
    .map(|k| {
        format!(
            "{} {}",
            k.as_str(),
            sink.by_kind.get(k.as_str()).unwrap_or(&0)
        )
    })
    .collect();
    let counters: Vec<String> = followers
        .iter()
        .flat_map(|f| {
            f.inference
                .counters()
                .into_iter()
                .filter(|c| c.value != 0)
                .map(move |c| format!("p{}.{}={}", f.number, c.name, c.value))
        })
        .collect();
    let parts: Vec<String> = followers
        .iter()
        .map(|f| format!("{} ({})", f.number, f.fs))
        .collect();
    let secs = replay_secs.max(1e-9);
    let mut line = format!(
        "gammaray: replayed {}: {entries} entries, {} writes, {} bytes, {} flushes, {} discards, {} zeroes; \
         {} events ({}); partitions {}; held {} bytes; {:.3} s replay ({:.1} MB/s, {:.0} writes/s), {:.3} s total",
        logs.iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        st.writes,
        st.bytes,
        st.flushes,
        st.discards,
        st.zeroes,
        sink.seq,
        kinds.join(", "),
        parts.join(", "),
        overlay.bytes_held(),
        replay_secs,
        st.bytes as f64 / 1e6 / secs,
        st.writes as f64 / secs,
        total_secs,
    );
    if st.clipped > 0 {
        line.push_str(&format!(
            "; {} requests clipped at the disk's end ({} bytes)",
            st.clipped, st.clipped_bytes
        ));
    }
    line.push_str(&format!("; {}", timings.describe()));
    if !counters.is_empty() {
        line.push_str(&format!("; counters: {}", counters.join(" ")));
    }
    if warnings > 0 {
        line.push_str(&format!("; {warnings} warnings"));
    }
    eprintln!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use gammaray_core::{Counter, DiskWrite, FileType, FsModel, Inference, WriteFlags};
    use std::sync::{Arc, Mutex};

    /// (offset, len, flags, 4 bytes before the write) per write shown.
    type Seen = Arc<Mutex<Vec<(u64, u64, WriteFlags, Vec<u8>)>>>;

    /// Records what it was shown: (offset, len, flags, the 4 bytes at the
    /// write's offset *before* it) and emits one modify event per write.
    struct Spy {
        seen: Seen,
        model: FsModel,
    }

    impl Inference for Spy {
        fn write(&mut self, before: &dyn BlockDevice, w: &DiskWrite, out: &mut Vec<FileEvent>) {
            let mut b = vec![0u8; 4];
            if w.len > 0 && !w.flags.contains(WriteFlags::MARK) {
                before.read_at(w.offset, &mut b).unwrap();
            }
            self.seen
                .lock()
                .unwrap()
                .push((w.offset, w.len, w.flags, b));
            if w.has_data() {
                out.push(FileEvent::new(
                    1,
                    EventKind::Modify,
                    "/f".into(),
                    FileType::File,
                    12,
                ));
            }
        }
        fn tick(&mut self, _: &dyn BlockDevice, _: u64, _: &mut Vec<FileEvent>) {}
        fn model(&self) -> std::borrow::Cow<'_, FsModel> {
            std::borrow::Cow::Borrowed(&self.model)
        }
        fn counters(&self) -> Vec<Counter> {
            Vec::new()
        }
    }

    #[test]
    fn inference_sees_each_write_clipped_and_before_it_is_applied() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let spy = Spy {
            seen: seen.clone(),
            model: FsModel::new("spy", 4096, 2),
        };
        let mut followers = vec![Follower {
            number: 3,
            start: 4096,
            len: 8192,
            fs: "spy",
            inference: Box::new(spy),
        }];
        let mut overlay = OverlayDevice::new(Box::new(vec![0u8; 16384]));
        let trace: Vec<Result<TraceEntry, TraceError>> = [
            DiskWrite::write(0, 4096, Bytes::from(vec![1u8; 4096])),
            DiskWrite::write(1, 4096, Bytes::from(vec![2u8; 512])),
            DiskWrite::flush(2),
            // Straddles the partition's end: only 512 bytes are inside.
            DiskWrite::write(3, 12288 - 512, Bytes::from(vec![3u8; 1024])),
            // Wholly outside.
            DiskWrite::write(4, 0, Bytes::from(vec![4u8; 512])),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, write)| {
            Ok(TraceEntry {
                index: i as u64,
                log_offset: 0,
                write,
            })
        })
        .collect();
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut sink = EventSink {
            out: Box::new(Shared(buf.clone())),
            path: "test".into(),
            host: "h".into(),
            vm: "v".into(),
            seq: 0,
            by_kind: BTreeMap::new(),
            extra: Vec::new(),
            pending: Vec::new(),
        };
        let mut timings = Timings::default();
        let (n, err) = follow(
            &mut trace.into_iter(),
            &mut overlay,
            &mut followers,
            &mut sink,
            &ProgressBar::hidden(),
            0,
            &mut timings,
        )
        .unwrap();
        assert_eq!((n, err.is_none()), (5, true));
        let seen = seen.lock().unwrap();
        assert_eq!(timings.ns.len(), seen.len());
        assert_eq!(
            *seen,
            vec![
                (0, 4096, WriteFlags::empty(), vec![0; 4]),
                (0, 512, WriteFlags::empty(), vec![1; 4]),
                (0, 0, WriteFlags::FLUSH, vec![0; 4]),
                (8192 - 512, 512, WriteFlags::empty(), vec![0; 4]),
            ]
        );
        // The overlay has every write, including the one outside.
        let mut b = [0u8; 1];
        overlay.read_at(0, &mut b).unwrap();
        assert_eq!(b, [4]);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(text.lines().all(|l| l.contains(r#""part":3"#)), "{text}");
        assert_eq!(sink.by_kind.get("modify"), Some(&3));
    }
}
