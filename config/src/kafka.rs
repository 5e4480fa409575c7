//! `[sinks.NAME] type = "kafka"`: the Kafka sink's configuration, its
//! validation (no I/O), and the `kafka://HOST:PORT/TOPIC` URL of
//! `gammaray replay --sink`.
//!
//! ```toml
//! [sinks.events]
//! type = "kafka"
//! brokers = "10.0.0.5:9092,10.0.0.6:9092"
//! topic = "gammaray.{host}"      # default "gammaray.events"
//! key = "channel"                # channel | path | vm | none
//! encoding = "json"              # json | bson
//! buffer_events = 100000
//! when_full = "block"            # block | drop_newest
//! [sinks.events.librdkafka_options]
//! "compression.type" = "lz4"
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The default [`KafkaSinkConfig::topic`].
pub const KAFKA_DEFAULT_TOPIC: &str = "gammaray.events";
/// The default [`KafkaSinkConfig::buffer_events`].
pub const KAFKA_DEFAULT_BUFFER_EVENTS: u64 = 100_000;
/// The largest [`KafkaSinkConfig::buffer_events`] (librdkafka's own queue
/// limit, `queue.buffering.max.messages`, is 2^31 - 1; a buffer this large
/// of 4 KiB events would already hold 40 GB).
pub const KAFKA_MAX_BUFFER_EVENTS: u64 = 10_000_000;
/// The longest topic name Kafka accepts.
pub const KAFKA_MAX_TOPIC_LEN: usize = 249;
/// librdkafka options the sink sets itself from typed keys: setting them
/// in `librdkafka_options` too is refused (one place for each setting).
pub const KAFKA_RESERVED_OPTIONS: [&str; 4] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "acks",
    "enable.idempotence",
];

/// `type = "kafka"`: each event is produced to a Kafka topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic, a template with the placeholders `{host}` and `{vm}`
    /// (default `gammaray.events`). Characters that Kafka does not allow
    /// in topic names (anything but `a-z A-Z 0-9 . _ -`) that a host or VM
    /// name brings in are replaced by `_`. gammaray does not create topics.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The message key, which decides partitioning and hence ordering
    /// (default `channel`).
    #[serde(default)]
    pub key: KafkaKey,
    /// The message value (default `json`).
    #[serde(default)]
    pub encoding: KafkaEncoding,
    /// Producer acknowledgements, librdkafka's `acks`: `all` (default),
    /// `-1`, `0`, `1` or a number of replicas.
    #[serde(default = "default_acks")]
    pub acks: String,
    /// The idempotent producer (default true): retries after a broker
    /// outage neither duplicate nor reorder messages.
    #[serde(default = "default_true")]
    pub idempotence: bool,
    /// Further librdkafka producer options, passed through as given
    /// (`"compression.type" = "lz4"`, `"linger.ms" = 5`, …). Unless set
    /// here, `message.timeout.ms` is 0 (never give up on a message: an
    /// outage fills the buffer instead of failing events).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub librdkafka_options: BTreeMap<String, KafkaOptionValue>,
    /// How many messages may wait for the broker's acknowledgement (queued
    /// or in flight) before `when_full` applies (default 100000; an event
    /// is one message, a `move` under `channel` or `path` keys two).
    #[serde(default = "default_buffer_events")]
    pub buffer_events: u64,
    /// What happens to an event that finds the buffer full (default
    /// `block`).
    #[serde(default)]
    pub when_full: KafkaWhenFull,
}

fn default_topic() -> String {
    KAFKA_DEFAULT_TOPIC.to_string()
}

fn default_acks() -> String {
    "all".to_string()
}

fn default_true() -> bool {
    true
}

fn default_buffer_events() -> u64 {
    KAFKA_DEFAULT_BUFFER_EVENTS
}

/// Which key a Kafka message carries. Kafka keeps order only within a
/// partition, and a key always goes to the same partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// `host:vm:/path` (default): the events of one file of one VM are in
    /// order. A `move` is sent under the old and the new key, so that both
    /// the old name's and the new name's streams see it in order.
    #[default]
    Channel,
    /// `/path`: as `channel`, but the same path in every VM shares a
    /// partition (one consumer sees `/var/log/auth.log` of every guest).
    /// A `move` is sent under both keys.
    Path,
    /// `host:vm`: all events of one VM are in order (seq order), at the
    /// price of one partition per VM at most.
    Vm,
    /// No key: messages are spread over partitions; no order is kept
    /// beyond one partition's.
    None,
}

/// How a Kafka message's value is encoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaEncoding {
    /// DESIGN.md's event JSON line (data as `data_b64`), without newline.
    #[default]
    Json,
    /// A BSON document with the JSON's fields; data as BSON binary `data`.
    Bson,
}

/// What a full buffer does with a new event (Vector's `when_full`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaWhenFull {
    /// `send` waits until there is room: the engine slows down, nothing is
    /// lost.
    #[default]
    Block,
    /// The new event is dropped and counted; once the broker takes
    /// messages again, one `lost` event per affected VM says how many.
    DropNewest,
}

/// A value in `librdkafka_options`: librdkafka takes strings, and numbers
/// and booleans are written as TOML numbers and booleans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KafkaOptionValue {
    /// A string, passed as is.
    String(String),
    /// An integer, passed in decimal.
    Integer(i64),
    /// A boolean, passed as `true` or `false`.
    Bool(bool),
}

impl std::fmt::Display for KafkaOptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaOptionValue::String(s) => f.write_str(s),
            KafkaOptionValue::Integer(i) => write!(f, "{i}"),
            KafkaOptionValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl KafkaSinkConfig {
    /// A configuration with every default and the given brokers.
    pub fn new(brokers: impl Into<String>) -> KafkaSinkConfig {
        KafkaSinkConfig {
            brokers: brokers.into(),
            topic: default_topic(),
            key: KafkaKey::default(),
            encoding: KafkaEncoding::default(),
            acks: default_acks(),
            idempotence: true,
            librdkafka_options: BTreeMap::new(),
            buffer_events: KAFKA_DEFAULT_BUFFER_EVENTS,
            when_full: KafkaWhenFull::default(),
        }
    }

    /// The configuration of `--sink kafka://HOST:PORT[,HOST:PORT…]/TOPIC`
    /// (the topic may be a template; without it, `gammaray.events`);
    /// every other key at its default. Returns the problem, if any.
    pub fn from_url(url: &str) -> Result<KafkaSinkConfig, String> {
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| format!("{url:?}: expected kafka://HOST:PORT/TOPIC"))?;
        let (brokers, topic) = rest.split_once('/').unwrap_or((rest, ""));
        let mut cfg = KafkaSinkConfig::new(brokers);
        if !topic.is_empty() {
            cfg.topic = topic.to_string();
        }
        check_brokers(&cfg.brokers).map_err(|m| format!("{url:?}: {m}"))?;
        check_topic_template(&cfg.topic).map_err(|m| format!("{url:?}: {m}"))?;
        Ok(cfg)
    }

    /// Checks every key without connecting; the error names the key as
    /// `sinks.NAME.KEY`.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("sinks.{name}.{k}");
        check_brokers(&self.brokers).map_err(|m| ConfigError::invalid(key("brokers"), m))?;
        check_topic_template(&self.topic).map_err(|m| ConfigError::invalid(key("topic"), m))?;
        check_acks(&self.acks).map_err(|m| ConfigError::invalid(key("acks"), m))?;
        if self.idempotence && !matches!(self.acks.as_str(), "all" | "-1") {
            return Err(ConfigError::invalid(
                key("acks"),
                format!(
                    "{:?} with idempotence = true: the idempotent producer needs acks = \"all\"",
                    self.acks
                ),
            ));
        }
        if self.buffer_events == 0 || self.buffer_events > KAFKA_MAX_BUFFER_EVENTS {
            return Err(ConfigError::invalid(
                key("buffer_events"),
                format!(
                    "{} is outside 1..={KAFKA_MAX_BUFFER_EVENTS}",
                    self.buffer_events
                ),
            ));
        }
        for (k, v) in &self.librdkafka_options {
            let at = key(&format!("librdkafka_options.\"{k}\""));
            if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::invalid(
                    at,
                    "an option name must be non-empty, without whitespace",
                ));
            }
            if KAFKA_RESERVED_OPTIONS.contains(&k.as_str()) {
                return Err(ConfigError::invalid(
                    at,
                    "set by the sink's own keys (brokers, acks, idempotence); set it there",
                ));
            }
            if let KafkaOptionValue::String(s) = v {
                if s.chars().any(char::is_control) {
                    return Err(ConfigError::invalid(at, "contains control characters"));
                }
            }
        }
        Ok(())
    }
}

/// Checks `host:port[,host:port…]`.
fn check_brokers(brokers: &str) -> Result<(), String> {
    if brokers.trim().is_empty() {
        return Err("is empty; expected HOST:PORT[,HOST:PORT…]".into());
    }
    for b in brokers.split(',') {
        let b = b.trim();
        let Some((host, port)) = b.rsplit_once(':') else {
            return Err(format!("{b:?} has no port; expected HOST:PORT"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("{b:?}: bad host {host:?}"));
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{b:?}: port {port:?} is not a number in 1-65535"));
        }
    }
    Ok(())
}

/// Checks a topic template: only `{host}` and `{vm}` placeholders, legal
/// characters elsewhere, not too long without the placeholders.
pub fn check_topic_template(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("is empty".into());
    }
    let mut rest = topic;
    let mut literal_len = 0usize;
    while let Some(open) = rest.find('{') {
        check_topic_chars(&rest[..open], topic)?;
        literal_len += open;
        let after = &rest[open..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{topic:?}: unclosed '{{'"))?;
        match &after[..=close] {
            "{host}" | "{vm}" => {}
            other => {
                return Err(format!(
                    "{topic:?}: unknown placeholder {other} (expected {{host}} or {{vm}})"
                ))
            }
        }
        rest = &after[close + 1..];
    }
    check_topic_chars(rest, topic)?;
    literal_len += rest.len();
    if literal_len > KAFKA_MAX_TOPIC_LEN {
        return Err(format!(
            "{topic:?} is longer than Kafka's {KAFKA_MAX_TOPIC_LEN} characters"
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a legal topic name"));
    }
    Ok(())
}

fn check_topic_chars(part: &str, topic: &str) -> Result<(), String> {
    match part.chars().find(|&c| !is_topic_char(c)) {
        Some(c) => Err(format!(
            "{topic:?}: {c:?} is not allowed in a topic (only a-z A-Z 0-9 . _ - and {{host}} {{vm}})"
        )),
        None => Ok(()),
    }
}

/// Whether Kafka allows `c` in a topic name.
pub fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn check_acks(acks: &str) -> Result<(), String> {
    match acks {
        "all" | "-1" => Ok(()),
        n if n.parse::<u16>().is_ok() => Ok(()),
        other => Err(format!(
            "{other:?}: expected \"all\", \"-1\", \"0\", \"1\" or a number of replicas"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `toml` plus a route to sink `k`.
    fn parse(toml: &str) -> Result<crate::Config, ConfigError> {
        crate::parse_str(&format!(
            "{toml}\n[[route]]\nchannel = \"*:*:/**\"\nsinks = [\"k\"]\n"
        ))
    }

    #[test]
    fn defaults_and_every_key() {
        let cfg = parse(
            r#"
            [sinks.k]
            type = "kafka"
            brokers = "127.0.0.1:9092"
            "#,
        )
        .unwrap();
        assert_eq!(
            cfg.sinks["k"],
            crate::SinkConfig::Kafka(KafkaSinkConfig::new("127.0.0.1:9092"))
        );
        assert_eq!(cfg.sinks["k"].type_name(), "kafka");
        let cfg = parse(
            r#"
            [sinks.k]
            type = "kafka"
            brokers = "a:1,b:2"
            topic = "g.{host}.{vm}"
            key = "none"
            encoding = "bson"
            acks = "1"
            idempotence = false
            buffer_events = 10
            when_full = "drop_newest"
            [sinks.k.librdkafka_options]
            "linger.ms" = 5
            "compression.type" = "lz4"
            "socket.keepalive.enable" = true
            "#,
        )
        .unwrap();
        let crate::SinkConfig::Kafka(k) = &cfg.sinks["k"] else {
            panic!("not kafka")
        };
        assert_eq!(k.key, KafkaKey::None);
        assert_eq!(k.encoding, KafkaEncoding::Bson);
        assert_eq!(k.when_full, KafkaWhenFull::DropNewest);
        assert_eq!(k.librdkafka_options["linger.ms"].to_string(), "5");
        assert_eq!(
            k.librdkafka_options["socket.keepalive.enable"].to_string(),
            "true"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("brokers = \"\"", "sinks.k.brokers"),
            ("brokers = \"h\"", "sinks.k.brokers"),
            ("brokers = \"h:0\"", "sinks.k.brokers"),
            ("brokers = \"h:1\"\ntopic = \"a b\"", "sinks.k.topic"),
            ("brokers = \"h:1\"\ntopic = \"a.{guest}\"", "sinks.k.topic"),
            ("brokers = \"h:1\"\ntopic = \"a.{host\"", "sinks.k.topic"),
            ("brokers = \"h:1\"\nacks = \"some\"", "sinks.k.acks"),
            ("brokers = \"h:1\"\nacks = \"1\"", "sinks.k.acks"),
            (
                "brokers = \"h:1\"\nbuffer_events = 0",
                "sinks.k.buffer_events",
            ),
            (
                "brokers = \"h:1\"\n[sinks.k.librdkafka_options]\n\"acks\" = \"0\"",
                "sinks.k.librdkafka_options.\"acks\"",
            ),
        ];
        for (body, key) in cases {
            let e = parse(&format!("[sinks.k]\ntype = \"kafka\"\n{body}\n")).unwrap_err();
            assert_eq!(e.key(), Some(key), "{body}: {e}");
        }
        // Unknown keys and values are refused by serde, naming the key.
        let e =
            parse("[sinks.k]\ntype = \"kafka\"\nbrokers = \"h:1\"\nkey = \"inode\"\n").unwrap_err();
        assert!(e.to_string().contains("inode"), "{e}");
        let e =
            parse("[sinks.k]\ntype = \"kafka\"\nbrokers = \"h:1\"\ntopics = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("topics"), "{e}");
    }

    #[test]
    fn urls() {
        let c = KafkaSinkConfig::from_url("kafka://127.0.0.1:9092/t1").unwrap();
        assert_eq!(c.brokers, "127.0.0.1:9092");
        assert_eq!(c.topic, "t1");
        let c = KafkaSinkConfig::from_url("kafka://a:1,b:2").unwrap();
        assert_eq!(c.topic, KAFKA_DEFAULT_TOPIC);
        assert!(KafkaSinkConfig::from_url("kafka://a/t").is_err());
        assert!(KafkaSinkConfig::from_url("kafka://a:1/t t").is_err());
        assert!(KafkaSinkConfig::from_url("redis://a:1").is_err());
    }

    #[test]
    fn topic_templates() {
        assert!(check_topic_template("gammaray.events").is_ok());
        assert!(check_topic_template("g-{host}_{vm}").is_ok());
        assert!(check_topic_template("{vm}").is_ok());
        assert!(check_topic_template("").is_err());
        assert!(check_topic_template("..").is_err());
        assert!(check_topic_template(&"x".repeat(250)).is_err());
        assert!(check_topic_template("a/b").is_err());
    }
}
