//! `type = "redis"`: cloud-inotify over Redis pub/sub.
//!
//! Every event is published with `PUBLISH [channel_prefix]host:vm:/path
//! PAYLOAD`, where the payload is a BSON document with the fields of
//! DESIGN.md's event JSON (data as BSON binary), or with
//! `encoding = "json"` that JSON line. Events with more than
//! `max_data_bytes` (default 512 KiB) of data are split into several
//! messages; see [`payload`]. Monitors `PSUBSCRIBE` to channel patterns.
//!
//! # Patterns are Redis globs, not path globs
//!
//! In a `PSUBSCRIBE` pattern `*` matches any run of characters, *including*
//! `:` and `/`, and the empty string; `?` is one character, `[abc]` a set;
//! patterns are anchored at both ends. So `*:*:/var/log/*` matches
//! `h:v:/var/log/syslog` and also `h:v:/var/log/nginx/access.log`, and
//! `gs9671:*:/var/log/auth.log` matches the VM named `a:b` too if a VM
//! could have a `:` in its name (it cannot: names are checked). A path with
//! a literal `*`, `?`, `[` or `\` must escape it with `\` in a pattern.
//! (The `[[route]]` patterns of `gammaray.toml` are path-aware globs where
//! `*` stops at `/`; see `ChannelPattern`.)
//!
//! # Access control
//!
//! Redis 6+ ACLs restrict the channels a user may subscribe to with
//! `&pattern` rules: `ACL SETUSER monitor1 on >secret resetchannels
//! &gs9671:test:/var/log/* +psubscribe +subscribe +ping`. `PSUBSCRIBE`
//! needs the pattern to be *literally* one of the user's `&` patterns;
//! `SUBSCRIBE` to a channel needs the channel to match one. The sink's own
//! user needs `+publish +ping` and `&*` (or the prefix's patterns).
//!
//! # Connection, failures and backpressure
//!
//! The sink owns one thread with a current-thread tokio runtime and one
//! multiplexed connection (so it is safe to call from inside another async
//! runtime, such as the engine's actors). `send` encodes the batch on the
//! caller's thread, hands it to that thread, and waits until the
//! pipelined `PUBLISH`es are answered (in pipelines of at most
//! [`PIPELINE_BYTES`] bytes or [`PIPELINE_COMMANDS`] commands, whole events
//! each). Building the sink connects and sends `PING`: a sink whose server
//! cannot be reached is an error naming the sink and the URL.
//!
//! Redis pub/sub delivers at most once to the subscribers connected at
//! that moment, and so does this sink:
//! - if a pipeline fails (the connection broke), the sink reconnects at
//!   once and sends the rest of the batch again; if that fails too, the
//!   batch's undelivered events are counted as `failed` and `send` returns
//!   an error ([`SinkError::Io`]);
//! - the sink then waits before the next attempt, with exponential backoff
//!   from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; batches sent meanwhile are
//!   not attempted: they are counted as `dropped` and `send` returns `Ok`
//!   (no error per batch, one warning when the server goes away and one
//!   when it is back);
//! - the first batch after the backoff tries to reconnect; once connected,
//!   events flow again.
//!
//! Nothing is buffered across an outage: the engine never blocks or
//! crashes because Redis is down, and monitors see a gap (`seq` jumps).
//! A server that accepts connections but does not answer stalls `send` for
//! at most three times `timeout_ms` (a pipeline's reply, the reconnection,
//! the pipeline again), once per backoff interval; a refused connection
//! costs nothing.

pub mod payload;
pub mod subscribe;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gammaray_config::{RedisEncoding, RedisSinkConfig};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo};

pub use payload::{decode, Message, PayloadError, ReceivedEvent};
pub use subscribe::{Received, RedisSubscriber, SubscribeError};

use crate::{Sink, SinkError, SinkStats, Stamped};

/// A pipeline is sent once it holds this many payload bytes ...
pub const PIPELINE_BYTES: usize = 4 << 20;
/// ... or this many `PUBLISH` commands.
pub const PIPELINE_COMMANDS: usize = 1024;
/// The first wait after a failed connection.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait between connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The URL with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut out = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((u, _)) => format!("{scheme}://{u}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    if let Some(i) = out.find("pass=") {
        let end = out[i..].find('&').map_or(out.len(), |e| i + e);
        out.replace_range(i + 5..end, "***");
    }
    out
}

/// A redis-rs client for `url` with optional ACL credentials.
pub fn client(
    url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Client, redis::RedisError> {
    let mut info = url.into_connection_info()?;
    if username.is_some() || password.is_some() {
        let mut settings = info.redis_settings().clone();
        if let Some(u) = username {
            settings = settings.set_username(u);
        }
        if let Some(p) = password {
            settings = settings.set_password(p);
        }
        info = info.set_redis_settings(settings);
    }
    Client::open(info)
}

/// Exponential backoff between connection attempts.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    next_try: Option<Instant>,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            delay: BACKOFF_MIN,
            next_try: None,
            min: BACKOFF_MIN,
            max: BACKOFF_MAX,
        }
    }

    fn due(&self) -> bool {
        self.next_try.is_none_or(|t| Instant::now() >= t)
    }

    fn failed(&mut self) {
        self.next_try = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }

    fn reset(&mut self) {
        self.delay = self.min;
        self.next_try = None;
    }
}

/// Work for the connection thread.
enum Job {
    /// Connect (if needed) and PING.
    Ping,
    /// Connect if needed, then publish; `ends[i]` is the index in `msgs`
    /// after event `i`'s last message.
    Publish {
        msgs: Vec<Message>,
        ends: Vec<usize>,
        reconnect: bool,
    },
}

/// What the connection thread did.
enum Done {
    /// PING answered.
    Pong,
    /// `delivered` events went out; then `error`, if any, stopped the rest.
    Published {
        delivered: usize,
        error: Option<String>,
    },
    /// No connection could be made.
    Unreachable(String),
}

/// The Redis pub/sub sink.
pub struct RedisSink {
    name: String,
    shown_url: String,
    encoding: RedisEncoding,
    max_data_bytes: usize,
    prefix: String,
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    backoff: Backoff,
    /// Whether the last attempt failed (the server is considered down).
    down: bool,
    dropped_while_down: u64,
    stats: SinkStats,
}

impl RedisSink {
    /// Connects to the server and checks it with `PING`.
    pub fn new(name: &str, cfg: &RedisSinkConfig) -> Result<RedisSink, SinkError> {
        let shown_url = redact_url(&cfg.url);
        let config_err = |message: String| SinkError::Config {
            sink: name.to_string(),
            message,
        };
        let client = client(&cfg.url, cfg.username.as_deref(), cfg.password.as_deref())
            .map_err(|e| config_err(format!("url {shown_url}: {e}")))?;
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| config_err(format!("starting its runtime: {e}")))?;
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(1);
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(1);
        let thread = std::thread::Builder::new()
            .name(format!("redis-sink-{name}"))
            .spawn(move || connection_thread(rt, client, timeout, jobs_rx, done_tx))
            .map_err(|e| config_err(format!("starting its thread: {e}")))?;
        let mut sink = RedisSink {
            name: name.to_string(),
            shown_url,
            encoding: cfg.encoding,
            max_data_bytes: usize::try_from(cfg.max_data_bytes).unwrap_or(usize::MAX),
            prefix: cfg.channel_prefix.clone().unwrap_or_default(),
            jobs: Some(jobs_tx),
            done: done_rx,
            thread: Some(thread),
            backoff: Backoff::new(),
            down: false,
            dropped_while_down: 0,
            stats: SinkStats::default(),
        };
        match sink.call(Job::Ping) {
            Some(Done::Pong) => Ok(sink),
            Some(Done::Unreachable(e)) | Some(Done::Published { error: Some(e), .. }) => {
                Err(config_err(format!(
                    "health check failed: cannot reach Redis at {}: {e}",
                    sink.shown_url
                )))
            }
            _ => Err(config_err(format!(
                "health check failed: Redis at {}: the connection thread stopped",
                sink.shown_url
            ))),
        }
    }

    /// Sets the backoff between connection attempts (default
    /// [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`]); for tests and
    /// embedders that need other bounds. `min` is at least 1 ms and `max`
    /// at least `min`.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> RedisSink {
        let min = min.max(Duration::from_millis(1));
        self.backoff.min = min;
        self.backoff.max = max.max(min);
        self.backoff.reset();
        self
    }

    /// The server's URL as shown in messages (password hidden).
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// Whether the last attempt to deliver reached the server.
    pub fn is_up(&self) -> bool {
        !self.down
    }

    fn call(&mut self, job: Job) -> Option<Done> {
        self.jobs.as_ref()?.send(job).ok()?;
        self.done.recv().ok()
    }
}

/// The connection thread: runs jobs until the sink is dropped.
fn connection_thread(
    rt: tokio::runtime::Runtime,
    client: Client,
    timeout: Duration,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::SyncSender<Done>,
) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut conn: Option<MultiplexedConnection> = None;
    while let Ok(job) = jobs.recv() {
        let result = rt.block_on(async {
            match job {
                Job::Ping => {
                    let c = match connect(&client, &config).await {
                        Ok(c) => c,
                        Err(e) => return Done::Unreachable(e),
                    };
                    let mut c2 = c.clone();
                    match redis::cmd("PING").query_async::<String>(&mut c2).await {
                        Ok(_) => {
                            conn = Some(c);
                            Done::Pong
                        }
                        Err(e) => Done::Unreachable(e.to_string()),
                    }
                }
                Job::Publish {
                    msgs,
                    ends,
                    reconnect,
                } => publish(&client, &config, &mut conn, &msgs, &ends, reconnect).await,
            }
        });
        if done.send(result).is_err() {
            break;
        }
    }
}

async fn connect(
    client: &Client,
    config: &AsyncConnectionConfig,
) -> Result<MultiplexedConnection, String> {
    client
        .get_multiplexed_async_connection_with_config(config)
        .await
        .map_err(|e| e.to_string())
}

/// Publishes `msgs` in bounded pipelines of whole events; on a failure,
/// reconnects once and continues from the first event not confirmed.
async fn publish(
    client: &Client,
    config: &AsyncConnectionConfig,
    conn: &mut Option<MultiplexedConnection>,
    msgs: &[Message],
    ends: &[usize],
    reconnect: bool,
) -> Done {
    if conn.is_none() || reconnect {
        match connect(client, config).await {
            Ok(c) => {
                *conn = Some(c);
            }
            Err(e) => {
                *conn = None;
                return Done::Unreachable(e);
            }
        }
    }
    let mut delivered = 0usize; // events
    let mut retried = false;
    while delivered < ends.len() {
        // One pipeline: whole events from `delivered` on, bounded.
        let first_msg = if delivered == 0 {
            0
        } else {
            ends[delivered - 1]
        };
        let mut pipe = redis::pipe();
        let (mut bytes, mut cmds, mut upto) = (0usize, 0usize, delivered);
        let mut m = first_msg;
        while upto < ends.len()
            && (cmds == 0 || (bytes < PIPELINE_BYTES && cmds < PIPELINE_COMMANDS))
        {
            while m < ends[upto] {
                let msg = &msgs[m];
                pipe.cmd("PUBLISH")
                    .arg(&msg.channel)
                    .arg(&msg.payload[..])
                    .ignore();
                bytes += msg.payload.len() + msg.channel.len();
                cmds += 1;
                m += 1;
            }
            upto += 1;
        }
        let Some(c) = conn.as_mut() else {
            return Done::Unreachable("not connected".into());
        };
        match pipe.query_async::<()>(c).await {
            Ok(()) => delivered = upto,
            Err(e) => {
                *conn = None;
                if retried {
                    return Done::Published {
                        delivered,
                        error: Some(e.to_string()),
                    };
                }
                retried = true;
                tracing::debug!("redis publish failed ({e}); reconnecting once");
                match connect(client, config).await {
                    Ok(c) => {
                        *conn = Some(c);
                    }
                    Err(e2) => {
                        return Done::Published {
                            delivered,
                            error: Some(format!("{e}; reconnecting: {e2}")),
                        }
                    }
                }
            }
        }
    }
    Done::Published {
        delivered,
        error: None,
    }
}

impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, batch: &[Arc<Stamped>]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        if self.down && !self.backoff.due() {
            self.stats.dropped += n;
            self.dropped_while_down += n;
            return Ok(());
        }
        let mut msgs = Vec::with_capacity(batch.len());
        let mut ends = Vec::with_capacity(batch.len());
        let mut bad = 0u64;
        for s in batch {
            match payload::encode(
                s,
                self.encoding,
                self.max_data_bytes,
                &self.prefix,
                &mut msgs,
            ) {
                Ok(()) => ends.push(msgs.len()),
                Err(e) => {
                    tracing::warn!(
                        "sink {}: event {} of {}:{}: {e}",
                        self.name,
                        s.seq,
                        s.host,
                        s.vm
                    );
                    bad += 1;
                }
            }
        }
        self.stats.failed += bad;
        let events = ends.len() as u64;
        let reconnect = self.down;
        let outcome = self.call(Job::Publish {
            msgs,
            ends,
            reconnect,
        });
        let (delivered, error) = match outcome {
            Some(Done::Published {
                delivered, error, ..
            }) => (delivered as u64, error),
            Some(Done::Unreachable(e)) => (0, Some(e)),
            Some(Done::Pong) => (0, Some("unexpected reply".into())),
            None => (0, Some("the connection thread stopped".into())),
        };
        self.stats.sent += delivered;
        match error {
            None => {
                if self.down {
                    tracing::warn!(
                        "sink {}: Redis at {} is reachable again ({} events dropped while it was not)",
                        self.name,
                        self.shown_url,
                        self.dropped_while_down
                    );
                    self.down = false;
                    self.dropped_while_down = 0;
                }
                self.backoff.reset();
                Ok(())
            }
            Some(e) => {
                self.stats.failed += events - delivered;
                if !self.down {
                    tracing::warn!(
                        "sink {}: Redis at {} went away ({e}); dropping events until it is back",
                        self.name,
                        self.shown_url
                    );
                }
                self.down = true;
                self.backoff.failed();
                Err(SinkError::Io {
                    sink: self.name.clone(),
                    source: std::io::Error::other(format!(
                        "publishing to Redis at {}: {e} ({} of {n} events not delivered)",
                        self.shown_url,
                        events - delivered
                    )),
                })
            }
        }
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        // Every send waits for the server's replies: nothing is buffered.
        Ok(())
    }

    fn stats(&self) -> SinkStats {
        self.stats
    }
}

impl Drop for RedisSink {
    fn drop(&mut self) {
        // Closing the job channel ends the thread.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(redact_url("redis://h:6379/1"), "redis://h:6379/1");
        assert_eq!(
            redact_url("redis://u:secret@h:6379/1"),
            "redis://u:***@h:6379/1"
        );
        assert_eq!(
            redact_url("unix:///run/r.sock?user=u&pass=secret&db=2"),
            "unix:///run/r.sock?user=u&pass=***&db=2"
        );
    }

    #[test]
    fn backoff_doubles_to_its_bound() {
        let mut b = Backoff::new();
        assert!(b.due());
        for _ in 0..20 {
            b.failed();
        }
        assert_eq!(b.delay, BACKOFF_MAX);
        assert!(!b.due());
        b.reset();
        assert!(b.due());
        assert_eq!(b.delay, BACKOFF_MIN);
    }

    #[test]
    fn unreachable_server_is_a_config_error_naming_sink_and_url() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = RedisSinkConfig::new(format!("redis://u:pw@127.0.0.1:{port}"));
        let e = RedisSink::new("cloud", &cfg).err().unwrap().to_string();
        assert!(e.starts_with("sink \"cloud\": health check failed"), "{e}");
        assert!(
            e.contains(&format!("redis://u:***@127.0.0.1:{port}")),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
    }
}
