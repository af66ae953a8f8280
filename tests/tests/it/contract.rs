//! The wire protocol is a public contract: these names, numbers and types must not drift.
//!
//! The check reads the descriptor set compiled from `proto/` (the same bytes gRPC reflection
//! serves), so it sees exactly what clients see.

use std::collections::BTreeMap;

use affinity_proto::pb::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet, ServiceDescriptorProto};

struct Protocol {
    messages: BTreeMap<String, DescriptorProto>,
    services: BTreeMap<String, ServiceDescriptorProto>,
}

fn protocol() -> Protocol {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut messages = BTreeMap::new();
    let mut services = BTreeMap::new();
    for file in set.file {
        let package = file.package().to_string();
        for message in file.message_type {
            for nested in &message.nested_type {
                messages.insert(
                    format!("{package}.{}.{}", message.name(), nested.name()),
                    nested.clone(),
                );
            }
            messages.insert(format!("{package}.{}", message.name()), message);
        }
        for service in file.service {
            services.insert(format!("{package}.{}", service.name()), service);
        }
    }
    Protocol { messages, services }
}

/// (name, number, type, optional) of one field; message types by full name.
fn field(p: &Protocol, message: &str, name: &str) -> (i32, String, bool, bool) {
    let m = p
        .messages
        .get(message)
        .unwrap_or_else(|| panic!("message {message} is missing"));
    let f = m
        .field
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{message}.{name} is missing"));
    let ty = match f.r#type() {
        Type::Message | Type::Enum => f.type_name().trim_start_matches('.').to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    (
        f.number(),
        ty,
        f.proto3_optional(),
        f.label() == Label::Repeated,
    )
}

fn assert_fields(p: &Protocol, message: &str, want: &[(&str, i32, &str, bool)]) {
    for (name, number, ty, optional) in want {
        let (n, t, opt, _) = field(p, message, name);
        assert_eq!(n, *number, "{message}.{name} number");
        assert_eq!(t, *ty, "{message}.{name} type");
        assert_eq!(opt, *optional, "{message}.{name} optional");
    }
}

fn assert_names(p: &Protocol, message: &str, names: &[&str]) {
    for name in names {
        field(p, message, name);
    }
}

fn assert_repeated(p: &Protocol, message: &str, name: &str) {
    assert!(
        field(p, message, name).3,
        "{message}.{name} must be repeated"
    );
}

fn assert_rpc(
    p: &Protocol,
    service: &str,
    method: &str,
    input: &str,
    output: &str,
    server_streaming: bool,
) {
    let s = p
        .services
        .get(service)
        .unwrap_or_else(|| panic!("service {service} is missing"));
    let m = s
        .method
        .iter()
        .find(|m| m.name() == method)
        .unwrap_or_else(|| panic!("{service}.{method} is missing"));
    assert_eq!(
        m.input_type().trim_start_matches('.'),
        input,
        "{service}.{method} input"
    );
    assert_eq!(
        m.output_type().trim_start_matches('.'),
        output,
        "{service}.{method} output"
    );
    assert_eq!(
        m.server_streaming(),
        server_streaming,
        "{service}.{method} streaming"
    );
    assert!(!m.client_streaming(), "{service}.{method} client streaming");
}

#[test]
fn policy_and_lease_messages() {
    let p = protocol();
    assert_fields(
        &p,
        "affinity.v1.Policy",
        &[
            ("ipv4_mask", 1, "uint32", true),
            ("ipv6_mask", 2, "uint32", true),
            ("absolute_timeout_ms", 3, "uint64", false),
            ("idle_timeout_ms", 4, "uint64", true),
        ],
    );
    assert_fields(
        &p,
        "affinity.v1.Lease",
        &[
            ("scope", 1, "string", false),
            ("prefix", 2, "string", false),
            ("endpoint", 3, "string", false),
            ("created_at_ms", 4, "int64", false),
            ("expires_at_ms", 5, "int64", false),
            ("revision", 6, "uint64", false),
        ],
    );
}

#[test]
fn affinity_service() {
    let p = protocol();
    let s = "affinity.v1.Affinity";
    for (method, streaming) in [
        ("Resolve", false),
        ("Lookup", false),
        ("Reassign", false),
        ("Release", false),
        ("DrainEndpoint", false),
        ("List", false),
        ("Watch", true),
    ] {
        let output = if method == "Watch" {
            "affinity.v1.WatchEvent".to_string()
        } else {
            format!("affinity.v1.{method}Response")
        };
        assert_rpc(
            &p,
            s,
            method,
            &format!("affinity.v1.{method}Request"),
            &output,
            streaming,
        );
    }

    assert_names(
        &p,
        "affinity.v1.ResolveRequest",
        &[
            "scope",
            "client_ip",
            "policy",
            "endpoint",
            "eligible_endpoints",
        ],
    );
    assert_repeated(&p, "affinity.v1.ResolveRequest", "eligible_endpoints");
    assert_fields(
        &p,
        "affinity.v1.ResolveResponse",
        &[
            ("lease", 1, "affinity.v1.Lease", false),
            ("created", 2, "bool", false),
            ("replaced", 3, "bool", false),
        ],
    );
    assert_names(
        &p,
        "affinity.v1.LookupRequest",
        &["scope", "client_ip", "policy", "allow_stale"],
    );
    assert_fields(
        &p,
        "affinity.v1.LookupResponse",
        &[("lease", 1, "affinity.v1.Lease", true)],
    );
    assert_names(
        &p,
        "affinity.v1.ReassignRequest",
        &[
            "scope",
            "client_ip",
            "policy",
            "expected_endpoint",
            "endpoint",
        ],
    );
    assert_names(&p, "affinity.v1.ReassignResponse", &["lease", "swapped"]);
    assert_names(
        &p,
        "affinity.v1.ReleaseRequest",
        &["scope", "client_ip", "policy"],
    );
    assert_names(&p, "affinity.v1.ReleaseResponse", &["released"]);
    assert_names(
        &p,
        "affinity.v1.DrainEndpointRequest",
        &["scope", "endpoint"],
    );
    assert_fields(
        &p,
        "affinity.v1.DrainEndpointResponse",
        &[("removed", 1, "uint64", false)],
    );
    assert_fields(
        &p,
        "affinity.v1.ListRequest",
        &[
            ("scope", 1, "string", false),
            ("page_size", 2, "uint32", false),
            ("page_token", 3, "string", false),
        ],
    );
    assert_names(
        &p,
        "affinity.v1.ListResponse",
        &["leases", "next_page_token"],
    );
    assert_repeated(&p, "affinity.v1.ListResponse", "leases");
    assert_names(&p, "affinity.v1.WatchRequest", &["scope"]);
    assert_fields(
        &p,
        "affinity.v1.WatchEvent",
        &[
            ("kind", 1, "affinity.v1.WatchEvent.Kind", false),
            ("lease", 2, "affinity.v1.Lease", false),
            ("revision", 3, "uint64", false),
        ],
    );
}

#[test]
fn watch_event_kinds() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let kinds: Vec<(String, i32)> = set
        .file
        .iter()
        .flat_map(|f| &f.message_type)
        .filter(|m| m.name() == "WatchEvent")
        .flat_map(|m| &m.enum_type)
        .filter(|e| e.name() == "Kind")
        .flat_map(|e| &e.value)
        .map(|v| (v.name().to_string(), v.number()))
        .collect();
    for (name, number) in [
        ("CREATED", 1),
        ("REPLACED", 2),
        ("RELEASED", 3),
        ("DRAINED", 4),
        ("EXPIRED", 5),
    ] {
        assert!(
            kinds.contains(&(name.to_string(), number)),
            "WatchEvent.Kind.{name} = {number} is missing: {kinds:?}"
        );
    }
}

#[test]
fn cluster_service() {
    let p = protocol();
    for method in [
        "Status",
        "AddLearner",
        "ChangeMembership",
        "TransferLeader",
        "Snapshot",
    ] {
        assert_rpc(
            &p,
            "affinity.v1.Cluster",
            method,
            &format!("affinity.v1.{method}Request"),
            &format!("affinity.v1.{method}Response"),
            false,
        );
    }
    assert_fields(
        &p,
        "affinity.v1.StatusResponse",
        &[
            ("node_id", 1, "uint64", false),
            ("role", 2, "string", false),
            ("leader_id", 3, "uint64", false),
            ("term", 4, "uint64", false),
            ("commit_index", 5, "uint64", false),
            ("applied_index", 6, "uint64", false),
            ("members", 7, "affinity.v1.Member", false),
            ("lease_count", 8, "uint64", false),
        ],
    );
    assert_repeated(&p, "affinity.v1.StatusResponse", "members");
    assert_fields(
        &p,
        "affinity.v1.Member",
        &[
            ("id", 1, "uint64", false),
            ("address", 2, "string", false),
            ("voter", 3, "bool", false),
        ],
    );
}

#[test]
fn raft_peer_traffic_has_its_own_service() {
    let p = protocol();
    let raft = p
        .services
        .get("affinity.v1.Raft")
        .expect("service affinity.v1.Raft");
    let methods: Vec<&str> = raft
        .method
        .iter()
        .map(prost_types::MethodDescriptorProto::name)
        .collect();
    for needed in ["Vote", "AppendEntries", "InstallSnapshot"] {
        assert!(
            methods.contains(&needed),
            "Raft.{needed} is missing: {methods:?}"
        );
    }
    // Peer traffic and client traffic share no service.
    let affinity = &p.services["affinity.v1.Affinity"];
    assert!(affinity.method.iter().all(|m| !methods.contains(&m.name())));
}
