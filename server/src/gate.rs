//! Checks every call must pass before it reaches a service: one tower layer that runs a
//! list of [`Gate`]s (the per-connection rate limit, then authorization) and answers a
//! refused call with its status without calling the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;

/// One check on incoming calls.
pub trait Gate: Send + Sync + 'static {
    /// `Ok` lets the call through; a status refuses it.
    fn admit(&self, request: &http::Request<Body>) -> Result<(), Status>;
}

/// The layer running `gates` in order.
#[derive(Clone, Default)]
pub struct GateLayer {
    gates: Vec<Arc<dyn Gate>>,
}

impl GateLayer {
    /// Run these gates, in order (an empty list lets everything through).
    pub fn new(gates: Vec<Arc<dyn Gate>>) -> Self {
        Self { gates }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            gates: self.gates.clone(),
        }
    }
}

/// See [`GateLayer`].
#[derive(Clone)]
pub struct GateService<S> {
    inner: S,
    gates: Vec<Arc<dyn Gate>>,
}

impl<S> tower::Service<http::Request<Body>> for GateService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        futures::future::Either<std::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        for gate in &self.gates {
            if let Err(status) = gate.admit(&request) {
                return futures::future::Either::Left(std::future::ready(Ok(status.into_http())));
            }
        }
        futures::future::Either::Right(self.inner.call(request))
    }
}
