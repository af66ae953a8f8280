//! # affinity-fuzz
//!
//! One function per fuzz target: each takes arbitrary bytes and feeds them to a decoder or
//! parser that reads outside input (from the network, a file, or a user). A target passes
//! when the code under test returns, with a value or an error; a panic, an abort or a hang
//! is a finding.
//!
//! - [`request`]: a gRPC request message as it arrives, then its validation (the first byte
//!   picks the RPC);
//! - [`client_key`]: client keys, IP addresses under masks, and GEP-2257 durations as text;
//! - [`log_entry`]: a stored Raft log record;
//! - [`snapshot`]: a snapshot file (also the backup format);
//! - [`routes`]: the example gateway's route file (HTTPRoute YAML).
//!
//! libFuzzer drives them through `fuzz/libfuzzer` (`fuzz/run.sh`, nightly Rust and
//! cargo-fuzz); `cargo test -p affinity-fuzz` replays the committed corpus
//! (`fuzz/corpus/<target>/`) and a bounded number of random mutations of it on stable Rust,
//! so the targets run in every test run.

use affinity_proto::{ClientKey, GatewayDuration, Masks, pb, request};
use prost::Message;

/// A fuzz target: arbitrary bytes in, a return (or a finding).
pub type Target = fn(&[u8]);

/// Every target, by name, as the corpus folders and `fuzz/run.sh` call them.
pub const TARGETS: [(&str, Target); 5] = [
    ("request", request),
    ("client_key", client_key),
    ("log_entry", log_entry),
    ("snapshot", snapshot),
    ("routes", routes),
];

/// A request message, decoded and validated as a node does (first byte: which RPC).
pub fn request(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => check::<pb::ResolveRequest, request::Resolve>(body),
        1 => check::<pb::LookupRequest, request::Lookup>(body),
        2 => check::<pb::ReassignRequest, request::Reassign>(body),
        3 => check::<pb::ReleaseRequest, request::Release>(body),
        4 => check::<pb::DrainEndpointRequest, request::DrainEndpoint>(body),
        5 => check::<pb::ListRequest, request::List>(body),
        _ => check::<pb::WatchRequest, request::Watch>(body),
    }
}

fn check<W, C>(body: &[u8])
where
    W: Message + Default,
    C: TryFrom<W>,
{
    if let Ok(wire) = W::decode(body) {
        let _ = C::try_from(wire);
    }
}

/// Client keys, addresses under masks, and durations, as text.
pub fn client_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = text.parse::<ClientKey>() {
        // What parses prints back to the same key.
        let again: ClientKey = key
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{key} does not parse back: {e}"));
        assert_eq!(again, key);
    }
    let masks = data
        .first()
        .and_then(|&b| Masks::new(u32::from(b % 40), u32::from(b % 140)).ok());
    if let Some(masks) = masks {
        let _ = ClientKey::parse_ip(text, masks);
    }
    let _ = text.parse::<GatewayDuration>();
}

/// A stored Raft log record, as the log tree holds it (first 8 bytes: the index it is
/// stored at).
pub fn log_entry(data: &[u8]) {
    let (index, record) = match data.split_first_chunk::<8>() {
        Some((index, record)) => (u64::from_le_bytes(*index), record),
        None => (0, data),
    };
    let _ = affinity_server::store::log::decode_entry(index, record);
}

/// A snapshot file.
pub fn snapshot(data: &[u8]) {
    let _ = affinity_server::sm::snapshot::read(data);
}

/// The example gateway's route file.
pub fn routes(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = affinity_gateway::backends::Loaded::parse(text);
}

/// Valid inputs for `target`, built from the real encoders, to start from: every target's
/// corpus grows from these.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "request" => request_seeds(),
        "client_key" => [
            "10.1.2.0/24",
            "2001:db8::/64",
            "192.0.2.7",
            "::ffff:192.0.2.7",
            "0.0.0.0/0",
            "1h30m",
            "500ms",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "log_entry" => log_seeds(),
        "snapshot" => vec![snapshot_seed()],
        "routes" => vec![
            include_bytes!("../../examples/gateway/demo/routes.yaml").to_vec(),
            ROUTES.as_bytes().to_vec(),
        ],
        _ => Vec::new(),
    }
}

const ROUTES: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  hostnames: [\"*.shop.example\", shop.example]
  rules:
  - matches: [{path: {type: Exact, value: /cart}}, {path: {value: /api}}]
    backendRefs: [{name: web, port: 80, weight: 2}, {name: \"10.0.0.9:8080\"}]
    sessionPersistence: {type: ClientIP, absoluteTimeout: 1h, idleTimeout: 5m, ipv4Mask: 24, ipv6Mask: 64}
---
apiVersion: affinity.dev/v1alpha1
kind: Backends
endpoints:
  shop/web:80: [\"10.0.0.1:80\", \"[2001:db8::3]:80\"]
";

fn policy() -> pb::Policy {
    pb::Policy {
        ipv4_mask: Some(24),
        ipv6_mask: Some(64),
        absolute_timeout_ms: 60_000,
        idle_timeout_ms: Some(1_000),
    }
}

fn request_seeds() -> Vec<Vec<u8>> {
    let tagged = |tag: u8, message: &dyn Fn(&mut Vec<u8>)| {
        let mut out = vec![tag];
        message(&mut out);
        out
    };
    vec![
        tagged(0, &|out| {
            let m = pb::ResolveRequest {
                scope: "shop/web/0".into(),
                client_ip: "192.0.2.7".into(),
                policy: Some(policy()),
                endpoint: "10.0.0.1:80".into(),
                eligible_endpoints: vec!["10.0.0.1:80".into(), "10.0.0.2:80".into()],
                request_id: "0f3c9a7e5b2d4c1a8e6f0b9d7c5a3e1f".into(),
            };
            let _ = m.encode(out);
        }),
        tagged(1, &|out| {
            let m = pb::LookupRequest {
                scope: "shop/web/0".into(),
                client_ip: "2001:db8::1".into(),
                policy: Some(policy()),
                allow_stale: true,
            };
            let _ = m.encode(out);
        }),
        tagged(2, &|out| {
            let m = pb::ReassignRequest {
                scope: "shop/web/0".into(),
                client_ip: "192.0.2.7".into(),
                policy: Some(policy()),
                expected_endpoint: "10.0.0.1:80".into(),
                endpoint: "10.0.0.2:80".into(),
                request_id: String::new(),
            };
            let _ = m.encode(out);
        }),
        tagged(5, &|out| {
            let m = pb::ListRequest {
                scope: "shop/web/0".into(),
                page_size: 10,
                ..Default::default()
            };
            let _ = m.encode(out);
        }),
        tagged(6, &|out| {
            let m = pb::WatchRequest {
                scope: "shop/web/0".into(),
                start_revision: 7,
            };
            let _ = m.encode(out);
        }),
    ]
}

fn log_seeds() -> Vec<Vec<u8>> {
    let key = pb::LeaseKey {
        scope: "shop/web/0".into(),
        prefix: Some(pb::Prefix {
            addr: vec![192, 0, 2, 0],
            len: 24,
        }),
    };
    let resolve = pb::command::Op::Resolve(pb::ResolveOp {
        key: Some(key.clone()),
        endpoint: "10.0.0.1:80".into(),
        eligible_endpoints: vec!["10.0.0.1:80".into()],
        absolute_timeout_ms: 60_000,
        idle_timeout_ms: None,
    });
    let release = pb::command::Op::Release(pb::ReleaseOp { key: Some(key) });
    let entries = [
        pb::entry::Payload::Blank(pb::Blank {}),
        pb::entry::Payload::Command(pb::Command {
            stamp_ms: 1_700_000_000_000,
            request_id: String::new(),
            op: Some(resolve.clone()),
        }),
        pb::entry::Payload::Command(pb::Command {
            stamp_ms: 1_700_000_000_000,
            request_id: String::new(),
            op: Some(pb::command::Op::Batch(pb::BatchOp {
                ops: vec![
                    pb::Command {
                        stamp_ms: 0,
                        request_id: "gw-1-call-7".into(),
                        op: Some(resolve.clone()),
                    },
                    pb::Command {
                        stamp_ms: 0,
                        request_id: String::new(),
                        op: Some(release.clone()),
                    },
                ],
            })),
        }),
        pb::entry::Payload::Command(pb::Command {
            stamp_ms: 1_700_000_000_001,
            request_id: "gw-2-call-9".into(),
            op: Some(release),
        }),
    ];
    entries
        .into_iter()
        .map(|payload| {
            let entry = pb::Entry {
                log_id: Some(pb::LogId { term: 1, index: 7 }),
                payload: Some(payload),
            };
            let mut out = 7u64.to_le_bytes().to_vec();
            out.push(1); // the record version
            let _ = entry.encode(&mut out);
            out
        })
        .collect()
}

fn snapshot_seed() -> Vec<u8> {
    use affinity_server::sm::{Command, LeaseTable, Op};
    let mut table = LeaseTable::new();
    let mut events = Vec::new();
    for (i, prefix) in ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/64"]
        .iter()
        .enumerate()
    {
        let Ok(key) = prefix.parse::<ClientKey>() else {
            continue;
        };
        let command = Command {
            stamp_ms: 1_700_000_000_000,
            op: Op::Resolve {
                scope: "shop/web/0".into(),
                key,
                endpoint: format!("10.0.0.{i}:80"),
                eligible: Vec::new(),
                absolute_timeout_ms: 60_000,
                idle_timeout_ms: None,
            },
        };
        table.apply(i as u64 + 1, &command, &mut events);
    }
    let mut out = Vec::new();
    let _ = affinity_server::sm::snapshot::write(&table, pb::SnapshotMeta::default(), &mut out);
    out
}
