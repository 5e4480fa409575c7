//! gammaray's event sinks and the router that picks them.
//!
//! The engine stamps each [`FileEvent`] with its host, VM and per-VM
//! sequence number ([`Stamped`]), asks the [`Router`] which sinks the
//! event's channel `host:vm:/path` goes to (from `[[route]]` in
//! `gammaray.toml`), and hands batches to each [`Sink`]. Sinks are built
//! from `[sinks.NAME]` tables by [`build`], the one registry of sink types
//! ([`build_checked`] also checks that a sink's server answers, for start-up).
//!
//! Sink types now: `stdout` and `file` (JSON lines in DESIGN.md's event
//! shape, one module each), `redis` (cloud-inotify: pub/sub on channels
//! `host:vm:/path`, BSON or JSON payloads; [`redis`]), and `kafka` (topics,
//! keyed by channel; [`kafka`]): one module, one [`SinkConfig`] variant and
//! one arm in [`build`] each.
//! [`from_url`] turns the `--sink URL` of `gammaray replay` into a sink
//! configuration by scheme.
//!
//! ```
//! use std::sync::Arc;
//! use gammaray_config::{Route, SinkConfig, FileSinkConfig};
//! use gammaray_core::{EventKind, FileEvent, FileType};
//! use gammaray_sinks::{build, Router, Stamped};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let cfg = SinkConfig::File(FileSinkConfig { path: dir.path().join("auth.jsonl") });
//! let mut sinks = vec![build("auth", &cfg).unwrap()];
//! let router = Router::new(
//!     &[Route { channel: "gs9671:*:/var/log/auth.log".into(), sinks: vec!["auth".into()] }],
//!     &["auth".to_string()],
//! ).unwrap();
//!
//! let ev = FileEvent::new(1, EventKind::Modify, "/var/log/auth.log".into(), FileType::File, 12);
//! let stamped = Arc::new(Stamped::new(7, "gs9671".into(), "test".into(), ev));
//! for i in router.targets_for(&stamped) {
//!     sinks[i].send(std::slice::from_ref(&stamped)).unwrap();
//! }
//! sinks[0].flush().unwrap();
//! assert_eq!(sinks[0].stats().sent, 1);
//! let text = std::fs::read_to_string(dir.path().join("auth.jsonl")).unwrap();
//! assert!(text.starts_with(r#"{"seq":7,"host":"gs9671","vm":"test","#));
//! ```
//!
//! Why the trait is synchronous and takes batches: the engine's actors
//! already batch events (a cross-thread hand-off costs tens of
//! microseconds), and stdout and file writes are blocking anyway. A network
//! sink keeps its own async runtime and buffer inside, and `send` hands it a
//! batch; its backpressure (`when_full = block`) is `send` taking longer,
//! and its drops are counted in [`SinkStats::dropped`].

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod file;
pub mod kafka;
pub mod redis;
pub mod router;
pub mod stdout;

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

pub use gammaray_config::SinkConfig;
use gammaray_core::FileEvent;
pub use router::{ChannelPattern, Router, RouterError, Targets, VmRoutes};

/// An event stamped with where it comes from and its place in the VM's
/// stream; what sinks receive (shared, since several sinks may get it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    /// Sequence number: increases by one per event per VM.
    pub seq: u64,
    /// The host's name in channels.
    pub host: Arc<str>,
    /// The VM's name in channels.
    pub vm: Arc<str>,
    /// The event.
    pub event: FileEvent,
}

impl Stamped {
    /// Stamps an event.
    pub fn new(seq: u64, host: Arc<str>, vm: Arc<str>, event: FileEvent) -> Stamped {
        Stamped {
            seq,
            host,
            vm,
            event,
        }
    }

    /// The event as one line of JSON (no newline), DESIGN.md's shape.
    pub fn to_json(&self) -> String {
        self.event.to_json(self.seq, &self.host, &self.vm)
    }

    /// The channel the event belongs to: `host:vm:/path`.
    pub fn channel(&self) -> String {
        self.event.channel(&self.host, &self.vm)
    }

    /// For a `move`, the channel of the old path.
    pub fn old_channel(&self) -> Option<String> {
        self.event
            .old_path
            .as_ref()
            .map(|old| format!("{}:{}:{old}", self.host, self.vm))
    }
}

/// Counters of one sink, in events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Events delivered (written, or acknowledged by a server).
    pub sent: u64,
    /// Events whose delivery failed with an error returned to the caller.
    pub failed: u64,
    /// Events dropped by the sink's own policy (e.g. a full buffer with
    /// `when_full = "drop_newest"`), without an error.
    pub dropped: u64,
}

/// Why a sink could not be built or could not deliver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink's configuration cannot work (found when building it).
    #[error("sink {sink:?}: {message}")]
    Config {
        /// The sink's name.
        sink: String,
        /// What is wrong.
        message: String,
    },
    /// The reader went away (broken pipe): nothing more can be delivered.
    #[error("sink {sink:?}: the reader has gone away (broken pipe)")]
    Closed {
        /// The sink's name.
        sink: String,
    },
    /// An I/O error while delivering.
    #[error("sink {sink:?}: {source}")]
    Io {
        /// The sink's name.
        sink: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl SinkError {
    /// Classifies an I/O error of sink `sink`: a broken pipe is
    /// [`SinkError::Closed`].
    pub fn io(sink: &str, source: io::Error) -> SinkError {
        if source.kind() == io::ErrorKind::BrokenPipe {
            SinkError::Closed {
                sink: sink.to_string(),
            }
        } else {
            SinkError::Io {
                sink: sink.to_string(),
                source,
            }
        }
    }
}

/// A destination for events.
///
/// Sinks are driven from one thread at a time (`Send`, `&mut self`). `send`
/// delivers a batch or returns an error for the whole batch (a sink may have
/// delivered part of it; `stats` counts the batch as failed). `flush` makes
/// everything sent so far durable or visible, as far as the sink can.
pub trait Sink: Send {
    /// The sink's name (`NAME` in `[sinks.NAME]`).
    fn name(&self) -> &str;
    /// Delivers a batch of events, in order.
    fn send(&mut self, batch: &[Arc<Stamped>]) -> Result<(), SinkError>;
    /// Pushes out anything buffered.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// The sink's counters.
    fn stats(&self) -> SinkStats;
}

/// Builds the sink `[sinks.NAME]` from its configuration: the one registry
/// of sink types. Adding a type adds one module and one arm here.
pub fn build(name: &str, cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match cfg {
        SinkConfig::Stdout(c) => Box::new(stdout::StdoutSink::new(name, c)),
        SinkConfig::File(c) => Box::new(file::FileSink::new(name, c)?),
        SinkConfig::Redis(c) => Box::new(redis::RedisSink::new(name, c)?),
        SinkConfig::Kafka(c) => Box::new(kafka::KafkaSink::new(name, c)?),
    })
}

/// How long [`build_checked`] waits for a Kafka sink's brokers to answer.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a sink as [`build`] does, then checks now that it can deliver:
/// a Redis sink's server answers `PING` ([`redis::RedisSink::new`] does
/// that), a Kafka sink's brokers answer within `kafka_timeout` and its
/// topic exists ([`kafka::KafkaSink::health_check`]); `stdout` and `file`
/// are checked by opening them. What `gammaray run` and `replay --sink`
/// start with, so that an unreachable server or a missing topic stops them
/// at once with an error naming the sink (`sink "NAME": health check
/// failed: …`), instead of events waiting in a buffer for a server that
/// never comes.
pub fn build_checked(
    name: &str,
    cfg: &SinkConfig,
    kafka_timeout: Duration,
) -> Result<Box<dyn Sink>, SinkError> {
    match cfg {
        SinkConfig::Kafka(c) => {
            let sink = kafka::KafkaSink::new(name, c)?;
            sink.health_check(kafka_timeout)?;
            Ok(Box::new(sink))
        }
        _ => build(name, cfg),
    }
}

/// Why a `--sink URL` is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkUrlError {
    /// The scheme names no sink type.
    #[error("{url:?}: unknown scheme (expected redis://HOST:PORT, unix:///SOCKET, kafka://HOST:PORT/TOPIC, file:PATH)")]
    UnknownScheme {
        /// The URL.
        url: String,
    },
    /// A known type that this build does not have yet.
    #[error("{url:?}: {kind} sinks are not supported yet")]
    Unsupported {
        /// The URL.
        url: String,
        /// The sink type.
        kind: &'static str,
    },
    /// The URL's scheme is right but the rest is not.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
}

/// A sink configuration from a URL (`--sink URL`): `redis://HOST:PORT[/DB]`
/// or `unix:///SOCKET` (Redis, every other key at its default), `file:PATH`
/// (JSON lines), `kafka://HOST:PORT[,HOST:PORT…]/TOPIC` (Kafka, every other
/// key at its default). The scheme picks the type.
pub fn from_url(url: &str) -> Result<SinkConfig, SinkUrlError> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        s if gammaray_config::REDIS_SCHEMES.contains(&s) || s == "rediss" => {
            gammaray_config::check_redis_url(url)
                .map_err(|message| SinkUrlError::Invalid { message })?;
            Ok(SinkConfig::Redis(gammaray_config::RedisSinkConfig::new(
                url,
            )))
        }
        "file" => {
            let path = url.trim_start_matches("file:").trim_start_matches("//");
            if path.is_empty() {
                return Err(SinkUrlError::Invalid {
                    message: format!("{url:?}: no path (expected file:PATH)"),
                });
            }
            Ok(SinkConfig::File(gammaray_config::FileSinkConfig {
                path: path.into(),
            }))
        }
        "kafka" => gammaray_config::KafkaSinkConfig::from_url(url)
            .map(SinkConfig::Kafka)
            .map_err(|message| SinkUrlError::Invalid { message }),
        _ => Err(SinkUrlError::UnknownScheme {
            url: url.to_string(),
        }),
    }
}

/// Appends a batch as JSON lines to `buf`.
pub(crate) fn encode_json_lines(batch: &[Arc<Stamped>], buf: &mut Vec<u8>) {
    for s in batch {
        buf.extend_from_slice(s.to_json().as_bytes());
        buf.push(b'\n');
    }
}

/// Writes a batch as JSON lines through `buf` to `out`, updating `stats`.
pub(crate) fn write_json_lines(
    name: &str,
    out: &mut dyn Write,
    buf: &mut Vec<u8>,
    batch: &[Arc<Stamped>],
    stats: &mut SinkStats,
) -> Result<(), SinkError> {
    buf.clear();
    encode_json_lines(batch, buf);
    let n = batch.len() as u64;
    match out.write_all(buf).and_then(|()| out.flush()) {
        Ok(()) => {
            stats.sent += n;
            Ok(())
        }
        Err(e) => {
            stats.failed += n;
            Err(SinkError::io(name, e))
        }
    }
}

#[cfg(test)]
pub(crate) mod test_events {
    use super::*;
    use gammaray_core::{EventKind, FileType, LostReason};

    /// A mixed batch: modify with data, move, attrib, lost.
    pub fn batch() -> Vec<Arc<Stamped>> {
        let host: Arc<str> = "gs9671".into();
        let vm: Arc<str> = "test".into();
        let mut m = FileEvent::new(
            1,
            EventKind::Modify,
            "/var/log/auth.log".into(),
            FileType::File,
            12,
        );
        m.size = Some(4096);
        m.offset = Some(3000);
        m.len = Some(5);
        m.data = Some(bytes_of(b"hello"));
        let mut mv = FileEvent::new(1, EventKind::Move, "/tmp/b".into(), FileType::File, 13);
        mv.old_path = Some("/tmp/a".into());
        let mut a = FileEvent::new(
            1,
            EventKind::Attrib,
            "/etc/passwd".into(),
            FileType::File,
            14,
        );
        a.changed = vec!["mode", "uid"];
        let mut l = FileEvent::new(
            1,
            EventKind::Lost,
            "/var/log/big".into(),
            FileType::File,
            15,
        );
        l.offset = Some(0);
        l.len = Some(1 << 20);
        l.reason = Some(LostReason::DataDrop);
        [m, mv, a, l]
            .into_iter()
            .enumerate()
            .map(|(i, e)| Arc::new(Stamped::new(i as u64, host.clone(), vm.clone(), e)))
            .collect()
    }

    fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
        bytes::Bytes::from_static(b)
    }

    /// Checks that `text` holds exactly `batch()` as JSON lines with
    /// DESIGN.md's fields.
    pub fn check_lines(text: &str, copies: usize) {
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4 * copies, "{text}");
        for (i, line) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["seq"], (i % 4) as u64);
            assert_eq!(v["host"], "gs9671");
            assert_eq!(v["vm"], "test");
            assert_eq!(v["part"], 1);
            assert!(v["path"].as_str().unwrap().starts_with('/'));
            assert!(v["inode"].is_u64());
            assert_eq!(v["type"], "file");
            match i % 4 {
                0 => {
                    assert_eq!(v["event"], "modify");
                    assert_eq!(v["offset"], 3000);
                    assert_eq!(v["len"], 5);
                    assert_eq!(v["size"], 4096);
                    assert_eq!(v["data_b64"], "aGVsbG8=");
                }
                1 => {
                    assert_eq!(v["event"], "move");
                    assert_eq!(v["old_path"], "/tmp/a");
                }
                2 => {
                    assert_eq!(v["event"], "attrib");
                    assert_eq!(v["changed"], serde_json::json!(["mode", "uid"]));
                }
                _ => {
                    assert_eq!(v["event"], "lost");
                    assert_eq!(v["reason"], "data_drop");
                    assert_eq!(v["len"], 1 << 20);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamped_channel_and_json() {
        let b = test_events::batch();
        assert_eq!(b[0].channel(), "gs9671:test:/var/log/auth.log");
        assert_eq!(b[0].old_channel(), None);
        assert_eq!(b[1].old_channel().as_deref(), Some("gs9671:test:/tmp/a"));
        let mut text = String::new();
        for s in &b {
            text.push_str(&s.to_json());
            text.push('\n');
        }
        test_events::check_lines(&text, 1);
    }

    #[test]
    fn sink_urls_by_scheme() {
        assert_eq!(
            from_url("redis://127.0.0.1:6379").unwrap(),
            SinkConfig::Redis(gammaray_config::RedisSinkConfig::new(
                "redis://127.0.0.1:6379"
            ))
        );
        assert!(matches!(
            from_url("unix:///run/redis.sock"),
            Ok(SinkConfig::Redis(_))
        ));
        assert_eq!(
            from_url("file:/tmp/e.jsonl").unwrap(),
            SinkConfig::File(gammaray_config::FileSinkConfig {
                path: "/tmp/e.jsonl".into()
            })
        );
        assert!(matches!(
            from_url("kafka://h:9092/events").unwrap(),
            SinkConfig::Kafka(k) if k.brokers == "h:9092" && k.topic == "events"
        ));
        let e = from_url("mqtt://h").unwrap_err().to_string();
        assert!(e.contains("unknown scheme"), "{e}");
        assert!(from_url("redis://h:0").is_err());
        assert!(from_url("rediss://h")
            .unwrap_err()
            .to_string()
            .contains("TLS"));
        assert!(from_url("file:").is_err());
    }

    #[test]
    fn build_registry() {
        let dir = tempfile::tempdir().unwrap();
        let s = build("out", &SinkConfig::Stdout(Default::default())).unwrap();
        assert_eq!(s.name(), "out");
        let f = build(
            "f",
            &SinkConfig::File(gammaray_config::FileSinkConfig {
                path: dir.path().join("x.jsonl"),
            }),
        )
        .unwrap();
        assert_eq!(f.name(), "f");
        assert_eq!(f.stats(), SinkStats::default());
    }
}
