//! The other store calls: `Lookup`, `Reassign`, `Release`, `DrainEndpoint`.

use std::future::Future;
use std::net::IpAddr;
use std::time::Instant;

use affinity_proto::{Policy, pb, request};

use crate::error::ClientError;

use super::AffinityClient;

impl AffinityClient {
    /// The live lease of `ip` in `scope`, read linearizably from the store.
    pub async fn lookup(
        &self,
        scope: &str,
        ip: IpAddr,
        policy: &Policy,
    ) -> Result<Option<pb::Lease>, ClientError> {
        let wire = pb::LookupRequest {
            scope: scope.to_string(),
            client_ip: ip.to_string(),
            policy: Some(policy.to_pb()),
            allow_stale: false,
        };
        request::Lookup::try_from(wire.clone())?;
        let resp = self
            .unary("Lookup", |mut c, r| async move { c.lookup(r).await }, wire)
            .await?;
        Ok(resp.lease)
    }

    /// Move the live lease of `ip` from `expected` to `endpoint` (compare-and-set). Returns the
    /// lease after the call and whether the swap happened.
    pub async fn reassign(
        &self,
        scope: &str,
        ip: IpAddr,
        policy: &Policy,
        expected: &str,
        endpoint: &str,
    ) -> Result<(Option<pb::Lease>, bool), ClientError> {
        let wire = pb::ReassignRequest {
            scope: scope.to_string(),
            client_ip: ip.to_string(),
            policy: Some(policy.to_pb()),
            expected_endpoint: expected.to_string(),
            endpoint: endpoint.to_string(),
            request_id: request::new_request_id(),
        };
        request::Reassign::try_from(wire.clone())?;
        let resp = self
            .unary(
                "Reassign",
                |mut c, r| async move { c.reassign(r).await },
                wire,
            )
            .await?;
        Ok((resp.lease, resp.swapped))
    }

    /// Delete the lease of `ip` in `scope`. Returns whether a live lease was deleted.
    pub async fn release(
        &self,
        scope: &str,
        ip: IpAddr,
        policy: &Policy,
    ) -> Result<bool, ClientError> {
        let wire = pb::ReleaseRequest {
            scope: scope.to_string(),
            client_ip: ip.to_string(),
            policy: Some(policy.to_pb()),
            request_id: request::new_request_id(),
        };
        request::Release::try_from(wire.clone())?;
        let resp = self
            .unary(
                "Release",
                |mut c, r| async move { c.release(r).await },
                wire,
            )
            .await?;
        Ok(resp.released)
    }

    /// Delete every lease on `endpoint`, in `scope` or in every scope. Returns how many.
    pub async fn drain_endpoint(
        &self,
        scope: Option<&str>,
        endpoint: &str,
    ) -> Result<u64, ClientError> {
        let wire = pb::DrainEndpointRequest {
            scope: scope.unwrap_or_default().to_string(),
            endpoint: endpoint.to_string(),
            request_id: request::new_request_id(),
        };
        request::DrainEndpoint::try_from(wire.clone())?;
        let resp = self
            .unary(
                "DrainEndpoint",
                |mut c, r| async move { c.drain_endpoint(r).await },
                wire,
            )
            .await?;
        Ok(resp.removed)
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        rpc: &'static str,
        f: F,
        wire: Req,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(crate::transport::Stub, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = Instant::now() + self.inner.request_timeout;
        self.inner
            .nodes
            .call(rpc, deadline, |client, remaining| {
                let mut request = tonic::Request::new(wire.clone());
                request.set_timeout(remaining);
                f(client, request)
            })
            .await
    }
}
