//! `gammaray run`: live VMs, their writes followed as they happen.
//!
//! - [`undo`]: the disk as inference sees it while the guest runs ahead;
//! - [`serve`]: one VM whose disk gammaray serves over NBD.

pub mod attach;
pub mod inferencer;
pub mod metrics;
pub mod pipeline;
pub mod queuer;
pub mod replay_source;
pub mod serve;
pub mod supervisor;
pub mod throttler;
pub mod undo;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{FileEvent, InferConfig};

use gammaray_sinks::{Router, Sink, Stamped};

use crate::{CheckArgs, RunArgs};

/// Runs `gammaray check`.
pub fn check(args: &CheckArgs) -> Result<()> {
    let cfg = gammaray_config::load(Some(&args.config))
        .with_context(|| format!("{}", args.config.display()))?;
    println!(
        "{}: ok ({} VMs, {} sinks, {} routes)",
        args.config.display(),
        cfg.vm.len(),
        cfg.sinks.len(),
        cfg.route.len()
    );
    Ok(())
}

/// Runs `gammaray run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => gammaray_config::load(Some(p)).with_context(|| format!("-c {}", p.display()))?,
        None => gammaray_config::load(None).context("the embedded default configuration")?,
    };
    if let Some(d) = args.duration {
        if !d.is_finite() || d <= 0.0 {
            bail!("--for {d}: expected a positive number of seconds");
        }
    }
    let host = args.host.clone().unwrap_or_else(|| cfg.host.clone());
    // The VMs: the configuration's, and --serve.
    let mut specs: Vec<VmSpec> = Vec::new();
    for vm in &cfg.vm {
        match &vm.source {
            gammaray_config::Source::Serve { socket } => {
                specs.push(VmSpec::Serve(serve::ServeSpec {
                    vm: vm.name.clone(),
                    disk: vm.disk.clone(),
                    socket: socket.clone(),
                }))
            }
            gammaray_config::Source::Replay { log, pace } => {
                specs.push(VmSpec::Replay(replay_source::ReplaySpec {
                    vm: vm.name.clone(),
                    disk: vm.disk.clone(),
                    log: log.clone(),
                    pace: *pace,
                }))
            }
            gammaray_config::Source::Attach {
                qmp,
                drive,
                via,
                copy_rate,
            } => specs.push(VmSpec::Attach(attach::AttachSpec {
                vm: vm.name.clone(),
                disk: vm.disk.clone(),
                qmp: qmp.clone(),
                drive: drive.clone(),
                copy_rate: *copy_rate,
                via: match via {
                    gammaray_config::AttachVia::Mirror => gammaray_qemu::attach::Via::Mirror,
                    gammaray_config::AttachVia::Blklogwrites => {
                        gammaray_qemu::attach::Via::Blklogwrites
                    }
                },
            })),
        }
    }
    if let (Some(disk), Some(socket)) = (&args.serve, &args.socket) {
        let vm = args.vm.clone().unwrap_or_else(|| {
            disk.file_stem()
                .map_or_else(|| "vm".into(), |s| s.to_string_lossy().into_owned())
        });
        if specs.iter().any(|s| s.name() == vm) {
            bail!("--vm {vm}: the configuration already has a VM of that name");
        }
        specs.push(VmSpec::Serve(serve::ServeSpec {
            vm,
            disk: disk.clone(),
            socket: socket.clone(),
        }));
    }
    if specs.is_empty() {
        bail!("no VM to watch: give --serve DISK --socket SOCK, or [[vm]] in a -c configuration");
    }
    let out: Arc<dyn Output> = match (&args.events, args.brief) {
        (Some(p), _) => Arc::new(JsonLines::new(
            Box::new(
                std::fs::File::create(p)
                    .with_context(|| format!("creating --events {}", p.display()))?,
            ),
            false,
        )),
        (None, true) => Arc::new(JsonLines::new(Box::new(std::io::stdout()), true)),
        (None, false) => Arc::new(Routed::new(&cfg)?),
    };
    let icfg = InferConfig {
        unknown_ttl_ns: cfg.policy.unknown_ttl_ms.saturating_mul(1_000_000),
        unknown_budget_bytes: cfg.policy.unknown_budget_bytes,
        lazy_budget_bytes: cfg
            .policy
            .lazy_load
            .enabled
            .then_some(cfg.policy.lazy_load.budget_bytes),
        ..InferConfig::default()
    };

    let dd = &cfg.policy.data_drop;
    let drop_policy = pipeline::DropPolicy {
        enabled: dd.enabled,
        high_bytes: (cfg.policy.queue_bytes as f64 * dd.high_water) as u64,
        low_bytes: (cfg.policy.queue_bytes as f64 * dd.low_water) as u64,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    if let Some(d) = args.duration {
        let stop = stop.clone();
        let started = Instant::now();
        std::thread::spawn(move || {
            while started.elapsed() < Duration::from_secs_f64(d) {
                std::thread::sleep(Duration::from_millis(50));
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
    // One thread per VM; a VM that fails is reported and the others go on.
    let all_stats: Vec<Arc<pipeline::VmStats>> = specs
        .iter()
        .map(|_| Arc::new(pipeline::VmStats::default()))
        .collect();
    if cfg.metrics.enabled {
        let out_for_metrics = out.clone();
        let reg = metrics::Registry {
            vms: specs
                .iter()
                .zip(&all_stats)
                .map(|(s, st)| (s.name().to_string(), st.clone()))
                .collect(),
            sinks: Box::new(move || out_for_metrics.sink_stats()),
        };
        if let Some(addr) = metrics::serve(cfg.metrics.listen, Arc::new(reg)) {
            tracing::info!("metrics on http://{addr}/metrics");
        }
    }
    if let Some(dir) = &args.state_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("--state-dir {}", dir.display()))?;
    }
    // One supervisor per VM, each on its own arbiter (thread), under one
    // actix system; a VM that fails is reported and the others go on.
    let mut vm_stops = Vec::new();
    let system = actix::System::new();
    let outcomes = system.block_on(async {
        let mut waiting = Vec::new();
        for (spec, stats) in specs.into_iter().zip(all_stats) {
            let vm_stop = Arc::new(AtomicBool::new(false));
            vm_stops.push(vm_stop.clone());
            let ctx = pipeline::VmContext {
                host: host.clone(),
                infer: icfg,
                drop_policy,
                queue_bytes: cfg.policy.queue_bytes,
                flush_every: Duration::from_millis(cfg.policy.flush_timeout_ms),
                out: out.clone(),
                stop: vm_stop,
                stats: stats.clone(),
                state_dir: args.state_dir.clone(),
            };
            let name = spec.name().to_string();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let arbiter = actix::Arbiter::new();
            <supervisor::Supervisor as actix::Actor>::start_in_arbiter(
                &arbiter.handle(),
                move |_| supervisor::Supervisor::new(spec, ctx, tx),
            );
            waiting.push((name, stats, rx, arbiter));
        }
        // The global stop (signals, --for) stops every VM.
        let stops = vm_stops.clone();
        let global = stop.clone();
        std::thread::spawn(move || loop {
            if global.load(Ordering::Relaxed) {
                for s in &stops {
                    s.store(true, Ordering::Relaxed);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        });
        let mut outcomes = Vec::new();
        for (name, stats, rx, arbiter) in waiting {
            let r = rx
                .await
                .unwrap_or_else(|_| Err("its supervisor stopped without an outcome".to_string()));
            arbiter.stop();
            outcomes.push((name, stats, r));
        }
        outcomes
    });
    let mut failed = 0;
    for (name, stats, r) in outcomes {
        if let Err(e) = r {
            failed += 1;
            eprintln!("gammaray: vm {name}: {e}");
        }
        eprintln!(
            "gammaray: vm {}: {} requests ({} bytes) captured, {} inferred, {} events; undo log holds {} pages",
            name,
            stats.writes.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed),
            stats.inferred.load(Ordering::Relaxed),
            stats.events.load(Ordering::Relaxed),
            stats.undo_pages.load(Ordering::Relaxed),
        );
        let restarts = stats.restarts.load(Ordering::Relaxed);
        if restarts > 0 {
            eprintln!(
                "gammaray: vm {}: inference restarted {restarts} times, {} requests skipped",
                name,
                stats.skipped.load(Ordering::Relaxed)
            );
        }
        let episodes = stats.drop_episodes.load(Ordering::Relaxed);
        if episodes > 0 {
            eprintln!(
                "gammaray: vm {}: data drop was on {episodes} times, over {} bytes of writes",
                name,
                stats.dropped_bytes.load(Ordering::Relaxed)
            );
        }
        if let Some(line) = lazy_summary(&stats) {
            eprintln!("gammaray: vm {name}: lazy load: {line}");
        }
        if let Some((p50, p99, max, n)) = stats.latency_summary() {
            eprintln!(
                "gammaray: vm {}: arrival to events sent, over {n} requests with events: p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
                name
            );
        }
    }
    out.flush();
    if failed > 0 {
        bail!("{failed} VM(s) failed");
    }
    Ok(())
}

/// The lazy-load policy's counters of a VM (summed over its partitions),
/// as of their last publication; `None` when it loads eagerly.
fn lazy_summary(stats: &pipeline::VmStats) -> Option<String> {
    let c = stats.counters.lock().unwrap_or_else(|e| e.into_inner());
    let sum = |n: &str| -> u64 { c.iter().filter(|k| k.1 == n).map(|k| k.2).sum() };
    if !c.iter().any(|k| k.1.starts_with("lazy_")) {
        return None;
    }
    Some(format!(
        "{} files loaded from the scratch store, {} evicted; {} bytes resident ({} files); store {} bytes",
        sum("lazy_loads"),
        sum("lazy_evictions"),
        sum("lazy_resident_bytes"),
        sum("lazy_resident_files"),
        sum("lazy_store_bytes"),
    ))
}

/// Events to the configuration's sinks, by its routes.
pub struct Routed {
    sinks: Vec<Mutex<Box<dyn Sink>>>,
    router: Router,
}

impl Routed {
    /// Builds every sink of `cfg` and its router. Each sink's server is
    /// checked now (Redis `PING`, Kafka metadata and topic): a sink that
    /// cannot deliver stops `run` before any VM is served.
    pub fn new(cfg: &gammaray_config::Config) -> Result<Self> {
        let names: Vec<String> = cfg.sinks.keys().cloned().collect();
        let mut sinks = Vec::new();
        for (name, sc) in &cfg.sinks {
            // The error names the sink already (`sink "NAME": …`).
            let sink =
                gammaray_sinks::build_checked(name, sc, gammaray_sinks::HEALTH_CHECK_TIMEOUT)?;
            sinks.push(Mutex::new(sink));
        }
        let router = Router::new(&cfg.route, &names).context("route")?;
        Ok(Routed { sinks, router })
    }
}

impl Output for Routed {
    fn emit(&self, host: &str, vm: &str, seq: &mut u64, events: &mut Vec<FileEvent>) {
        let (h, v): (Arc<str>, Arc<str>) = (host.into(), vm.into());
        let mut batches: Vec<Vec<Arc<Stamped>>> = vec![Vec::new(); self.sinks.len()];
        for e in events.drain(..) {
            *seq += 1;
            let st = Arc::new(Stamped::new(*seq, h.clone(), v.clone(), e));
            for t in self.router.targets_for(&st) {
                if let Some(b) = batches.get_mut(t) {
                    b.push(st.clone());
                }
            }
        }
        for (sink, batch) in self.sinks.iter().zip(batches) {
            if batch.is_empty() {
                continue;
            }
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            // Sent is visible (stdout is flushed per batch, files are
            // written per batch); made durable at idle times and at the end.
            if let Err(e) = sink.send(&batch) {
                tracing::warn!("sink {}: {e}", sink.name());
            }
        }
    }

    fn sink_stats(&self) -> Vec<(String, u64, u64, u64)> {
        self.sinks
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                let st = s.stats();
                (s.name().to_string(), st.sent, st.failed, st.dropped)
            })
            .collect()
    }

    fn flush(&self) {
        for sink in &self.sinks {
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = sink.flush() {
                tracing::warn!("sink {}: {e}", sink.name());
            }
        }
    }
}

/// A VM to watch, by where its writes come from.
pub enum VmSpec {
    /// gammaray serves its disk over NBD.
    Serve(serve::ServeSpec),
    /// A recorded trace over its base image.
    Replay(replay_source::ReplaySpec),
    /// A running VM, attached to over QMP.
    Attach(attach::AttachSpec),
}

impl VmSpec {
    /// The VM's name.
    pub fn name(&self) -> &str {
        match self {
            VmSpec::Serve(s) => &s.vm,
            VmSpec::Replay(s) => &s.vm,
            VmSpec::Attach(s) => &s.vm,
        }
    }
}

/// Where a VM's events go.
pub trait Output: Send + Sync {
    /// Stamps `events` (sequence numbers from `seq`, per VM) and sends
    /// them on; `events` is left empty.
    fn emit(&self, host: &str, vm: &str, seq: &mut u64, events: &mut Vec<FileEvent>);
    /// Makes sent events visible.
    fn flush(&self);
    /// Per sink: (name, sent, failed, dropped).
    fn sink_stats(&self) -> Vec<(String, u64, u64, u64)> {
        Vec::new()
    }
}

/// JSON lines (DESIGN.md's event shape) to a writer, flushed per batch.
pub struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
    brief: bool,
}

impl JsonLines {
    /// Events to `out`; `brief` for one short line each instead of JSON.
    pub fn new(out: Box<dyn Write + Send>, brief: bool) -> Self {
        JsonLines {
            out: Mutex::new(out),
            brief,
        }
    }
}

/// `host:vm EVENT /path` plus what changed, for people watching.
fn brief_line(e: &FileEvent, host: &str, vm: &str) -> String {
    let mut s = format!("{host}:{vm} {:<6} {}", e.kind.as_str(), e.path);
    if let Some(old) = &e.old_path {
        s.push_str(&format!(" (from {old})"));
    }
    if !e.changed.is_empty() {
        s.push_str(&format!(" [{}]", e.changed.join(",")));
    }
    if let (Some(o), Some(l)) = (e.offset, e.len) {
        s.push_str(&format!(" bytes {o}..{}", o + l));
    }
    if let Some(size) = e.size {
        s.push_str(&format!(" size={size}"));
    }
    if let Some(d) = &e.data {
        let text = String::from_utf8_lossy(&d[..d.len().min(60)]).replace('\n', "\\n");
        s.push_str(&format!(
            " \"{text}{}\"",
            if d.len() > 60 { "…" } else { "" }
        ));
    }
    if let Some(r) = e.reason {
        s.push_str(&format!(" reason={}", r.as_str()));
    }
    s
}

impl Output for JsonLines {
    fn emit(&self, host: &str, vm: &str, seq: &mut u64, events: &mut Vec<FileEvent>) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        for e in events.drain(..) {
            *seq += 1;
            let line = if self.brief {
                brief_line(&e, host, vm)
            } else {
                e.to_json(*seq, host, vm)
            };
            if let Err(err) = out
                .write_all(line.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
            {
                tracing::warn!("writing an event: {err}");
            }
        }
        let _ = out.flush();
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}
