//! `type = "kafka"`: each event produced to a Kafka topic with rdkafka
//! (librdkafka 2.12, vendored; see `[sinks.NAME]` keys in
//! [`gammaray_config::KafkaSinkConfig`]).
//!
//! - **Topic**: the `topic` template with `{host}` and `{vm}` filled in
//!   (characters Kafka refuses in names become `_`). gammaray does not
//!   create topics.
//! - **Key**: `host:vm:/path` (`key = "channel"`, default), `/path`,
//!   `host:vm`, or none. Kafka keeps order per partition and a key always
//!   maps to one partition, so `channel` and `path` give per-file order,
//!   `vm` gives per-VM (seq) order, `none` gives no order. With `channel`
//!   and `path`, a `move` is produced twice, under the old and the new
//!   key, so that the streams of both names see it in order.
//! - **Value**: DESIGN.md's event JSON line (`encoding = "json"`,
//!   [`Stamped::to_json`]), or the same fields as a BSON document with the
//!   data as binary `data` (`encoding = "bson"`).
//! - **Headers**: `host`, `vm`, `event`, `seq` (decimal), as UTF-8.
//! - **Delivery**: a [`ThreadedProducer`] (its own polling thread serves
//!   delivery reports) with `acks = all` and the idempotent producer by
//!   default, and `message.timeout.ms = 0` (never give up) unless set in
//!   `librdkafka_options`. Delivery reports count [`SinkStats::sent`] and
//!   [`SinkStats::failed`].
//! - **Buffer**: at most `buffer_events` messages are queued or in flight
//!   (a `move` under two keys takes two). When the broker is down the buffer
//!   fills; then `when_full = "block"` makes [`Sink::send`] wait for room
//!   (backpressure, nothing lost) and `when_full = "drop_newest"` drops the
//!   new event, counts it in [`SinkStats::dropped`] and logs. Once a
//!   message is acknowledged again, the sink produces one `lost` event per
//!   VM that lost events (see [`lost_event_json`]).
//!
//! The sink never panics on broker errors: a message the broker refuses
//! (too large, unknown topic after the timeout) is counted as failed and
//! logged, and `send` goes on with the rest of the batch.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use gammaray_config::{is_topic_char, KafkaEncoding, KafkaKey, KafkaSinkConfig, KafkaWhenFull};
use gammaray_core::{EventKind, FileEvent, FileType, LostReason};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::{Sink, SinkError, SinkStats, Stamped};

/// How long [`Sink::flush`] waits for every queued message to be
/// acknowledged before it reports a timeout.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dropping the sink waits for queued messages.
const DROP_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a blocked `send` re-checks the buffer (it is also woken by
/// every delivery report).
const BLOCK_POLL: Duration = Duration::from_millis(50);
/// How long one metadata request of the health check may take before the
/// check looks at whether every broker is down.
const HEALTH_STEP: Duration = Duration::from_millis(250);

/// Delivery opaque bits: the message is the event's first (the one that
/// counts in the stats) ...
const OPAQUE_PRIMARY: usize = 1;
/// ... or the sink's own `lost` report (counted nowhere).
const OPAQUE_REPORT: usize = 2;

/// State shared with the delivery-report thread.
#[derive(Default)]
struct Shared {
    /// Messages queued or in flight.
    in_flight: Mutex<u64>,
    /// Signalled on every delivery report.
    room: Condvar,
    sent: AtomicU64,
    failed: AtomicU64,
    /// Acknowledged messages of any kind: the broker is reachable when
    /// this grows.
    acked: AtomicU64,
    /// How many times librdkafka reported every broker down, and why the
    /// last time (for the health check).
    all_down: AtomicU64,
    all_down_reason: Mutex<String>,
}

impl Shared {
    fn release(&self, n: u64) {
        let mut g = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.saturating_sub(n);
        drop(g);
        self.room.notify_all();
    }
}

/// The producer's context: delivery reports and librdkafka's logs.
struct Ctx {
    sink: String,
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(sink = %self.sink, "librdkafka {fac}: {message}")
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(sink = %self.sink, "librdkafka {fac}: {message}")
            }
            _ => tracing::debug!(sink = %self.sink, "librdkafka {fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            *self
                .shared
                .all_down_reason
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = reason.to_string();
            self.shared.all_down.fetch_add(1, Ordering::Relaxed);
        }
        // Transport errors repeat while a broker is down; librdkafka
        // retries by itself.
        tracing::info!(sink = %self.sink, "librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let s = &self.shared;
        match result {
            Ok(_) => {
                s.acked.fetch_add(1, Ordering::Relaxed);
                if opaque & OPAQUE_PRIMARY != 0 {
                    s.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err((e, _)) => {
                if opaque & OPAQUE_PRIMARY != 0 {
                    let n = s.failed.fetch_add(1, Ordering::Relaxed) + 1;
                    // Log the 1st, 2nd, 4th, 8th ... failure, not a flood.
                    if n.is_power_of_two() {
                        tracing::warn!(sink = %self.sink, "delivery failed ({n} events so far): {e}");
                    }
                } else if opaque & OPAQUE_REPORT != 0 {
                    tracing::warn!(sink = %self.sink, "delivering a lost report failed: {e}");
                }
            }
        }
        s.release(1);
    }
}

/// What became of one message handed to librdkafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Produced {
    /// Queued.
    Taken,
    /// librdkafka's own queue was full (`drop_newest`).
    Full,
    /// Refused (too large, bad topic, ...): counted as failed.
    Refused,
}

/// Events of one VM dropped since the last report.
#[derive(Debug, Clone, Copy)]
struct Drops {
    count: u64,
    first_seq: u64,
    last_seq: u64,
    /// [`Shared::acked`] when the last event was dropped.
    acked_at_drop: u64,
}

/// A Kafka producer sink.
pub struct KafkaSink {
    name: String,
    cfg: KafkaSinkConfig,
    producer: ThreadedProducer<Ctx>,
    shared: Arc<Shared>,
    /// The buffer's size, in messages.
    cap: u64,
    /// The topic when the template has no placeholder.
    fixed_topic: Option<String>,
    /// Rendered topics per (host, vm).
    topics: HashMap<(Arc<str>, Arc<str>), String>,
    /// Drops not yet reported, per (host, vm).
    drops: BTreeMap<(Arc<str>, Arc<str>), Drops>,
    dropped: u64,
    /// Failures found when producing (not by a delivery report).
    failed_local: u64,
    payload: Vec<u8>,
}

impl KafkaSink {
    /// Builds the producer (no connection is made yet: librdkafka connects
    /// in the background, and a broker that is down only fills the buffer).
    pub fn new(name: &str, cfg: &KafkaSinkConfig) -> Result<KafkaSink, SinkError> {
        let config_err = |message: String| SinkError::Config {
            sink: name.to_string(),
            message,
        };
        cfg.validate(name).map_err(|e| config_err(e.to_string()))?;
        let cap = cfg.buffer_events;
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.brokers)
            .set("acks", &cfg.acks)
            .set("enable.idempotence", cfg.idempotence.to_string())
            .set("message.timeout.ms", "0")
            // Our own bound comes first; librdkafka's is a little larger
            // so that it never refuses what our buffer admits.
            .set(
                "queue.buffering.max.messages",
                (cap + 16).min(i32::MAX as u64).to_string(),
            );
        for (k, v) in &cfg.librdkafka_options {
            cc.set(k, v.to_string());
        }
        let shared = Arc::new(Shared::default());
        let ctx = Ctx {
            sink: name.to_string(),
            shared: shared.clone(),
        };
        let producer: ThreadedProducer<Ctx> = cc
            .create_with_context(ctx)
            .map_err(|e| config_err(format!("creating the Kafka producer: {e}")))?;
        let fixed_topic = (!cfg.topic.contains('{')).then(|| cfg.topic.clone());
        Ok(KafkaSink {
            name: name.to_string(),
            cfg: cfg.clone(),
            producer,
            shared,
            cap,
            fixed_topic,
            topics: HashMap::new(),
            drops: BTreeMap::new(),
            dropped: 0,
            failed_local: 0,
            payload: Vec::new(),
        })
    }

    /// The health check (Vector's): asks the brokers for metadata within
    /// `timeout`, and when the topic has no placeholder, checks that it
    /// exists (gammaray does not create topics, and librdkafka would hold
    /// messages for a missing topic until it appears). A broker that does
    /// not answer and a missing topic are [`SinkError::Config`]; when
    /// librdkafka finds every bootstrap broker down (connection refused,
    /// unknown host) the check fails then, without waiting for `timeout`.
    /// The sink itself works without the check (messages wait for the
    /// brokers); `gammaray run` and `replay --sink` run it at start
    /// ([`crate::build_checked`]).
    pub fn health_check(&self, timeout: Duration) -> Result<(), SinkError> {
        let fail = |message: String| SinkError::Config {
            sink: self.name.clone(),
            message: format!("health check failed: {message}"),
        };
        let topic = self.fixed_topic.as_deref();
        let down_before = self.shared.all_down.load(Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let md = loop {
            // Short requests, so that "every broker down" ends the wait.
            let left = deadline.saturating_duration_since(Instant::now());
            let step = left.min(HEALTH_STEP).max(Duration::from_millis(1));
            match self.producer.client().fetch_metadata(topic, step) {
                Ok(md) => break md,
                Err(e) => {
                    if self.shared.all_down.load(Ordering::Relaxed) > down_before {
                        let reason = self
                            .shared
                            .all_down_reason
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .clone();
                        return Err(fail(format!(
                            "cannot reach Kafka brokers {}: every broker is down ({reason})",
                            self.cfg.brokers
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(fail(format!(
                            "no metadata from Kafka brokers {} within {} ms: {e}",
                            self.cfg.brokers,
                            timeout.as_millis()
                        )));
                    }
                }
            }
        };
        if let Some(t) = topic {
            let found = md
                .topics()
                .iter()
                .any(|m| m.name() == t && m.error().is_none() && !m.partitions().is_empty());
            if !found {
                return Err(fail(format!(
                    "topic {t:?} does not exist on brokers {} (gammaray does not create topics)",
                    self.cfg.brokers
                )));
            }
        }
        Ok(())
    }

    /// Messages queued or awaiting the broker's acknowledgement.
    pub fn in_flight(&self) -> u64 {
        *self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Takes room for `n` messages: waits for it with `block` (or `wait`),
    /// else returns false when the buffer is full. A message wider than
    /// the whole buffer gets it when the buffer is empty.
    fn reserve(&self, n: u64, wait: bool) -> bool {
        let need = n.min(self.cap);
        let mut g = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if *g + need <= self.cap {
                *g += n;
                return true;
            }
            if !wait {
                return false;
            }
            g = self
                .shared
                .room
                .wait_timeout(g, BLOCK_POLL)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn topic_for(&mut self, host: &Arc<str>, vm: &Arc<str>) -> String {
        if let Some(t) = &self.fixed_topic {
            return t.clone();
        }
        self.topics
            .entry((host.clone(), vm.clone()))
            .or_insert_with(|| render_topic(&self.cfg.topic, host, vm))
            .clone()
    }

    /// Produces one message. The caller has reserved room for it; it is
    /// released here when the message is not taken.
    fn produce(
        &mut self,
        topic: &str,
        key: Option<&str>,
        headers: &OwnedHeaders,
        opaque: usize,
    ) -> Produced {
        loop {
            let mut rec = BaseRecord::with_opaque_to(topic, opaque)
                .payload(self.payload.as_slice())
                .headers(headers.clone());
            if let Some(k) = key {
                rec = rec.key(k);
            }
            match self.producer.send(rec) {
                Ok(()) => return Produced::Taken,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.cfg.when_full == KafkaWhenFull::Block {
                        // librdkafka's byte limit (queue.buffering.max.kbytes):
                        // wait as for our own.
                        std::thread::sleep(BLOCK_POLL);
                    } else {
                        self.shared.release(1);
                        return Produced::Full;
                    }
                }
                Err((e, _)) => {
                    self.shared.release(1);
                    tracing::warn!(sink = %self.name, topic, "producing failed: {e}");
                    return Produced::Refused;
                }
            }
        }
    }

    fn record_drop(&mut self, s: &Stamped) {
        self.dropped += 1;
        let acked = self.shared.acked.load(Ordering::Relaxed);
        let d = self
            .drops
            .entry((s.host.clone(), s.vm.clone()))
            .or_insert(Drops {
                count: 0,
                first_seq: s.seq,
                last_seq: s.seq,
                acked_at_drop: acked,
            });
        if d.count == 0 {
            tracing::warn!(
                sink = %self.name,
                "buffer full ({} messages): dropping new events of {}:{} (when_full = drop_newest)",
                self.cap, s.host, s.vm
            );
        }
        d.count += 1;
        d.last_seq = s.seq;
        d.acked_at_drop = acked;
    }

    /// Produces one `lost` event per VM whose drops are followed by an
    /// acknowledgement (the broker is back), or by every VM's with `force`.
    fn report_drops(&mut self, force: bool) {
        if self.drops.is_empty() {
            return;
        }
        let acked = self.shared.acked.load(Ordering::Relaxed);
        let due: Vec<(Arc<str>, Arc<str>)> = self
            .drops
            .iter()
            .filter(|(_, d)| force || acked > d.acked_at_drop)
            .map(|(k, _)| k.clone())
            .collect();
        for (host, vm) in due {
            let Some(d) = self.drops.get(&(host.clone(), vm.clone())).copied() else {
                continue;
            };
            if !self.reserve(1, force) {
                return;
            }
            let json = lost_event_json(&host, &vm, d.count, d.first_seq, d.last_seq);
            self.payload.clear();
            match self.cfg.encoding {
                KafkaEncoding::Json => self.payload.extend_from_slice(json.as_bytes()),
                KafkaEncoding::Bson => {
                    let mut doc = bson_doc(&lost_stamped(&host, &vm, d.last_seq));
                    doc.insert("dropped", int(d.count));
                    doc.insert("first_seq", int(d.first_seq));
                    doc.insert("last_seq", int(d.last_seq));
                    if doc.to_writer(&mut self.payload).is_err() {
                        self.payload.clear();
                    }
                }
            }
            let topic = self.topic_for(&host, &vm);
            let key = match self.cfg.key {
                KafkaKey::Channel => Some(format!("{host}:{vm}:/")),
                KafkaKey::Path => Some("/".to_string()),
                KafkaKey::Vm => Some(format!("{host}:{vm}")),
                KafkaKey::None => None,
            };
            let headers = headers(&host, &vm, "lost", d.last_seq);
            if self.produce(&topic, key.as_deref(), &headers, OPAQUE_REPORT) == Produced::Taken {
                tracing::warn!(
                    sink = %self.name,
                    "dropped {} events of {host}:{vm} (seq {}..={}) while the buffer was full; sent a lost event",
                    d.count, d.first_seq, d.last_seq
                );
                self.drops.remove(&(host, vm));
            }
        }
    }

    fn encode(&mut self, s: &Stamped) {
        self.payload.clear();
        match self.cfg.encoding {
            KafkaEncoding::Json => self.payload.extend_from_slice(s.to_json().as_bytes()),
            KafkaEncoding::Bson => {
                self.payload
                    .extend_from_slice(&s.event.to_bson_bytes(s.seq, &s.host, &s.vm, &[]))
            }
        }
    }
}

/// The keys an event's messages carry, in order (two for a `move` under
/// `channel` or `path` keys).
pub fn message_keys(key: KafkaKey, s: &Stamped) -> Vec<Option<String>> {
    match key {
        KafkaKey::Channel => {
            let mut v = Vec::with_capacity(2);
            if let Some(old) = s.old_channel() {
                v.push(Some(old));
            }
            v.push(Some(s.channel()));
            v
        }
        KafkaKey::Path => {
            let mut v = Vec::with_capacity(2);
            if let Some(old) = &s.event.old_path {
                v.push(Some(old.clone()));
            }
            v.push(Some(s.event.path.clone()));
            v
        }
        KafkaKey::Vm => vec![Some(format!("{}:{}", s.host, s.vm))],
        KafkaKey::None => vec![None],
    }
}

/// The topic for `host` and `vm`: the template with `{host}` and `{vm}`
/// replaced, characters Kafka does not allow in the names as `_`.
pub fn render_topic(template: &str, host: &str, vm: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if is_topic_char(c) { c } else { '_' })
            .collect()
    };
    let mut t = template
        .replace("{host}", &clean(host))
        .replace("{vm}", &clean(vm));
    if t.len() > gammaray_config::KAFKA_MAX_TOPIC_LEN {
        let mut end = gammaray_config::KAFKA_MAX_TOPIC_LEN;
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        t.truncate(end);
    }
    t
}

/// The `lost` event a `drop_newest` sink sends for a VM once the broker is
/// back: DESIGN.md's `lost` shape for the VM as a whole (`part` 0, path
/// `/`, `reason` `sink_overflow`, `seq` of the last dropped event) plus
/// `dropped` (how many events were dropped) and `first_seq`/`last_seq`
/// (their sequence numbers' range).
pub fn lost_event_json(
    host: &str,
    vm: &str,
    dropped: u64,
    first_seq: u64,
    last_seq: u64,
) -> String {
    let mut json = lost_stamped(host, vm, last_seq).to_json();
    if json.ends_with('}') {
        json.pop();
        json.push_str(&format!(
            ",\"dropped\":{dropped},\"first_seq\":{first_seq},\"last_seq\":{last_seq}}}"
        ));
    }
    json
}

fn lost_stamped(host: &str, vm: &str, seq: u64) -> Stamped {
    let mut e = FileEvent::new(0, EventKind::Lost, "/".into(), FileType::Dir, 0);
    e.reason = Some(LostReason::SinkOverflow);
    Stamped::new(seq, host.into(), vm.into(), e)
}

fn int(v: u64) -> bson::Bson {
    i64::try_from(v)
        .map(bson::Bson::Int64)
        .unwrap_or_else(|_| bson::Bson::String(v.to_string()))
}

/// The event as a BSON document: the JSON's fields and names, in the same
/// order, with the data as binary `data` instead of `data_b64`
/// ([`gammaray_core::FileEvent::to_bson`]).
pub fn bson_doc(s: &Stamped) -> bson::Document {
    s.event.to_bson(s.seq, &s.host, &s.vm)
}

fn headers(host: &str, vm: &str, event: &str, seq: u64) -> OwnedHeaders {
    let seq = seq.to_string();
    OwnedHeaders::new_with_capacity(4)
        .insert(Header {
            key: "host",
            value: Some(host),
        })
        .insert(Header {
            key: "vm",
            value: Some(vm),
        })
        .insert(Header {
            key: "event",
            value: Some(event),
        })
        .insert(Header {
            key: "seq",
            value: Some(seq.as_str()),
        })
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, batch: &[Arc<Stamped>]) -> Result<(), SinkError> {
        let block = self.cfg.when_full == KafkaWhenFull::Block;
        for s in batch {
            self.report_drops(false);
            let keys = message_keys(self.cfg.key, s);
            let n = keys.len() as u64;
            if !self.reserve(n, block) {
                self.record_drop(s);
                continue;
            }
            self.encode(s);
            let topic = self.topic_for(&s.host, &s.vm);
            let headers = headers(&s.host, &s.vm, s.event.kind.as_str(), s.seq);
            let mut primary = Produced::Taken;
            for (i, key) in keys.iter().enumerate() {
                // The event counts once, on its last message (the new name
                // of a move), so `sent` counts events, not messages.
                let last = i + 1 == keys.len();
                let opaque = if last { OPAQUE_PRIMARY } else { 0 };
                let p = self.produce(&topic, key.as_deref(), &headers, opaque);
                if last {
                    primary = p;
                }
            }
            match primary {
                Produced::Taken => {}
                Produced::Full => self.record_drop(s),
                Produced::Refused => self.failed_local += 1,
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        let name = self.name.clone();
        let timeout_err = |e: KafkaError| SinkError::Io {
            sink: name.clone(),
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "messages not acknowledged within {} s: {e}",
                    FLUSH_TIMEOUT.as_secs()
                ),
            ),
        };
        self.producer.flush(FLUSH_TIMEOUT).map_err(timeout_err)?;
        if !self.drops.is_empty() {
            // Everything queued was acknowledged: the broker is there.
            self.report_drops(true);
            self.producer.flush(FLUSH_TIMEOUT).map_err(timeout_err)?;
        }
        Ok(())
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            sent: self.shared.sent.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed) + self.failed_local,
            dropped: self.dropped,
        }
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        if let Err(e) = self.producer.flush(DROP_FLUSH_TIMEOUT) {
            tracing::warn!(
                sink = %self.name,
                "closing: {} messages not acknowledged within {} s: {e}",
                self.in_flight(),
                DROP_FLUSH_TIMEOUT.as_secs()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::batch;

    #[test]
    fn topic_templates_render_and_clean() {
        assert_eq!(render_topic("gammaray.events", "h", "v"), "gammaray.events");
        assert_eq!(
            render_topic("g.{host}.{vm}", "gs9671", "web-1"),
            "g.gs9671.web-1"
        );
        assert_eq!(render_topic("g.{vm}", "h", "a b/c:d"), "g.a_b_c_d");
        assert_eq!(render_topic("{vm}", "h", &"é".repeat(200)).len(), 200);
    }

    #[test]
    fn keys_by_choice_and_moves_under_both() {
        let b = batch();
        let (modify, mv) = (&b[0], &b[1]);
        let k = |key, s| message_keys(key, s);
        assert_eq!(
            k(KafkaKey::Channel, modify),
            vec![Some("gs9671:test:/var/log/auth.log".to_string())]
        );
        assert_eq!(
            k(KafkaKey::Channel, mv),
            vec![
                Some("gs9671:test:/tmp/a".to_string()),
                Some("gs9671:test:/tmp/b".to_string())
            ]
        );
        assert_eq!(
            k(KafkaKey::Path, mv),
            vec![Some("/tmp/a".to_string()), Some("/tmp/b".to_string())]
        );
        assert_eq!(k(KafkaKey::Vm, mv), vec![Some("gs9671:test".to_string())]);
        assert_eq!(k(KafkaKey::None, mv), vec![None]);
    }

    #[test]
    fn bson_has_the_json_fields_with_binary_data() {
        let b = batch();
        let d = bson_doc(&b[0]);
        let keys: Vec<&str> = d.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "seq", "host", "vm", "part", "path", "event", "type", "inode", "size", "offset",
                "len", "data"
            ]
        );
        assert_eq!(d.get_binary_generic("data").unwrap(), b"hello");
        assert_eq!(bson_doc(&b[1]).get_str("old_path").unwrap(), "/tmp/a");
    }

    #[test]
    fn lost_report_shape() {
        let v: serde_json::Value =
            serde_json::from_str(&lost_event_json("h", "v", 7, 10, 16)).unwrap();
        assert_eq!(v["event"], "lost");
        assert_eq!(v["reason"], "sink_overflow");
        assert_eq!(v["dropped"], 7);
        assert_eq!(v["first_seq"], 10);
        assert_eq!(v["last_seq"], 16);
        assert_eq!(v["seq"], 16);
        assert_eq!(v["path"], "/");
    }

    #[test]
    fn a_broker_that_is_not_there_drops_and_counts_without_blocking() {
        // Port 1 on loopback: nothing listens; the buffer (2 messages)
        // fills and the rest is dropped.
        let mut cfg = KafkaSinkConfig::new("127.0.0.1:1");
        cfg.buffer_events = 2;
        cfg.when_full = KafkaWhenFull::DropNewest;
        let mut sink = KafkaSink::new("k", &cfg).unwrap();
        let b = batch();
        // modify (1 message), move (2: no room), attrib (no room), lost.
        sink.send(&b).unwrap();
        assert_eq!(sink.stats().dropped, 2, "{:?}", sink.stats());
        assert_eq!(sink.in_flight(), 2);
        assert_eq!(sink.stats().sent, 0);
    }

    #[test]
    fn the_health_check_gives_up_on_refused_connections_before_its_timeout() {
        // Nothing listens on port 1: librdkafka finds every broker down
        // and the check says so without waiting 30 s.
        let sink = KafkaSink::new("k", &KafkaSinkConfig::new("127.0.0.1:1")).unwrap();
        let t0 = std::time::Instant::now();
        let e = sink
            .health_check(Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "sink \"k\": health check failed: cannot reach Kafka brokers 127.0.0.1:1"
            ),
            "{e}"
        );
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        // Through the registry: the same error.
        let cfg = crate::SinkConfig::Kafka(KafkaSinkConfig::new("127.0.0.1:1"));
        let e = crate::build_checked("k", &cfg, Duration::from_secs(30))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot reach Kafka brokers"), "{e}");
    }

    #[test]
    fn a_message_librdkafka_refuses_counts_as_failed_not_dropped() {
        let mut cfg = KafkaSinkConfig::new("127.0.0.1:1");
        cfg.when_full = KafkaWhenFull::DropNewest;
        cfg.librdkafka_options.insert(
            "message.max.bytes".into(),
            gammaray_config::KafkaOptionValue::Integer(1000),
        );
        let mut sink = KafkaSink::new("k", &cfg).unwrap();
        let mut big = (*batch()[0]).clone();
        big.event.data = Some(bytes::Bytes::from(vec![b'x'; 4000]));
        sink.send(&[Arc::new(big)]).unwrap();
        let st = sink.stats();
        assert_eq!((st.failed, st.dropped), (1, 0), "{st:?}");
        assert_eq!(sink.in_flight(), 0);
    }
}
