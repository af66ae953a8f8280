//! A minimal HTTP reverse proxy that keeps each client subnet on one backend across proxy
//! replicas, with `affinity-client`.
//!
//! ```text
//! cargo run -p affinity-client --example hyper_proxy -- \
//!     127.0.0.1:8000 127.0.0.1:7400 127.0.0.1:9001,127.0.0.1:9002
//! #   LISTEN         STORE NODES    BACKENDS
//! ```
//!
//! Start two of them on different ports against the same store: a client (or its /24) lands
//! on the same backend through either. Each answer says where the decision came from in the
//! `affinity-decision` header (`cache`, `store` or `fallback`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use affinity_client::{AffinityClient, Policy, Resolve, Source, gateway};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One route rule: its scope, its policy and its backends.
struct Route {
    scope: String,
    policy: Policy,
    backends: Vec<String>,
}

struct Proxy {
    affinity: AffinityClient,
    route: Route,
    upstream: Client<HttpConnector, Incoming>,
}

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, message: String) -> Response<Body> {
    let body = Full::new(Bytes::from(message))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

impl Proxy {
    async fn handle(&self, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let route = &self.route;
        // The hot path: a cached decision whose backend is still one of ours.
        let cached = self
            .affinity
            .cached(&route.scope, peer.ip(), &route.policy)
            .filter(|e| route.backends.iter().any(|b| *b == **e));
        let (backend, source) = if let Some(endpoint) = cached {
            (endpoint, "cache")
        } else {
            // A new lease proposes the rendezvous pick over the backends: what every
            // replica picks, and what they all answer while the store is away.
            let call =
                Resolve::new(&route.scope, peer.ip(), &route.policy).eligible(&route.backends);
            match self.affinity.resolve(call).await {
                Ok(d) => {
                    let source = match d.source {
                        Source::Cache => "cache",
                        Source::Store { .. } => "store",
                        Source::Fallback => "fallback",
                        _ => "other",
                    };
                    (d.endpoint, source)
                }
                Err(e) => return text(StatusCode::BAD_GATEWAY, format!("no backend: {e}\n")),
            }
        };
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let Ok(uri) = format!("http://{backend}{path}").parse::<Uri>() else {
            return text(
                StatusCode::BAD_GATEWAY,
                format!("bad backend address {backend}\n"),
            );
        };
        *request.uri_mut() = uri;
        match self.upstream.request(request).await {
            Ok(response) => {
                let mut response = response.map(BodyExt::boxed);
                if let Ok(value) = source.parse() {
                    response.headers_mut().insert("affinity-decision", value);
                }
                response
            }
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("backend {backend}: {e}\n")),
        }
    }
}

fn arg(args: &[String], i: usize, default: &str) -> String {
    args.get(i).cloned().unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, 1, "127.0.0.1:8000").parse()?;
    let store: Vec<String> = arg(&args, 2, "127.0.0.1:7400")
        .split(',')
        .map(str::to_string)
        .collect();
    let backends: Vec<String> = arg(&args, 3, "127.0.0.1:9001,127.0.0.1:9002")
        .split(',')
        .map(str::to_string)
        .collect();

    let affinity = AffinityClient::builder()
        .endpoints(store)
        .request_timeout(Duration::from_millis(500))
        .build()?;
    // The route rule's Gateway API block: 10-minute sessions per client /24.
    let policy = gateway::policy_from_yaml("type: ClientIP\nabsoluteTimeout: 10m\nipMask: 24\n")?;
    let proxy = Arc::new(Proxy {
        affinity,
        route: Route {
            scope: "default/example/0".into(),
            policy,
            backends,
        },
        upstream: Client::builder(TokioExecutor::new()).build_http(),
    });

    let listener = TcpListener::bind(listen).await?;
    println!("proxying {listen} -> {:?}", proxy.route.backends);
    loop {
        let (stream, peer) = listener.accept().await?;
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let proxy = Arc::clone(&proxy);
                async move { Ok::<_, hyper::Error>(proxy.handle(request, peer).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}
