//! The typed shape of `gammaray.toml`. Every struct rejects unknown keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Mebibyte.
const MIB: u64 = 1 << 20;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This machine's name in channels (`host:vm:/path`). Defaults to the
    /// hostname (`/proc/sys/kernel/hostname`).
    #[serde(default = "default_host")]
    pub host: String,
    /// The VMs to watch (`[[vm]]`).
    #[serde(default)]
    pub vm: Vec<VmConfig>,
    /// Capture and inference policies (`[policy]`).
    #[serde(default)]
    pub policy: Policy,
    /// Named sinks (`[sinks.NAME]`, chosen by `type`). Defaults to one
    /// sink named `stdout` when the section is absent.
    #[serde(default = "default_sinks")]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Routes from channel patterns to sinks (`[[route]]`). Defaults to
    /// `*:*:/**` → `stdout` when absent.
    #[serde(default = "default_routes")]
    pub route: Vec<Route>,
    /// The `/metrics` and `/health` endpoint (`[metrics]`).
    #[serde(default)]
    pub metrics: Metrics,
}

/// The machine's hostname, or `localhost` if it cannot be read.
pub fn default_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_sinks() -> BTreeMap<String, SinkConfig> {
    BTreeMap::from([(
        "stdout".to_string(),
        SinkConfig::Stdout(StdoutSinkConfig {}),
    )])
}

fn default_routes() -> Vec<Route> {
    vec![Route {
        channel: "*:*:/**".to_string(),
        sinks: vec!["stdout".to_string()],
    }]
}

/// One watched VM (`[[vm]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The VM's name in channels; unique, no `:`.
    pub name: String,
    /// The raw disk image: crawled at start and served, for `serve`; the
    /// image the trace started from, for `replay`; for `attach`, the file
    /// where gammaray keeps its own copy of the guest's disk (created or
    /// overwritten; it must not be the guest's image, which is refused).
    pub disk: PathBuf,
    /// Where the VM's writes come from.
    pub source: Source,
    /// The crawl index; default `DISK.gammaray` beside the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<PathBuf>,
}

/// Where a VM's writes come from: `source = { type = "…", … }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// gammaray serves `disk` over NBD on a unix socket; QEMU is started
    /// with `file=nbd+unix:///?socket=SOCKET`.
    Serve {
        /// The unix socket to listen on (its directory must exist).
        socket: PathBuf,
    },
    /// Attach to a running QEMU over QMP: the VM is paused for the few
    /// commands that start a point-in-time copy of the drive into `disk`
    /// and the tap; the copy is crawled while the writes queue up, then
    /// the queue is replayed and followed live.
    Attach {
        /// QEMU's QMP unix socket.
        qmp: PathBuf,
        /// The guest drive's node or device name.
        drive: String,
        /// How writes are taken out of QEMU (default `mirror`).
        #[serde(default)]
        via: AttachVia,
        /// Limit on QEMU's copy of the drive, in bytes per second, to
        /// spare the guest's I/O (default 0: unlimited). Writes queue up
        /// for longer while the copy runs.
        #[serde(
            default,
            deserialize_with = "crate::size::deserialize",
            skip_serializing_if = "is_zero"
        )]
        copy_rate: u64,
    },
    /// Replay a dm-log-writes trace recorded from `disk`.
    Replay {
        /// The trace file.
        log: PathBuf,
        /// Replay at the trace's recorded timing instead of as fast as
        /// possible (default false).
        #[serde(default)]
        pace: bool,
    },
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// How live attach takes writes out of QEMU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachVia {
    /// `blockdev-mirror` (sync none, write-blocking) to gammaray's NBD
    /// target; works with every image format.
    #[default]
    Mirror,
    /// QEMU's `blklogwrites` driver writing a dm-log-writes trace.
    Blklogwrites,
}

/// Capture and inference policies (`[policy]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Byte limit of a VM's write queue (default 250 MiB).
    #[serde(deserialize_with = "crate::size::deserialize")]
    pub queue_bytes: u64,
    /// While writes flow, sinks are flushed (events made durable) at least
    /// this often (default 5000 ms); they are also flushed whenever the VM
    /// is idle. Writes never wait for it: the queue hands its whole batch
    /// to inference as soon as inference is free.
    pub flush_timeout_ms: u64,
    /// Writes to not-yet-owned blocks are held this long (default 30000 ms).
    pub unknown_ttl_ms: u64,
    /// ... and at most this many bytes of them per VM (default 64 MiB).
    #[serde(deserialize_with = "crate::size::deserialize")]
    pub unknown_budget_bytes: u64,
    /// The data-drop policy (`[policy.data_drop]`).
    pub data_drop: DataDrop,
    /// The lazy-load policy (`[policy.lazy_load]`).
    pub lazy_load: LazyLoad,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            queue_bytes: 250 * MIB,
            flush_timeout_ms: 5000,
            unknown_ttl_ms: 30_000,
            unknown_budget_bytes: 64 * MIB,
            data_drop: DataDrop::default(),
            lazy_load: LazyLoad::default(),
        }
    }
}

/// Under pressure, drop data writes (not metadata) and report `lost`
/// ranges (`[policy.data_drop]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataDrop {
    /// Whether the policy may switch on (default true).
    pub enabled: bool,
    /// Start dropping when the queue is this full, a fraction of
    /// `queue_bytes` in (0, 1] (default 0.8).
    pub high_water: f64,
    /// Stop dropping when the queue is back below this fraction; below
    /// `high_water` (default 0.5).
    pub low_water: f64,
}

impl Default for DataDrop {
    fn default() -> Self {
        DataDrop {
            enabled: true,
            high_water: 0.8,
            low_water: 0.5,
        }
    }
}

/// Keep only the block-owner map and the metadata of the files being
/// written resident; the rest lives in a scratch store and is loaded on
/// demand (`[policy.lazy_load]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LazyLoad {
    /// Whether to load lazily (default false: load the whole index).
    pub enabled: bool,
    /// Resident metadata budget per file system when enabled (default
    /// 256 MiB): file records and names beyond it are evicted, least
    /// recently used first. The block-owner map is not counted.
    #[serde(deserialize_with = "crate::size::deserialize")]
    pub budget_bytes: u64,
}

impl Default for LazyLoad {
    fn default() -> Self {
        LazyLoad {
            enabled: false,
            budget_bytes: 256 * MIB,
        }
    }
}

/// One sink, chosen by `type` (`[sinks.NAME] type = "…"`), in Vector's
/// style. Adding a sink type adds one variant here, one module in
/// `gammaray-sinks`, and one arm in its `build` (deliberately not
/// `#[non_exhaustive]`: the compiler then points at every `match` that must
/// learn the new type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkConfig {
    /// JSON lines on standard output.
    Stdout(StdoutSinkConfig),
    /// JSON lines appended to a file.
    File(FileSinkConfig),
    /// Redis pub/sub ("cloud-inotify"): each event `PUBLISH`ed on its
    /// channel `host:vm:/path`.
    Redis(RedisSinkConfig),
    /// Kafka: each event produced to a topic, keyed by its channel.
    Kafka(crate::KafkaSinkConfig),
}

impl SinkConfig {
    /// The `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkConfig::Stdout(_) => "stdout",
            SinkConfig::File(_) => "file",
            SinkConfig::Redis(_) => "redis",
            SinkConfig::Kafka(_) => "kafka",
        }
    }
}

/// `type = "stdout"`: no options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

/// `type = "file"`: JSON lines appended to `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file; created if missing, its directory must exist.
    pub path: PathBuf,
}

/// The default [`RedisSinkConfig::max_data_bytes`]: 512 KiB.
pub const REDIS_DEFAULT_MAX_DATA_BYTES: u64 = 512 << 10;
/// The largest [`RedisSinkConfig::max_data_bytes`]: 256 MiB (Redis refuses
/// bulk strings above 512 MB, and a subscriber's output buffer limit is far
/// lower).
pub const REDIS_MAX_MAX_DATA_BYTES: u64 = 256 << 20;
/// The default [`RedisSinkConfig::timeout_ms`].
pub const REDIS_DEFAULT_TIMEOUT_MS: u64 = 2000;

/// `type = "redis"`: cloud-inotify over Redis pub/sub. Each event is
/// published with `PUBLISH [channel_prefix]host:vm:/path PAYLOAD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// The server: `redis://HOST[:PORT][/DB]` (port 6379 and database 0 by
    /// default) or a unix socket, `unix:///PATH[?db=N]`.
    pub url: String,
    /// ACL user name (Redis 6+); needs `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (of `username`, or of the `default` user). Prefer setting
    /// it from the environment: `GAMMARAY__SINKS__NAME__PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The payload: `bson` (default; data as BSON binary) or `json`
    /// (DESIGN.md's JSON line, data in base64).
    #[serde(default)]
    pub encoding: RedisEncoding,
    /// An event carrying more data bytes than this is published as several
    /// messages, each with a piece of the data and its own `offset`/`len`
    /// (default 512 KiB; at most 256 MiB).
    #[serde(
        default = "default_redis_max_data",
        deserialize_with = "crate::size::deserialize"
    )]
    pub max_data_bytes: u64,
    /// Prepended to every channel (default none): `prefix` + `host:vm:/path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_prefix: Option<String>,
    /// Connect and response timeout, in milliseconds (default 2000).
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
}

fn default_redis_max_data() -> u64 {
    REDIS_DEFAULT_MAX_DATA_BYTES
}

fn default_redis_timeout() -> u64 {
    REDIS_DEFAULT_TIMEOUT_MS
}

impl RedisSinkConfig {
    /// A configuration with every default and the server at `url`.
    pub fn new(url: impl Into<String>) -> RedisSinkConfig {
        RedisSinkConfig {
            url: url.into(),
            username: None,
            password: None,
            encoding: RedisEncoding::default(),
            max_data_bytes: REDIS_DEFAULT_MAX_DATA_BYTES,
            channel_prefix: None,
            timeout_ms: REDIS_DEFAULT_TIMEOUT_MS,
        }
    }
}

/// How a Redis sink encodes events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisEncoding {
    /// A BSON document with the JSON's fields; data as BSON binary.
    #[default]
    Bson,
    /// DESIGN.md's JSON line (data as `data_b64`).
    Json,
}

/// A route (`[[route]]`): events on channels matching `channel` go to
/// `sinks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A channel pattern, `host:vm:/path/glob`; see [`crate::ChannelPattern`].
    pub channel: String,
    /// Names of sinks defined under `[sinks.NAME]`.
    pub sinks: Vec<String>,
}

/// The Prometheus `/metrics` and `/health` endpoint (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve the endpoint (default true).
    pub enabled: bool,
    /// Listen address (default `127.0.0.1:9187`); must be loopback unless
    /// `allow_remote` is set.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` address (default false).
    pub allow_remote: bool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9187)),
            allow_remote: false,
        }
    }
}
