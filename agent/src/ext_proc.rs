//! Envoy's front end: the `envoy.service.ext_proc.v3.ExternalProcessor` gRPC service.
//!
//! Envoy opens one stream per HTTP request. On the request headers the agent reads the
//! client address (the `source.address` attribute, or a trusted `X-Forwarded-For` hop),
//! the rule (the `xds.route_name` attribute when it is a scope of the route file, else
//! host and path), decides, and answers with a header mutation that sets
//! `x-affinity-endpoint: IP:PORT` (and removes any copy the client sent), which the
//! cluster's `envoy.load_balancing_policies.override_host` policy follows; Envoy keeps its
//! own endpoint discovery, health checks and fallback. On the response headers the
//! `upstream.address` attribute says which host served: when Envoy had to use another
//! than the leased one, [`Decider::served`] moves the lease there.
//!
//! A request without what the agent needs still gets an answer (no header: Envoy's
//! fallback policy picks), counted and logged by reason; a message kind the agent did not
//! ask for is answered with "continue", never left hanging.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use affinity_client::gateway::client_ip::{Origin, client_ip};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ProcessingRequest,
    ProcessingResponse, TrailersResponse, processing_request, processing_response,
};
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use futures::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use affinity_client::gateway::Decided;

use crate::decide::{Ask, Decider, Reason, Verdict, how_str};

/// The request header the `override_host` policy reads.
pub const ENDPOINT_HEADER: &str = "x-affinity-endpoint";

/// The ext_proc service.
#[derive(Clone)]
pub struct Processor {
    /// Decides.
    pub decider: Decider,
    /// Proxies in front of Envoy whose `X-Forwarded-For` entries are trusted.
    pub trusted_hops: usize,
    /// Add `affinity-decision`, `affinity-lease` and `affinity-endpoint` to responses.
    pub debug_headers: bool,
}

/// The headers and attributes of one message, as text.
#[derive(Debug, Default)]
struct Seen {
    headers: Vec<(String, String)>,
    attributes: Vec<(String, String)>,
}

impl Seen {
    fn of(request: &ProcessingRequest, headers: &HttpHeaders) -> Seen {
        let mut seen = Seen::default();
        if let Some(map) = &headers.headers {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                };
                seen.headers.push((h.key.to_ascii_lowercase(), value));
            }
        }
        // Attributes arrive per filter name, on the request (current Envoy) or on the
        // headers message (older releases).
        for group in request
            .attributes
            .values()
            .chain(headers.attributes.values())
        {
            collect(group, &mut seen.attributes);
        }
        seen
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn collect(group: &Struct, into: &mut Vec<(String, String)>) {
    for (name, value) in &group.fields {
        let text = match &value.kind {
            Some(Kind::StringValue(s)) => s.clone(),
            Some(Kind::NumberValue(n)) => n.to_string(),
            Some(Kind::BoolValue(b)) => b.to_string(),
            _ => continue,
        };
        into.push((name.clone(), text));
    }
}

/// An address attribute (`1.2.3.4:5678`, `[2001:db8::1]:443`, or a bare IP).
fn address(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0)))
}

/// The host of an authority or `Host` header, without port or IPv6 brackets.
pub(crate) fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    }
}

fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_string(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

fn headers_response(mutation: HeaderMutation) -> HeadersResponse {
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(mutation),
            ..CommonResponse::default()
        }),
    }
}

impl Processor {
    async fn on_request(&self, seen: &Seen) -> (Verdict, HeaderMutation) {
        let peer = seen.attribute("source.address").and_then(address);
        let client = match peer {
            Some(peer) => {
                let forwarded = seen.headers("x-forwarded-for");
                let (ip, origin) =
                    client_ip(peer.ip().to_canonical(), forwarded, self.trusted_hops);
                if origin == Origin::PeerInstead {
                    metrics::counter!("affinity_agent_forwarded_for_unusable_total").increment(1);
                }
                Ok(ip)
            }
            None if seen.attribute("source.address").is_some() => Err(Reason::BadClientAddress),
            None => Err(Reason::NoClientAddress),
        };
        let authority = seen
            .header(":authority")
            .or_else(|| seen.header("host"))
            .unwrap_or_default();
        let host = host_of(authority).to_ascii_lowercase();
        let path = seen.header(":path").unwrap_or("/");
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let route = seen.attribute("xds.route_name");
        let rules = self.decider.rules.load();
        let scope = route.filter(|r| rules.by_scope(r).is_some());
        drop(rules);
        let verdict = self
            .decider
            .decide(
                "envoy",
                Ask {
                    scope,
                    host: &host,
                    path,
                    client,
                },
            )
            .await;
        let mut mutation = HeaderMutation {
            remove_headers: vec![ENDPOINT_HEADER.to_string()],
            ..HeaderMutation::default()
        };
        // Only a sticky decision overrides the host; round robin stays Envoy's.
        if let (Some(endpoint), Some(_)) = (&verdict.endpoint, &verdict.sticky) {
            mutation.remove_headers.clear();
            mutation.set_headers.push(set(ENDPOINT_HEADER, endpoint));
        }
        (verdict, mutation)
    }

    async fn on_response(&self, seen: &Seen, verdict: Option<&Verdict>) -> HeaderMutation {
        let mut mutation = HeaderMutation::default();
        let Some(verdict) = verdict else {
            return mutation;
        };
        let served = seen
            .attribute("upstream.address")
            .and_then(address)
            .map(|a| a.to_string());
        if let Some(served) = &served {
            self.decider.served(verdict, served).await;
        }
        if self.debug_headers {
            mutation
                .set_headers
                .push(set("affinity-decision", how_str(verdict.how)));
            if let Some(lease) = verdict.how.ok().and_then(Decided::lease) {
                mutation.set_headers.push(set("affinity-lease", lease));
            }
            if let Some(endpoint) = &verdict.endpoint {
                mutation
                    .set_headers
                    .push(set("affinity-endpoint", endpoint));
            }
            if let Some(served) = &served {
                mutation.set_headers.push(set("affinity-served", served));
            }
        }
        mutation
    }

    /// The answer to one message of the stream, and the request's verdict so far.
    async fn answer(
        &self,
        message: &ProcessingRequest,
        verdict: &mut Option<Verdict>,
    ) -> ProcessingResponse {
        use processing_request::Request as In;
        use processing_response::Response as Out;
        let response = match &message.request {
            Some(In::RequestHeaders(headers)) => {
                let (decided, mutation) = self.on_request(&Seen::of(message, headers)).await;
                *verdict = Some(decided);
                Out::RequestHeaders(headers_response(mutation))
            }
            Some(In::ResponseHeaders(headers)) => {
                let mutation = self
                    .on_response(&Seen::of(message, headers), verdict.as_ref())
                    .await;
                Out::ResponseHeaders(headers_response(mutation))
            }
            Some(In::RequestBody(_)) => Out::RequestBody(BodyResponse::default()),
            Some(In::ResponseBody(_)) => Out::ResponseBody(BodyResponse::default()),
            Some(In::RequestTrailers(_)) => Out::RequestTrailers(TrailersResponse::default()),
            Some(In::ResponseTrailers(_)) => Out::ResponseTrailers(TrailersResponse::default()),
            None => Out::RequestHeaders(HeadersResponse::default()),
        };
        ProcessingResponse {
            response: Some(response),
            ..ProcessingResponse::default()
        }
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Processor {
    type ProcessStream = Answers;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let processor = self.clone();
        tokio::spawn(
            async move {
                let mut verdict = None;
                while let Some(message) = incoming.next().await {
                    let message = match message {
                        Ok(m) => m,
                        // Envoy reset the stream (the request ended early): nothing to do.
                        Err(status) => {
                            tracing::debug!(%status, "ext_proc stream ended by Envoy");
                            break;
                        }
                    };
                    if message.observability_mode {
                        continue;
                    }
                    let answer = processor.answer(&message, &mut verdict).await;
                    if tx.send(Ok(answer)).await.is_err() {
                        break;
                    }
                }
            }
            .instrument(tracing::debug_span!("ext_proc.process")),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_every_form_envoy_writes() {
        assert_eq!(
            address("192.0.2.7:5678"),
            Some("192.0.2.7:5678".parse().expect("addr"))
        );
        assert_eq!(
            address("[2001:db8::1]:443"),
            Some("[2001:db8::1]:443".parse().expect("addr"))
        );
        assert_eq!(
            address("192.0.2.7"),
            Some("192.0.2.7:0".parse().expect("addr"))
        );
        assert_eq!(address("pipe:/tmp/s"), None);
        assert_eq!(host_of("shop.example:8080"), "shop.example");
        assert_eq!(host_of("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(host_of("shop.example"), "shop.example");
    }
}
