//! `gammaray run`: live VMs, their writes followed as they happen.
//!
//! - [`undo`]: the disk as inference sees it while the guest runs ahead;
//! - [`serve`]: one VM whose disk gammaray serves over NBD.

pub mod serve;
pub mod undo;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gammaray_core::{FileEvent, InferConfig};

use crate::follow::hostname;
use crate::RunArgs;

/// Runs `gammaray run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let vm = args.vm.clone().unwrap_or_else(|| {
        args.serve
            .file_stem()
            .map_or_else(|| "vm".into(), |s| s.to_string_lossy().into_owned())
    });
    let host = args.host.clone().unwrap_or_else(hostname);
    if let Some(d) = args.duration {
        if !d.is_finite() || d <= 0.0 {
            bail!("--for {d}: expected a positive number of seconds");
        }
    }
    let out: Arc<dyn Output> = match &args.events {
        Some(p) => Arc::new(JsonLines::new(
            Box::new(
                std::fs::File::create(p)
                    .with_context(|| format!("creating --events {}", p.display()))?,
            ),
            args.brief,
        )),
        None => Arc::new(JsonLines::new(Box::new(std::io::stdout()), args.brief)),
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
    let spec = serve::ServeSpec {
        vm,
        disk: args.serve.clone(),
        socket: args.socket.clone(),
    };
    let stats = Arc::new(serve::VmStats::default());
    serve::serve_vm(
        &spec,
        &host,
        &InferConfig::default(),
        out,
        stop,
        stats.clone(),
    )?;
    eprintln!(
        "gammaray: vm {}: {} requests ({} bytes) captured, {} inferred, {} events; undo log holds {} pages",
        spec.vm,
        stats.writes.load(Ordering::Relaxed),
        stats.bytes.load(Ordering::Relaxed),
        stats.inferred.load(Ordering::Relaxed),
        stats.events.load(Ordering::Relaxed),
        stats.undo_pages.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Where a VM's events go.
pub trait Output: Send + Sync {
    /// Stamps `events` (sequence numbers from `seq`, per VM) and sends
    /// them on; `events` is left empty.
    fn emit(&self, host: &str, vm: &str, seq: &mut u64, events: &mut Vec<FileEvent>);
    /// Makes sent events visible.
    fn flush(&self);
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
