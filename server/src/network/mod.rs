//! Raft over gRPC, the client side: how this node reaches its peers.
//!
//! [`Peers`] keeps one lazily connected HTTP/2 channel per peer address, shared by Raft
//! replication and by request forwarding, so connections are reused. [`PeerNetwork`] is
//! openraft's network factory; each [`PeerConnection`] turns openraft's RPCs into calls on
//! the `affinity.v1.Raft` service (see [`crate::grpc`] for the serving side). Transport
//! failures are reported as "unreachable", which makes openraft back off from that peer.
//!
//! Every leadership handoff this node starts goes out through here, so [`Handoff`] records
//! the term in which it began: from that moment another node may lead, and the node stops
//! answering from its own state (see `Node::lease_holds_here`).

mod connection;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

pub use connection::PeerConnection;

use crate::raft::{Node, NodeId, TypeConfig};
use crate::tls::{TlsConfig, TlsError};

/// Largest message a peer may send or receive (log batches, snapshot chunks).
pub const PEER_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Why a channel to a peer cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The address does not make an endpoint.
    #[error("{0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS files for peer connections cannot be used.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Channels to peers, by address. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Bumped when the TLS files change: holders of a channel made before get a new one.
    generation: Arc<AtomicU64>,
    connect_timeout: Duration,
    tls: Option<TlsConfig>,
}

impl Peers {
    /// A pool whose connections give up after `connect_timeout`; with `tls`, over TLS (see
    /// [`crate::tls`]).
    pub fn new(connect_timeout: Duration, tls: Option<TlsConfig>) -> Self {
        Self {
            channels: Arc::new(Mutex::new(HashMap::new())),
            generation: Arc::new(AtomicU64::new(0)),
            connect_timeout,
            tls,
        }
    }

    /// Which set of channels is current; see [`Peers::renew`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forget every channel, so the next call makes new ones (with the TLS files as they
    /// are now); connections in use finish on the old channels.
    pub fn renew(&self) {
        let mut channels = self.channels.lock();
        channels.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Renew the channels whenever a TLS file changes, until `stop`. Without TLS, nothing.
    pub async fn follow_tls_files(self, stop: tokio_util::sync::CancellationToken) {
        let Some(tls) = self.tls.clone() else {
            return;
        };
        crate::tls::on_change(
            crate::tls::all_files(&tls),
            tls.reload_interval,
            stop,
            || {
                self.renew();
                tracing::info!("TLS files changed; new connections to peers use them");
                true
            },
        )
        .await;
    }

    /// The channel to `address` (HOST:PORT), created on first use; it connects lazily and
    /// reconnects by itself after failures.
    pub fn channel(&self, address: &str) -> Result<Channel, ChannelError> {
        if let Some(channel) = self.channels.lock().get(address) {
            return Ok(channel.clone());
        }
        let endpoint = match &self.tls {
            Some(tls) => Endpoint::from_shared(format!("https://{address}"))?
                .tls_config(crate::tls::peer_client_config(tls, address)?)?,
            None => Endpoint::from_shared(format!("http://{address}"))?,
        };
        let channel = endpoint
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        self.channels
            .lock()
            .entry(address.to_string())
            .or_insert(channel.clone());
        Ok(channel)
    }
}

/// The store time this node, leading `term`, would stamp a proposal with now; carried by
/// every append it sends, so that followers know where a new leader must start from (see
/// [`crate::clock`]). Implemented above this layer, by the node.
pub trait LeaderTime: Send + Sync {
    /// Store time (Unix ms) as leader of `term`.
    fn store_ms(&self, term: u64) -> i64;
}

/// The term in which this node, as leader, began handing leadership over (0: never).
/// Set before the handoff message leaves, so before the target can have been elected.
/// Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Handoff(Arc<AtomicU64>);

impl Handoff {
    /// A handoff begins in `term`.
    pub fn begin(&self, term: u64) {
        self.0.fetch_max(term, Ordering::SeqCst);
    }

    /// Whether this node began a handoff in `term`: for the rest of that term another node
    /// may lead.
    pub fn began_in(&self, term: u64) -> bool {
        term > 0 && self.0.load(Ordering::SeqCst) >= term
    }
}

/// openraft's network factory over [`Peers`].
#[derive(Clone)]
pub struct PeerNetwork {
    id: NodeId,
    peers: Peers,
    handoff: Handoff,
    time: Arc<dyn LeaderTime>,
}

impl PeerNetwork {
    /// The network of node `id`, recording the handoffs it sends in `handoff` and stamping
    /// its appends with `time`.
    pub fn new(id: NodeId, peers: Peers, handoff: Handoff, time: Arc<dyn LeaderTime>) -> Self {
        Self {
            id,
            peers,
            handoff,
            time,
        }
    }
}

impl openraft::RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        PeerConnection::new(
            self.id,
            target,
            node.peer().to_string(),
            self.peers.clone(),
            self.handoff.clone(),
            Arc::clone(&self.time),
        )
    }
}
