//! `gammaray.toml`: gammaray's configuration, typed and validated.
//!
//! The engine (`gammaray run`) reads one file that says which VMs to watch
//! and how their writes reach gammaray (`[[vm]]`), how the capture queue and
//! inference behave under pressure (`[policy]`), where events go
//! (`[sinks.NAME]`, chosen by `type` as in Vector, and `[[route]]` from
//! channel patterns to sinks), and where metrics are served (`[metrics]`).
//!
//! Layers, later ones win:
//! 1. built-in defaults (the `Default` impls and serde defaults in
//!    [`Config`]);
//! 2. the file, or [`DEFAULT_TOML`] when there is none;
//! 3. environment variables `GAMMARAY__SECTION__KEY`, with `__` between
//!    levels, e.g. `GAMMARAY__POLICY__QUEUE_BYTES=1GiB`,
//!    `GAMMARAY__POLICY__DATA_DROP__HIGH_WATER=0.9`, `GAMMARAY__HOST=h1`,
//!    `GAMMARAY__SINKS__LOG__PATH=/var/log/g.jsonl`. (A single `_` could not
//!    separate levels, since keys contain `_`; variables with a single `_`
//!    after `GAMMARAY`, such as a log filter, are not read.) `[[vm]]` and
//!    `[[route]]` arrays cannot be set from the environment.
//!
//! Every error names the key (`vm[1].disk: /x/y.img does not exist`,
//! `policy: unknown field "queue_byte" …`), or the environment variable
//! that caused it. [`Config::validate`] checks everything that can be
//! checked before starting: unknown keys, files that must exist, duplicate
//! VM names, routes naming undefined sinks, unparseable channel patterns,
//! impossible thresholds, a metrics endpoint open beyond loopback.
//!
//! ```
//! let cfg = gammaray_config::parse_str(r#"
//!     host = "gs9671"
//!     [sinks.auth]
//!     type = "file"
//!     path = "/tmp/auth-events.jsonl"
//!     [[route]]
//!     channel = "gs9671:*:/var/log/auth.log"
//!     sinks = ["auth"]
//! "#).unwrap();
//! assert_eq!(cfg.policy.queue_bytes, 250 << 20);
//! assert_eq!(cfg.sinks["auth"].type_name(), "file");
//!
//! let err = gammaray_config::parse_str("[policy]\nqueue_byte = 1\n").unwrap_err();
//! assert!(err.to_string().contains("policy"));
//! assert!(err.to_string().contains("queue_byte"));
//! ```
//!
//! Why `config` + serde and not only `toml`: the `config` crate merges the
//! file with the environment layer and reports the full key path of a type
//! error (`policy.data_drop.high_water`); serde's `deny_unknown_fields` on
//! every struct turns typos into errors instead of silently ignored keys.
//! Channel patterns are parsed here ([`ChannelPattern`]) so that
//! `gammaray check` can reject a bad one without building any sink.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod kafka;
mod pattern;
mod schema;
pub mod size;
mod validate;

use std::path::{Path, PathBuf};

pub use kafka::{
    check_topic_template, is_topic_char, KafkaEncoding, KafkaKey, KafkaOptionValue,
    KafkaSinkConfig, KafkaWhenFull, KAFKA_DEFAULT_BUFFER_EVENTS, KAFKA_DEFAULT_TOPIC,
    KAFKA_MAX_BUFFER_EVENTS, KAFKA_MAX_TOPIC_LEN, KAFKA_RESERVED_OPTIONS,
};
pub use pattern::{ChannelPattern, PatternError};
pub use schema::{
    default_host, AttachVia, Config, DataDrop, FileSinkConfig, LazyLoad, Metrics, Policy,
    RedisEncoding, RedisSinkConfig, Route, SinkConfig, Source, StdoutSinkConfig, VmConfig,
    REDIS_DEFAULT_MAX_DATA_BYTES, REDIS_DEFAULT_TIMEOUT_MS, REDIS_MAX_MAX_DATA_BYTES,
};
pub use validate::{check_redis_url, MAX_SINKS, REDIS_SCHEMES};

/// The environment variable prefix, including the separator.
pub const ENV_PREFIX: &str = "GAMMARAY__";

/// The configuration `gammaray run` uses without a file: JSON lines on
/// stdout for every event, default policies, metrics on loopback, no VMs
/// (the engine adds them from its command line), no external services.
pub const DEFAULT_TOML: &str = r#"# gammaray's embedded default configuration.
# host defaults to this machine's hostname.

[policy]
queue_bytes = "250MiB"
flush_timeout_ms = 5000
unknown_ttl_ms = 30000
unknown_budget_bytes = "64MiB"

[policy.data_drop]
enabled = true
high_water = 0.8
low_water = 0.5

[policy.lazy_load]
enabled = false

[sinks.stdout]
type = "stdout"

[[route]]
channel = "*:*:/**"
sinks = ["stdout"]

[metrics]
enabled = true
listen = "127.0.0.1:9187"
"#;

/// Why a configuration was rejected. The message names the key (or the
/// environment variable) and the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, or a value has the wrong type, or a key is
    /// unknown.
    #[error("{}{}{message}", origin_prefix(origin), key_prefix(key.as_deref()))]
    Syntax {
        /// The file, `<string>` or `<default>`; empty when the value came
        /// from the environment (then [`ConfigError::Env`] names it).
        origin: String,
        /// The key path of the bad value (`policy.queue_bytes`,
        /// `vm[0].source`, or the section holding an unknown key); `None`
        /// for the top level and for TOML syntax errors.
        key: Option<String>,
        /// What the parser said.
        message: String,
    },
    /// A value is well-formed but not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, as a path: `vm[1].disk`, `policy.data_drop.low_water`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment override caused the error.
    #[error("environment variable {var}={value:?}: {error}")]
    Env {
        /// The variable's name.
        var: String,
        /// Its value.
        value: String,
        /// The error it caused.
        error: Box<ConfigError>,
    },
}

fn origin_prefix(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!("{origin}: ")
    }
}

fn key_prefix(key: Option<&str>) -> String {
    key.map(|k| format!("{k}: ")).unwrap_or_default()
}

/// Turns the `config` crate's "MESSAGE for key `K`[ in ORIGIN]" into
/// (`K`, MESSAGE), and repairs its `vm[0]source` paths to `vm[0].source`.
fn split_config_message(msg: &str) -> (Option<String>, String) {
    const MISSING: &str = "missing configuration field \"";
    if let Some(rest) = msg.strip_prefix(MISSING) {
        let raw = rest.trim_end_matches('"');
        return (
            Some(fix_key(raw)),
            "missing (this key is required)".to_string(),
        );
    }
    let Some(at) = msg.rfind(" for key `") else {
        return (None, msg.to_string());
    };
    let rest = &msg[at + " for key `".len()..];
    let Some(end) = rest.find('`') else {
        return (None, msg.to_string());
    };
    (Some(fix_key(&rest[..end])), msg[..at].to_string())
}

/// `vm[0]source` → `vm[0].source`.
fn fix_key(raw: &str) -> String {
    let mut key = String::with_capacity(raw.len() + 4);
    let mut prev = ' ';
    for c in raw.chars() {
        if prev == ']' && c != '.' && c != '[' {
            key.push('.');
        }
        key.push(c);
        prev = c;
    }
    key
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The key the error is about, where known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Syntax { key, .. } => key.as_deref(),
            ConfigError::Env { error, .. } => error.key(),
            _ => None,
        }
    }
}

/// Loads the configuration: defaults, then the file at `path` (or
/// [`DEFAULT_TOML`] for `None`), then `GAMMARAY__*` variables from the
/// process environment; then validates it.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_with_env(path, std::env::vars())
}

/// [`load`] with an explicit environment instead of the process's (for
/// tests, and for callers that filter the environment). Variables that do
/// not start with [`ENV_PREFIX`] (case-insensitively) are ignored.
pub fn load_with_env(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let (origin, text) = match path {
        Some(p) => (
            p.display().to_string(),
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
        ),
        None => ("<default>".to_string(), DEFAULT_TOML.to_string()),
    };
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, v)| {
            k.len() > ENV_PREFIX.len()
                && k[..ENV_PREFIX.len()].eq_ignore_ascii_case(ENV_PREFIX)
                && !v.is_empty()
        })
        .collect();
    match build(&origin, &text, &env) {
        Ok(cfg) => Ok(cfg),
        Err(e) if env.is_empty() => Err(e),
        Err(e) => {
            // Blame the environment only if the file alone is fine: then
            // find the first variable that breaks it on its own.
            if build(&origin, &text, &[]).is_err() {
                return Err(e);
            }
            for (var, value) in &env {
                let one = [(var.clone(), value.clone())];
                if let Err(mut error) = build(&origin, &text, &one) {
                    if let ConfigError::Syntax { origin, .. } = &mut error {
                        // The variable is the origin.
                        origin.clear();
                    }
                    return Err(ConfigError::Env {
                        var: var.clone(),
                        value: value.clone(),
                        error: Box::new(error),
                    });
                }
            }
            Err(e)
        }
    }
}

/// Parses and validates a TOML string, without the environment layer.
pub fn parse_str(toml: &str) -> Result<Config, ConfigError> {
    build("<string>", toml, &[])
}

fn build(origin: &str, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let syntax = |e: config::ConfigError| {
        let (key, message) = split_config_message(&e.to_string());
        ConfigError::Syntax {
            origin: origin.to_string(),
            key,
            message,
        }
    };
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    if !env.is_empty() {
        builder = builder.add_source(
            config::Environment::with_prefix("GAMMARAY")
                .prefix_separator("__")
                .separator("__")
                .ignore_empty(true)
                .source(Some(env.iter().cloned().collect())),
        );
    }
    let cfg: Config = builder
        .build()
        .map_err(syntax)?
        .try_deserialize()
        .map_err(syntax)?;
    cfg.validate()?;
    Ok(cfg)
}

impl Config {
    /// The configuration as TOML (what `parse_str` reads back to an equal
    /// `Config`).
    pub fn to_toml(&self) -> String {
        // Serializing plain structs, maps and strings to TOML cannot fail
        // (no non-string map keys, no bare values after tables).
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
