//! `/metrics` (Prometheus text format) and `/health` on a loopback port.
//!
//! A small HTTP/1.0 responder on its own thread: the engine's state is a
//! handful of atomic counters per VM, read at scrape time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::pipeline::VmStats;

/// Per sink at scrape time: (name, sent, failed, dropped).
pub type SinkCounts = Vec<(String, u64, u64, u64)>;

/// What the endpoint reports: per VM, its name and counters; and a
/// function giving each sink's (name, sent, failed, dropped).
pub struct Registry {
    /// `(vm name, its counters)`.
    pub vms: Vec<(String, Arc<VmStats>)>,
    /// Per-sink counters at scrape time.
    pub sinks: Box<dyn Fn() -> SinkCounts + Send + Sync>,
}

/// Renders the Prometheus text exposition of `reg`.
pub fn render(reg: &Registry) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, u64)>| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            out.push_str(&format!("{name}{{{labels}}} {v}\n"));
        }
    };
    let per_vm = |f: &dyn Fn(&VmStats) -> u64| -> Vec<(String, u64)> {
        reg.vms
            .iter()
            .map(|(n, s)| (format!("vm=\"{}\"", escape(n)), f(s)))
            .collect()
    };
    metric(
        "gammaray_writes_captured_total",
        "Requests captured from the VM's disk.",
        "counter",
        per_vm(&|s| s.writes.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_bytes_captured_total",
        "Bytes of requests captured.",
        "counter",
        per_vm(&|s| s.bytes.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_writes_inferred_total",
        "Requests inference has handled.",
        "counter",
        per_vm(&|s| s.inferred.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_queue_depth",
        "Requests captured and not yet inferred.",
        "gauge",
        per_vm(&|s| {
            s.writes
                .load(Ordering::Relaxed)
                .saturating_sub(s.inferred.load(Ordering::Relaxed))
        }),
    );
    metric(
        "gammaray_write_rate",
        "Requests captured per second, over the last second.",
        "gauge",
        per_vm(&|s| s.write_rate.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_inference_lag_nanoseconds",
        "Time from the last inferred request's arrival to the end of its inference.",
        "gauge",
        per_vm(&|s| s.lag_ns.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_events_total",
        "File events emitted.",
        "counter",
        per_vm(&|s| s.events.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_queue_bytes",
        "Bytes of write data captured and not yet inferred.",
        "gauge",
        per_vm(&|s| s.queued_bytes.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_data_dropped_bytes_total",
        "Bytes of data writes not inspected because the data-drop policy was on.",
        "counter",
        per_vm(&|s| s.dropped_bytes.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_data_drop_episodes_total",
        "Times the data-drop policy switched on.",
        "counter",
        per_vm(&|s| s.drop_episodes.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_inference_restarts_total",
        "Times a partition's inference failed and was rebuilt from the disk.",
        "counter",
        per_vm(&|s| s.restarts.load(Ordering::Relaxed)),
    );
    metric(
        "gammaray_undo_pages",
        "Pages of the disk held as they were for inference (writes not yet inferred).",
        "gauge",
        per_vm(&|s| s.undo_pages.load(Ordering::Relaxed)),
    );
    // The inference's own counters (anomalies, held and expired unknown
    // writes, journal transactions, ...).
    let mut rows: Vec<(String, String, u64)> = Vec::new();
    for (vm, s) in &reg.vms {
        let c = s.counters.lock().unwrap_or_else(|e| e.into_inner());
        for (part, name, v) in c.iter() {
            rows.push((
                name.to_string(),
                format!("vm=\"{}\",part=\"{part}\"", escape(vm)),
                *v,
            ));
        }
    }
    rows.sort();
    let mut last = String::new();
    for (name, labels, v) in rows {
        if name != last {
            out.push_str(&format!(
                "# HELP gammaray_inference_{name} Inference counter {name}.\n# TYPE gammaray_inference_{name} gauge\n"
            ));
            last = name.clone();
        }
        out.push_str(&format!("gammaray_inference_{name}{{{labels}}} {v}\n"));
    }
    let sinks = (reg.sinks)();
    for (metric_name, idx, help) in [
        ("gammaray_sink_events_sent_total", 0, "Events a sink sent."),
        (
            "gammaray_sink_events_failed_total",
            1,
            "Events a sink failed to send.",
        ),
        (
            "gammaray_sink_events_dropped_total",
            2,
            "Events a sink dropped.",
        ),
    ] {
        out.push_str(&format!(
            "# HELP {metric_name} {help}\n# TYPE {metric_name} counter\n"
        ));
        for (name, sent, failed, dropped) in &sinks {
            let v = [*sent, *failed, *dropped][idx];
            out.push_str(&format!("{metric_name}{{sink=\"{}\"}} {v}\n", escape(name)));
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` and `/health` on `addr` from a thread. A port that
/// cannot be bound is reported and the engine goes on without metrics.
pub fn serve(addr: SocketAddr, reg: Arc<Registry>) -> Option<SocketAddr> {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("metrics: cannot listen on {addr}: {e}; going on without /metrics");
            return None;
        }
    };
    let local = listener.local_addr().ok();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = answer(conn, &reg) {
                    tracing::debug!("metrics: {e}");
                }
            }
        })
        .ok()?;
    local
}

fn answer(conn: TcpStream, reg: &Registry) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    // The request line, bounded.
    reader.by_ref().take(8192).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => ("200 OK", render(reg)),
        "/health" => ("200 OK", "ok\n".to_string()),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn metrics_and_health_over_http() {
        let st = Arc::new(VmStats::default());
        st.writes.store(10, Ordering::Relaxed);
        st.inferred.store(7, Ordering::Relaxed);
        st.counters.lock().unwrap().push((1, "anomalies", 2));
        let reg = Arc::new(Registry {
            vms: vec![("web\"1".into(), st)],
            sinks: Box::new(|| vec![("stdout".into(), 5, 0, 1)]),
        });
        let addr = serve("127.0.0.1:0".parse().unwrap(), reg).unwrap();
        let m = get(addr, "/metrics");
        assert!(m.starts_with("HTTP/1.0 200 OK"), "{m}");
        assert!(
            m.contains("gammaray_writes_captured_total{vm=\"web\\\"1\"} 10"),
            "{m}"
        );
        assert!(m.contains("gammaray_queue_depth{vm=\"web\\\"1\"} 3"), "{m}");
        assert!(
            m.contains("gammaray_inference_anomalies{vm=\"web\\\"1\",part=\"1\"} 2"),
            "{m}"
        );
        assert!(
            m.contains("gammaray_sink_events_dropped_total{sink=\"stdout\"} 1"),
            "{m}"
        );
        assert!(get(addr, "/health").ends_with("ok\n"));
        assert!(get(addr, "/nope").starts_with("HTTP/1.0 404"));
    }
}
