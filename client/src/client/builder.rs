//! [`Builder`]: the client's settings, its connections to the nodes, and the watch task
//! it starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::time::Duration;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::cache::LeaseCache;
use crate::error::ClientError;
use crate::tls::ClientTls;
use crate::transport::Nodes;
use crate::watch;

pub use crate::shared::FailMode;
use crate::shared::{Inner, removal_window_ms};

use super::AffinityClient;

/// Settings of an [`AffinityClient`]; see [`AffinityClient::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    cache_capacity: usize,
    skew_margin: Duration,
    fail_mode: FailMode,
    watch: bool,
    watch_timeout: Duration,
    max_staleness: Duration,
    tls: Option<ClientTls>,
    token: Option<Secret>,
}

/// A bearer token, kept out of `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(1500),
            cache_capacity: 100_000,
            skew_margin: Duration::from_secs(1),
            fail_mode: FailMode::Open,
            watch: true,
            watch_timeout: Duration::from_secs(3),
            max_staleness: Duration::from_secs(5),
            tls: None,
            token: None,
        }
    }
}

impl Builder {
    /// Store nodes (HOST:PORT); any of them answers any request.
    #[must_use]
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// How long connecting to one node may take. Default 1 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Deadline of one call, retries included; past it `resolve` falls back (or fails with
    /// [`FailMode::Closed`]). Default 1.5 s.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Leases cached at most. Default 100,000; 0 turns the cache off, so every `resolve`
    /// asks the store.
    #[must_use]
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// A cached lease is served until this long before its end, to absorb clock skew
    /// between this host and the store. Default 1 s.
    #[must_use]
    pub fn skew_margin(mut self, margin: Duration) -> Self {
        self.skew_margin = margin;
        self
    }

    /// What `resolve` does when the store cannot answer. Default [`FailMode::Open`].
    #[must_use]
    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    /// Talk to the nodes over TLS (they run with `--tls-cert`); see [`ClientTls`].
    /// Default plaintext.
    #[must_use]
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Send this bearer token with every call (`authorization: Bearer <token>`), for nodes
    /// whose `--authz` file gives roles to tokens. Use it over TLS only. Default none.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret(token.into()));
        self
    }

    /// Follow the store's `Watch` stream to keep the cache current. Default on.
    #[must_use]
    pub fn watch(mut self, on: bool) -> Self {
        self.watch = on;
        self
    }

    /// A `Watch` stream that carries neither changes nor progress from a node in touch with
    /// the leader for this long is treated as broken: the client moves to another node and
    /// resumes there. The store reports progress every 0.5 s. Default 3 s.
    #[must_use]
    pub fn watch_timeout(mut self, timeout: Duration) -> Self {
        self.watch_timeout = timeout;
        self
    }

    /// Cached leases are served (by [`AffinityClient::cached`] and the cache path of
    /// [`AffinityClient::resolve`]) only while the watch stream has had progress from a node
    /// in touch with the leader within this time; past it `cached()` answers `None` and
    /// `resolve` asks the store, so a decision the store has changed is never served for
    /// longer than this. With `watch` off the cache never has progress, so it serves
    /// nothing unless this is [`Duration::MAX`] (serve every lease until its end, with no
    /// bound on how stale it may be). Default 5 s.
    #[must_use]
    pub fn max_staleness(mut self, staleness: Duration) -> Self {
        self.max_staleness = staleness;
        self
    }

    /// Build the client. Connections are opened lazily; with `watch` on (the default) this
    /// must run inside a Tokio runtime, which hosts the watch task.
    pub fn build(self) -> Result<AffinityClient, ClientError> {
        if self.request_timeout.is_zero() {
            return Err(ClientError::Config(
                "request_timeout must be more than 0".into(),
            ));
        }
        if self.watch_timeout.is_zero() {
            return Err(ClientError::Config(
                "watch_timeout must be more than 0".into(),
            ));
        }
        if self.token.is_some() && self.tls.is_none() {
            return Err(ClientError::Config(
                "token needs tls: a bearer token must not cross the network in plaintext".into(),
            ));
        }
        let bearer = crate::transport::Bearer::new(self.token.as_ref().map(|t| t.0.as_str()))?;
        let nodes = Nodes::new(
            &self.endpoints,
            self.connect_timeout,
            self.tls.as_ref(),
            &bearer,
        )?;
        let inner = Arc::new(Inner {
            nodes,
            cache: LeaseCache::new(self.cache_capacity, removal_window_ms(self.request_timeout)),
            skew_ms: i64::try_from(self.skew_margin.as_millis()).unwrap_or(i64::MAX),
            request_timeout: self.request_timeout,
            fail_mode: self.fail_mode,
            inflight: Mutex::new(HashMap::new()),
            flight_ids: AtomicU64::new(0),
            breaker: Breaker::default(),
            last_warning_ms: AtomicI64::new(i64::MIN),
            watching: AtomicBool::new(false),
            fresh_ms: AtomicI64::new(i64::MIN),
            max_staleness_ms: i64::try_from(self.max_staleness.as_millis()).unwrap_or(i64::MAX),
            watch_timeout: self.watch_timeout,
            stop: CancellationToken::new(),
        });
        if self.watch {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                ClientError::Config(
                    "build() must run inside a Tokio runtime when watch is on".into(),
                )
            })?;
            runtime.spawn(watch::run(Arc::downgrade(&inner), inner.stop.clone()));
        }
        Ok(AffinityClient { inner })
    }
}
