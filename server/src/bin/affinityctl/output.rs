//! How `affinityctl` prints: JSON values for `--json`, aligned tables for people.

use affinity_proto::pb;
use serde_json::{Value, json};

pub fn lease_json(lease: &pb::Lease) -> Value {
    json!({
        "scope": lease.scope,
        "prefix": lease.prefix,
        "endpoint": lease.endpoint,
        "created_at_ms": lease.created_at_ms,
        "expires_at_ms": lease.expires_at_ms,
        "revision": lease.revision,
        "idle_timeout_ms": lease.idle_timeout_ms,
        "last_used_ms": lease.last_used_ms,
    })
}

pub fn status_json(s: &pb::StatusResponse) -> Value {
    json!({
        "node_id": s.node_id,
        "address": s.address,
        "peer_address": non_empty(&s.peer_address),
        "role": s.role,
        "leader_id": s.leader_id,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "snapshot_index": s.snapshot_index,
        "lease_count": s.lease_count,
        "version": s.version,
        "members": members_json(&s.members),
    })
}

/// Members as JSON: id, client address, peer address (null when peers use the client
/// address) and whether each votes.
pub fn members_json(members: &[pb::Member]) -> Value {
    members
        .iter()
        .map(|m| json!({"id": m.id, "address": m.address, "peer_address": non_empty(&m.peer_address), "voter": m.voter}))
        .collect()
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Unix ms as UTC RFC 3339.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.iter().map(ToString::to_string).collect());
    for row in rows {
        line(row.clone());
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_leases(leases: &[Value]) {
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            vec![
                s(&l["scope"]),
                s(&l["prefix"]),
                s(&l["endpoint"]),
                format_time(l["expires_at_ms"].as_i64().unwrap_or(0)),
                s(&l["revision"]),
            ]
        })
        .collect();
    table(
        &["SCOPE", "PREFIX", "ENDPOINT", "EXPIRES", "REVISION"],
        &rows,
    );
}

pub fn print_human(out: &Value) {
    if let Some(nodes) = out.get("nodes").and_then(Value::as_array) {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                vec![
                    s(&n["node_id"]),
                    s(&n["address"]),
                    s(&n["role"]),
                    match &n["voter"] {
                        Value::Bool(true) => "voter".into(),
                        Value::Bool(false) => "learner".into(),
                        _ => "-".into(),
                    },
                    s(&n["term"]),
                    s(&n["last_log_index"]),
                    s(&n["commit_index"]),
                    s(&n["applied_index"]),
                    s(&n["lease_count"]),
                ]
            })
            .collect();
        table(
            &[
                "NODE", "ADDRESS", "ROLE", "MEMBER", "TERM", "LAST LOG", "COMMIT", "APPLIED",
                "LEASES",
            ],
            &rows,
        );
        println!("leader: node {}", s(&out["leader_id"]));
    } else if let Some(leases) = out.get("leases").and_then(Value::as_array) {
        print_leases(leases);
        println!("{} lease(s)", leases.len());
    } else if out.get("lease").is_some() {
        match &out["lease"] {
            Value::Null => println!("no live lease"),
            lease => print_leases(std::slice::from_ref(lease)),
        }
        for flag in ["created", "replaced", "swapped"] {
            if let Some(v) = out.get(flag) {
                println!("{flag}: {}", s(v));
            }
        }
    } else if let Some(members) = out.get("members").and_then(Value::as_array) {
        let rows: Vec<Vec<String>> = members
            .iter()
            .map(|m| {
                vec![
                    s(&m["id"]),
                    s(&m["address"]),
                    m["peer_address"].as_str().unwrap_or("-").to_string(),
                    if m["voter"] == json!(true) {
                        "voter".into()
                    } else {
                        "learner".into()
                    },
                ]
            })
            .collect();
        table(&["NODE", "ADDRESS", "PEER ADDRESS", "MEMBER"], &rows);
        println!("membership log index: {}", s(&out["log_index"]));
    } else if let Some(obj) = out.as_object() {
        for (k, v) in obj {
            println!("{k}: {}", s(v));
        }
    }
}
