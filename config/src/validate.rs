//! [`Config::validate`]: everything that can be checked before starting.

use std::collections::HashMap;
use std::path::Path;

use crate::{
    ChannelPattern, Config, ConfigError, RedisSinkConfig, SinkConfig, Source,
    REDIS_MAX_MAX_DATA_BYTES,
};

/// The most sinks one configuration may define (the router keeps a route's
/// targets in a 64-bit mask).
pub const MAX_SINKS: usize = 64;

/// A name used inside channels (`host:vm:/path`) must not be empty or
/// contain `:`.
fn check_channel_name(key: &str, what: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{what} must not be empty"),
        ));
    }
    if name.contains(':') {
        return Err(ConfigError::invalid(
            key,
            format!("{what} {name:?} contains ':' (channels are host:vm:/path)"),
        ));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError::invalid(
            key,
            format!("{what} {name:?} contains whitespace or control characters"),
        ));
    }
    Ok(())
}

fn must_exist(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    if !path.exists() {
        return Err(ConfigError::invalid(
            key,
            format!("{} does not exist", path.display()),
        ));
    }
    Ok(())
}

/// The directory a new file will be created in must exist.
fn parent_must_exist(key: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(ConfigError::invalid(
            key,
            format!(
                "{}: directory {} does not exist",
                path.display(),
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// The URL schemes a Redis sink accepts (TLS, `rediss://`, is not built
/// in).
pub const REDIS_SCHEMES: [&str; 3] = ["redis", "unix", "redis+unix"];

/// Checks a Redis URL's shape without connecting: `redis://HOST[:PORT][/DB]`
/// or `unix:///PATH`. Returns the problem, if any.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a URL (expected redis://HOST:PORT[/DB] or unix:///PATH)"
        ));
    };
    match scheme {
        "redis" => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
                match v6.split_once(']') {
                    Some((h, p)) => (h, p.strip_prefix(':')),
                    None => return Err(format!("{url:?}: unclosed '[' in the host")),
                }
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hostport, None),
                }
            };
            if host.is_empty() {
                return Err(format!("{url:?} has no host"));
            }
            if let Some(p) = port {
                if p.parse::<u16>().map_or(true, |p| p == 0) {
                    return Err(format!("{url:?}: port {p:?} is not a number in 1-65535"));
                }
            }
            let db = path.trim_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(format!(
                    "{url:?}: the path must be a database number (redis://HOST:PORT/DB), not {db:?}"
                ));
            }
            Ok(())
        }
        "unix" | "redis+unix" => {
            if !rest.starts_with('/') || rest.len() < 2 {
                return Err(format!(
                    "{url:?}: expected an absolute socket path, unix:///PATH"
                ));
            }
            Ok(())
        }
        "rediss" => Err(format!(
            "{url:?}: TLS (rediss://) is not supported by this build; use redis:// on a \
             trusted network or a unix socket"
        )),
        other => Err(format!(
            "{url:?}: unknown scheme {other:?} (expected one of {})",
            REDIS_SCHEMES.join(", ")
        )),
    }
}

fn check_redis(name: &str, r: &RedisSinkConfig) -> Result<(), ConfigError> {
    let key = |k: &str| format!("sinks.{name}.{k}");
    check_redis_url(&r.url).map_err(|m| ConfigError::invalid(key("url"), m))?;
    let url_has_credentials = r
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .is_some_and(|auth| auth.contains('@'))
        || r.url.contains("user=")
        || r.url.contains("pass=");
    if url_has_credentials && (r.username.is_some() || r.password.is_some()) {
        return Err(ConfigError::invalid(
            key("username"),
            "credentials are given both in the url and as username/password; use one",
        ));
    }
    if r.username.is_some() && r.password.is_none() {
        return Err(ConfigError::invalid(
            key("password"),
            "missing: an ACL username needs its password",
        ));
    }
    if let Some(u) = &r.username {
        if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::invalid(
                key("username"),
                format!("{u:?} must be non-empty, without whitespace"),
            ));
        }
    }
    if r.max_data_bytes == 0 || r.max_data_bytes > REDIS_MAX_MAX_DATA_BYTES {
        return Err(ConfigError::invalid(
            key("max_data_bytes"),
            format!(
                "{} is outside 1..={REDIS_MAX_MAX_DATA_BYTES} (256 MiB)",
                r.max_data_bytes
            ),
        ));
    }
    if let Some(p) = &r.channel_prefix {
        if p.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                key("channel_prefix"),
                format!("{p:?} contains control characters"),
            ));
        }
    }
    if r.timeout_ms == 0 || r.timeout_ms > 600_000 {
        return Err(ConfigError::invalid(
            key("timeout_ms"),
            format!("{} is outside 1..=600000", r.timeout_ms),
        ));
    }
    Ok(())
}

fn fraction(key: &str, v: f64) -> Result<(), ConfigError> {
    if v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{v} is outside (0, 1] (a fraction of policy.queue_bytes)"),
        ))
    }
}

impl Config {
    /// Checks the configuration; the first problem found is returned, with
    /// the key it is about. This touches the file system (files that must
    /// exist) but starts nothing. [`crate::load`] and [`crate::parse_str`]
    /// call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_channel_name("host", "the host name", &self.host)?;

        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, vm) in self.vm.iter().enumerate() {
            let key = |k: &str| format!("vm[{i}].{k}");
            check_channel_name(&key("name"), "the VM name", &vm.name)?;
            if let Some(first) = names.insert(&vm.name, i) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("duplicate VM name {:?} (also vm[{first}])", vm.name),
                ));
            }
            // An attach source's disk is gammaray's own copy: created.
            if matches!(vm.source, Source::Attach { .. }) {
                parent_must_exist(&key("disk"), &vm.disk)?;
            } else {
                must_exist(&key("disk"), &vm.disk)?;
            }
            match &vm.source {
                Source::Serve { socket } => parent_must_exist(&key("source.socket"), socket)?,
                Source::Attach { qmp, drive, .. } => {
                    if qmp.as_os_str().is_empty() {
                        return Err(ConfigError::invalid(key("source.qmp"), "must not be empty"));
                    }
                    if drive.is_empty() {
                        return Err(ConfigError::invalid(
                            key("source.drive"),
                            "must not be empty",
                        ));
                    }
                }
                Source::Replay { log, .. } => must_exist(&key("source.log"), log)?,
            }
            if let Some(index) = &vm.index {
                parent_must_exist(&key("index"), index)?;
            }
        }

        let p = &self.policy;
        if p.queue_bytes == 0 {
            return Err(ConfigError::invalid(
                "policy.queue_bytes",
                "must be greater than 0",
            ));
        }
        if p.flush_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "policy.flush_timeout_ms",
                "must be greater than 0",
            ));
        }
        fraction("policy.data_drop.high_water", p.data_drop.high_water)?;
        fraction("policy.data_drop.low_water", p.data_drop.low_water)?;
        if p.data_drop.low_water >= p.data_drop.high_water {
            return Err(ConfigError::invalid(
                "policy.data_drop.low_water",
                format!(
                    "{} must be below policy.data_drop.high_water ({})",
                    p.data_drop.low_water, p.data_drop.high_water
                ),
            ));
        }
        if p.lazy_load.enabled && p.lazy_load.budget_bytes == 0 {
            return Err(ConfigError::invalid(
                "policy.lazy_load.budget_bytes",
                "must be greater than 0 when lazy loading is enabled",
            ));
        }

        if self.sinks.len() > MAX_SINKS {
            return Err(ConfigError::invalid(
                "sinks",
                format!(
                    "{} sinks defined, at most {MAX_SINKS} are supported",
                    self.sinks.len()
                ),
            ));
        }
        for (name, sink) in &self.sinks {
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',') {
                return Err(ConfigError::invalid(
                    format!("sinks.{name:?}"),
                    "a sink name must be non-empty, without whitespace or ','",
                ));
            }
            match sink {
                SinkConfig::Stdout(_) => {}
                SinkConfig::File(f) => parent_must_exist(&format!("sinks.{name}.path"), &f.path)?,
                SinkConfig::Redis(r) => check_redis(name, r)?,
                SinkConfig::Kafka(k) => k.validate(name)?,
            }
        }

        for (i, route) in self.route.iter().enumerate() {
            ChannelPattern::parse(&route.channel)
                .map_err(|e| ConfigError::invalid(format!("route[{i}].channel"), e.to_string()))?;
            if route.sinks.is_empty() {
                return Err(ConfigError::invalid(
                    format!("route[{i}].sinks"),
                    "is empty; name at least one sink",
                ));
            }
            for s in &route.sinks {
                if !self.sinks.contains_key(s) {
                    let defined: Vec<&str> = self.sinks.keys().map(String::as_str).collect();
                    let defined = if defined.is_empty() {
                        "none".to_string()
                    } else {
                        defined.join(", ")
                    };
                    return Err(ConfigError::invalid(
                        format!("route[{i}].sinks"),
                        format!("no sink named {s:?} (defined: {defined})"),
                    ));
                }
            }
        }

        let m = &self.metrics;
        if m.enabled && !m.allow_remote && !m.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "metrics.listen",
                format!(
                    "{} is not a loopback address; set metrics.allow_remote = true to serve \
                     metrics beyond this host",
                    m.listen
                ),
            ));
        }
        Ok(())
    }
}
