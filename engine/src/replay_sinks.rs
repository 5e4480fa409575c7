//! `gammaray replay --sink URL`: the sinks a replay publishes its events to
//! besides the JSON lines, built from URLs through the same sink code as
//! `gammaray run`'s `[sinks.NAME]`.
//!
//! Schemes: `kafka://HOST:PORT[,HOST:PORT…]/TOPIC` (every other Kafka key
//! at its default: JSON values, `host:vm:/path` keys, `acks = all`,
//! idempotent, `when_full = block`). A scheme is parsed here and mapped to
//! a [`SinkConfig`]; other sink types join as one arm each.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use gammaray_config::{KafkaSinkConfig, SinkConfig};
use gammaray_core::FileEvent;
use gammaray_sinks::kafka::KafkaSink;
use gammaray_sinks::{Sink, Stamped};

/// How long a `--sink`'s health check may take at start.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The sink configuration a `--sink URL` names.
pub fn config_from_url(url: &str) -> Result<SinkConfig> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "kafka" => KafkaSinkConfig::from_url(url)
            .map(SinkConfig::Kafka)
            .map_err(|m| anyhow!("--sink {m}")),
        _ => bail!("--sink {url:?}: unknown scheme (expected kafka://HOST:PORT/TOPIC)"),
    }
}

/// The `--sink` sinks of one replay, with the host and VM names events are
/// stamped with.
pub struct ReplaySinks {
    sinks: Vec<Box<dyn Sink>>,
    host: Arc<str>,
    vm: Arc<str>,
}

impl ReplaySinks {
    /// Builds a sink per URL (each named after its URL).
    pub fn new(urls: &[String], host: &str, vm: &str) -> Result<ReplaySinks> {
        let mut sinks = Vec::with_capacity(urls.len());
        for url in urls {
            let cfg = config_from_url(url)?;
            let sink: Box<dyn Sink> = match &cfg {
                SinkConfig::Kafka(k) => {
                    let s = KafkaSink::new(url, k).with_context(|| format!("--sink {url}"))?;
                    // A replay should fail at once rather than wait for a
                    // broker or a topic that is not there.
                    s.health_check(HEALTH_TIMEOUT)
                        .with_context(|| format!("--sink {url}"))?;
                    Box::new(s)
                }
                _ => gammaray_sinks::build(url, &cfg).with_context(|| format!("--sink {url}"))?,
            };
            sinks.push(sink);
        }
        Ok(ReplaySinks {
            sinks,
            host: host.into(),
            vm: vm.into(),
        })
    }

    /// No sinks: events only go to the JSON lines.
    #[cfg(test)]
    pub fn none() -> ReplaySinks {
        ReplaySinks {
            sinks: Vec::new(),
            host: "".into(),
            vm: "".into(),
        }
    }

    /// Whether there is any sink (else events need not be stamped).
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Stamps an event for the sinks.
    pub fn stamp(&self, seq: u64, event: FileEvent) -> Arc<Stamped> {
        Arc::new(Stamped::new(seq, self.host.clone(), self.vm.clone(), event))
    }

    /// Sends a batch to every sink.
    pub fn send(&mut self, batch: &[Arc<Stamped>]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        for s in &mut self.sinks {
            s.send(batch)?;
        }
        Ok(())
    }

    /// Flushes every sink and prints its counters on stderr; fails if a
    /// sink could not deliver everything.
    pub fn finish(&mut self) -> Result<()> {
        for s in &mut self.sinks {
            let flushed = s.flush();
            let st = s.stats();
            eprintln!(
                "gammaray: --sink {}: sent {}, failed {}, dropped {}",
                s.name(),
                st.sent,
                st.failed,
                st.dropped
            );
            flushed?;
            if st.failed > 0 {
                bail!(
                    "--sink {}: {} events could not be delivered",
                    s.name(),
                    st.failed
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_by_scheme() {
        match config_from_url("kafka://127.0.0.1:9092/t").unwrap() {
            SinkConfig::Kafka(k) => {
                assert_eq!(k.brokers, "127.0.0.1:9092");
                assert_eq!(k.topic, "t");
            }
            other => panic!("{other:?}"),
        }
        let e = config_from_url("mqtt://h:1/x").unwrap_err().to_string();
        assert!(
            e.starts_with("--sink") && e.contains("unknown scheme"),
            "{e}"
        );
        let e = config_from_url("kafka://h/x").unwrap_err().to_string();
        assert!(e.starts_with("--sink") && e.contains("port"), "{e}");
    }
}
