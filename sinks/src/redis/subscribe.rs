//! The monitor's side: `PSUBSCRIBE` to channel patterns and decode what
//! arrives (what `gammaray watch` and `gammaray tail` use).
//!
//! [`RedisSubscriber`] is blocking (it owns a current-thread runtime; do not
//! call it from inside another async runtime). If the server closes the
//! connection (a restart, or a subscriber that fell behind a burst and hit
//! `client-output-buffer-limit pubsub`), it reconnects with backoff and
//! subscribes again; events published meanwhile are not seen.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubStream;
use redis::Client;

use super::payload::{decode, PayloadError, ReceivedEvent};
use super::{client, redact_url, BACKOFF_MAX, BACKOFF_MIN};

/// Why subscribing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The URL or credentials are not usable.
    #[error("Redis URL {url}: {message}")]
    Url {
        /// The URL (password hidden).
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The server could not be reached.
    #[error("cannot reach Redis at {url}: {message}")]
    Connect {
        /// The URL (password hidden).
        url: String,
        /// What failed.
        message: String,
    },
    /// The server refused a pattern (for example an ACL's `NOPERM`).
    #[error("PSUBSCRIBE {pattern:?} refused by Redis at {url}: {message}")]
    Refused {
        /// The pattern.
        pattern: String,
        /// The URL (password hidden).
        url: String,
        /// The server's answer.
        message: String,
    },
    /// The runtime could not start.
    #[error("starting the subscriber's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// One message received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The channel it was published on.
    pub channel: String,
    /// The decoded event, or why it could not be decoded.
    pub event: Result<ReceivedEvent, PayloadError>,
}

/// A blocking pattern subscriber with reconnection.
pub struct RedisSubscriber {
    rt: tokio::runtime::Runtime,
    client: Client,
    url: String,
    patterns: Vec<String>,
    timeout: Duration,
    stream: Option<PubSubStream>,
    // Keeps the subscription's sending half alive.
    _sink: Option<redis::aio::PubSubSink>,
    delay: Duration,
}

impl RedisSubscriber {
    /// Connects to `url` (with optional ACL credentials) and `PSUBSCRIBE`s
    /// to every pattern; a refused pattern is an error naming it.
    pub fn connect(
        url: &str,
        username: Option<&str>,
        password: Option<&str>,
        patterns: &[String],
        timeout: Duration,
    ) -> Result<RedisSubscriber, SubscribeError> {
        let shown = redact_url(url);
        let client = client(url, username, password).map_err(|e| SubscribeError::Url {
            url: shown.clone(),
            message: e.to_string(),
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SubscribeError::Runtime)?;
        let mut sub = RedisSubscriber {
            rt,
            client,
            url: shown,
            patterns: patterns.to_vec(),
            timeout,
            stream: None,
            _sink: None,
            delay: BACKOFF_MIN,
        };
        sub.subscribe()?;
        Ok(sub)
    }

    /// The server's URL (password hidden).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn subscribe(&mut self) -> Result<(), SubscribeError> {
        let url = self.url.clone();
        let connect_err = |message: String| SubscribeError::Connect {
            url: url.clone(),
            message,
        };
        let (client, patterns, timeout) = (&self.client, &self.patterns, self.timeout);
        let (sink, stream) = self.rt.block_on(async {
            let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                .await
                .map_err(|_| connect_err(format!("no answer within {timeout:?}")))?
                .map_err(|e| connect_err(e.to_string()))?;
            let (mut sink, stream) = pubsub.split();
            for p in patterns {
                let answer = tokio::time::timeout(timeout, sink.psubscribe(p))
                    .await
                    .map_err(|_| {
                        connect_err(format!("no answer to PSUBSCRIBE within {timeout:?}"))
                    })?;
                if let Err(e) = answer {
                    return Err(SubscribeError::Refused {
                        pattern: p.clone(),
                        url: url.clone(),
                        message: e.to_string(),
                    });
                }
            }
            Ok((sink, stream))
        })?;
        self._sink = Some(sink);
        self.stream = Some(stream);
        self.delay = BACKOFF_MIN;
        Ok(())
    }

    /// Waits up to `wait` for the next message. `Ok(None)` when none came.
    /// A lost connection is re-established (with backoff, within `wait`
    /// per call) and reported as a warning; an error is returned only when
    /// a pattern is refused after reconnecting.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Received>, SubscribeError> {
        let Some(stream) = self.stream.as_mut() else {
            self.reconnect(wait)?;
            return Ok(None);
        };
        let got = self
            .rt
            .block_on(async { tokio::time::timeout(wait, stream.next()).await });
        match got {
            Err(_) => Ok(None),
            Ok(Some(msg)) => Ok(Some(Received {
                channel: msg.get_channel_name().to_string(),
                event: decode(msg.get_payload_bytes()),
            })),
            Ok(None) => {
                tracing::warn!(
                    "the connection to Redis at {} was closed; subscribing again",
                    self.url
                );
                self.stream = None;
                self._sink = None;
                Ok(None)
            }
        }
    }

    fn reconnect(&mut self, wait: Duration) -> Result<(), SubscribeError> {
        let pause = self.delay.min(wait);
        std::thread::sleep(pause);
        match self.subscribe() {
            Ok(()) => {
                tracing::warn!("subscribed again to Redis at {}", self.url);
                Ok(())
            }
            Err(e @ SubscribeError::Refused { .. }) => Err(e),
            Err(e) => {
                tracing::debug!("{e}");
                self.delay = (self.delay * 2).min(BACKOFF_MAX);
                Ok(())
            }
        }
    }
}
