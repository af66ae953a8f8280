//! The connection to a cluster every command shares: endpoints tried in turn, deadlines,
//! TLS and the bearer token, and the flags of a lease's key and lifetime.

use std::future::Future;
use std::time::Duration;

use affinity_client::ClientTls;
use affinity_proto::pb::affinity_client::AffinityClient;
use affinity_proto::pb::cluster_client::ClusterClient;
use affinity_proto::{GatewayDuration, pb};
use clap::Args;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Args, Clone)]
pub(crate) struct Masks {
    /// IPv4 prefix length of the key (0..=32).
    #[arg(long)]
    pub(crate) ipv4_mask: Option<u32>,
    /// IPv6 prefix length of the key (0..=128).
    #[arg(long)]
    pub(crate) ipv6_mask: Option<u32>,
}

#[derive(Args, Clone)]
pub(crate) struct Lifetime {
    /// Absolute timeout of a new lease (a duration like 5m).
    #[arg(long, default_value = "5m")]
    pub(crate) timeout: GatewayDuration,
    /// Idle timeout of a new lease.
    #[arg(long)]
    pub(crate) idle_timeout: Option<GatewayDuration>,
}

/// What a command answers: a JSON document (printed as a table without `--json`).
pub(crate) type Output = Result<Value, Status>;

/// How to reach the cluster.
pub(crate) struct Ctl {
    pub(crate) endpoints: Vec<String>,
    pub(crate) deadline: Duration,
    pub(crate) tls: Option<ClientTls>,
    /// `Bearer <token>`, when given.
    pub(crate) authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Ctl {
    async fn channel(&self, endpoint: &str) -> Result<Channel, Status> {
        let bad = |e: tonic::transport::Error| {
            Status::invalid_argument(format!("endpoint {endpoint:?}: {e}"))
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut target = Endpoint::from_shared(format!("{scheme}://{endpoint}")).map_err(bad)?;
        if let Some(tls) = &self.tls {
            target = target.tls_config(tls.for_address(endpoint)).map_err(bad)?;
        }
        target
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("{endpoint}: {e}")))
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Try each endpoint until one answers with something other than UNAVAILABLE; while
    /// every node says UNAVAILABLE (an election, a node starting), go round again with a
    /// short pause, until the deadline.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let give_up = tokio::time::Instant::now() + self.deadline;
        let mut pause = Duration::from_millis(50);
        loop {
            let mut last = Status::unavailable("no endpoint given");
            for endpoint in &self.endpoints {
                let answer = match self.channel(endpoint).await {
                    Ok(channel) => f(channel).await,
                    Err(status) => Err(status),
                };
                match answer {
                    Err(status) if status.code() == Code::Unavailable => last = status,
                    other => return other,
                }
            }
            if tokio::time::Instant::now() + pause >= give_up {
                return Err(last);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    pub(crate) async fn affinity<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(AffinityClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| {
            let fut = f(AffinityClient::new(channel));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    pub(crate) async fn cluster<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(ClusterClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| {
            let fut = f(ClusterClient::new(channel));
            async move { fut.await.map(tonic::Response::into_inner) }
        })
        .await
    }
}

/// The policy the key and lifetime flags give.
pub(crate) fn policy(masks: &Masks, lifetime: Option<&Lifetime>) -> pb::Policy {
    pb::Policy {
        ipv4_mask: masks.ipv4_mask,
        ipv6_mask: masks.ipv6_mask,
        absolute_timeout_ms: lifetime.map_or(0, |l| l.timeout.as_millis()),
        idle_timeout_ms: lifetime.and_then(|l| l.idle_timeout.map(GatewayDuration::as_millis)),
    }
}
