//! A QMP (QEMU Machine Protocol) client over a unix socket: capabilities
//! negotiation, commands with a timeout on every step, and events.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// Longest line accepted from QEMU (16 MiB; `query-named-block-nodes` of a
/// long backing chain is the largest reply in practice, far below this).
pub const MAX_LINE: u64 = 16 << 20;
/// Events kept for subscribers that fall behind.
const EVENT_BACKLOG: usize = 1024;
/// Events accepted ahead of the greeting.
const MAX_PRE_GREETING: usize = 64;
/// Timeout used when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket failed.
    #[error("QMP I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A step took longer than its timeout.
    #[error("QMP timed out after {timeout:?} waiting for {step}")]
    Timeout {
        /// What was being waited for.
        step: String,
        /// The timeout.
        timeout: Duration,
    },
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (e.g. `GenericError`).
        class: String,
        /// QEMU's message.
        desc: String,
    },
    /// QEMU sent something that is not QMP.
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// The connection closed.
    #[error("QMP connection closed")]
    Closed,
}

/// An asynchronous event from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `BLOCK_JOB_READY`.
    pub name: String,
    /// The event's `data` member (`null` when absent).
    pub data: Value,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>;

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    w: OwnedWriteHalf,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: u64,
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<Value>, QmpError> {
    let mut buf = Vec::new();
    let n = (&mut *r).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && n as u64 >= MAX_LINE {
        return Err(QmpError::Protocol(format!(
            "line longer than {MAX_LINE} bytes"
        )));
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| QmpError::Protocol(format!("invalid JSON from QEMU: {e}")))
}

fn lock(
    p: &Pending,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and negotiates
    /// capabilities; every step is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        // A socket that QEMU has bound but not yet listens on refuses
        // connections for a moment: retry until the timeout.
        let connect = async {
            loop {
                match UnixStream::connect(path).await {
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                        ) =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        };
        let stream =
            tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| QmpError::Timeout {
                    step: format!("connecting to {}", path.display()),
                    timeout,
                })??;
        let (r, w) = stream.into_split();
        let mut r = BufReader::new(r);
        let greet = async {
            // QEMU may queue events ahead of the greeting on a fresh
            // connection; skip a bounded number of them.
            for _ in 0..MAX_PRE_GREETING {
                let msg = read_line(&mut r).await?.ok_or(QmpError::Closed)?;
                if msg.get("QMP").is_some() {
                    return Ok(());
                }
                if msg.get("event").is_none() {
                    return Err(QmpError::Protocol(format!("unexpected greeting {msg}")));
                }
                tracing::debug!("QMP event before the greeting: {msg}");
            }
            Err(QmpError::Protocol("no QMP greeting".into()))
        };
        tokio::time::timeout(timeout, greet)
            .await
            .map_err(|_| QmpError::Timeout {
                step: "the QMP greeting (is another client connected?)".into(),
                timeout,
            })??;
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let reader = tokio::spawn(Self::read_loop(r, pending.clone(), events.clone()));
        let mut qmp = Qmp {
            w,
            pending,
            events,
            next_id: 1,
            timeout,
            reader,
        };
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    async fn read_loop(
        mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
        pending: Pending,
        events: broadcast::Sender<Event>,
    ) {
        let err = loop {
            let msg = match read_line(&mut r).await {
                Ok(Some(v)) => v,
                Ok(None) => break QmpError::Closed,
                Err(e) => break e,
            };
            if let Some(name) = msg.get("event").and_then(Value::as_str) {
                let ev = Event {
                    name: name.to_string(),
                    data: msg.get("data").cloned().unwrap_or(Value::Null),
                };
                tracing::debug!("QMP event {} {}", ev.name, ev.data);
                let _ = events.send(ev);
                continue;
            }
            let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                tracing::warn!("QMP message without id ignored: {msg}");
                continue;
            };
            let Some(tx) = lock(&pending).remove(&id) else {
                tracing::debug!("QMP reply to a command no longer waited for: {msg}");
                continue;
            };
            let res = if let Some(ret) = msg.get("return") {
                Ok(ret.clone())
            } else if let Some(e) = msg.get("error") {
                Err(QmpError::Command {
                    command: String::new(),
                    class: e
                        .get("class")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    desc: e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_string(),
                })
            } else {
                Err(QmpError::Protocol(format!(
                    "reply with neither return nor error: {msg}"
                )))
            };
            let _ = tx.send(res);
        };
        tracing::debug!("QMP reader ends: {err}");
        for (_, tx) in lock(&pending).drain() {
            let _ = tx.send(Err(QmpError::Closed));
        }
    }

    /// The per-step timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Subscribes to events (only events after this call are seen).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `command` with `args` (`Value::Null` for none) and returns its
    /// `return` value, within the client's timeout.
    pub async fn execute(&mut self, command: &str, args: Value) -> Result<Value, QmpError> {
        let timeout = self.timeout;
        self.execute_with_timeout(command, args, timeout).await
    }

    /// Like [`execute`](Self::execute) with an explicit timeout.
    pub async fn execute_with_timeout(
        &mut self,
        command: &str,
        args: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = serde_json::to_vec(&msg).map_err(|e| QmpError::Protocol(e.to_string()))?;
        line.push(b'\n');
        tracing::debug!("QMP -> {msg}");
        let step = || QmpError::Timeout {
            step: format!("QMP command {command}"),
            timeout,
        };
        tokio::time::timeout(timeout, self.w.write_all(&line))
            .await
            .map_err(|_| step())??;
        let res = match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                lock(&self.pending).remove(&id);
                return Err(step());
            }
            Ok(Err(_)) => return Err(QmpError::Closed),
            Ok(Ok(r)) => r,
        };
        res.map_err(|e| match e {
            QmpError::Command { class, desc, .. } => QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            },
            other => other,
        })
    }

    /// Waits for an event that `pred` accepts, on a receiver from
    /// [`subscribe`](Self::subscribe) made before the action that causes it.
    pub async fn wait_event(
        rx: &mut broadcast::Receiver<Event>,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Result<Event, QmpError> {
        let fut = async {
            loop {
                match rx.recv().await {
                    Ok(ev) if pred(&ev) => return Ok(ev),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("QMP: {n} events missed while waiting for {what}");
                    }
                    Err(broadcast::error::RecvError::Closed) => return Err(QmpError::Closed),
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| QmpError::Timeout {
                step: what.to_string(),
                timeout,
            })?
    }
}
