//! Conversions between openraft's types and their protobuf records (`raft.proto`).
//!
//! The same records serve the on-disk log and the peer RPCs, so there is one place that
//! knows how a log entry, a vote or a membership is encoded. Decoding checks everything it
//! can and reports a [`CodecError`] naming what is wrong; it never panics on bad bytes.

use std::collections::{BTreeMap, BTreeSet};

use affinity_proto::pb;
use openraft::EntryPayload;
use openraft::impls::leader_id_std::LeaderId;

use super::{Entry, LogId, Membership, Node, SnapshotMeta, StoredMembership, Vote};
use crate::sm::Command;

/// A record that does not decode into a valid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {what} record: {reason}")]
pub struct CodecError {
    what: &'static str,
    reason: String,
}

impl CodecError {
    pub(crate) fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(what: &'static str, field: &str) -> Self {
        Self::new(what, format!("{field} is missing"))
    }
}

/// A log position.
pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId {
        term: id.committed_leader_id().term,
        index: id.index(),
    }
}

/// A log position from its record.
pub fn log_id_from_pb(id: &pb::LogId) -> LogId {
    LogId::new_term_index(id.term, id.index)
}

/// An optional log position from an optional record.
pub fn opt_log_id_from_pb(id: Option<&pb::LogId>) -> Option<LogId> {
    id.map(log_id_from_pb)
}

/// A vote.
pub fn vote_to_pb(vote: &Vote) -> pb::Vote {
    pb::Vote {
        term: vote.leader_id.term,
        node_id: vote.leader_id.voted_for,
        committed: vote.committed,
    }
}

/// A vote from its record.
pub fn vote_from_pb(vote: &pb::Vote) -> Vote {
    Vote {
        leader_id: LeaderId {
            term: vote.term,
            voted_for: vote.node_id,
        },
        committed: vote.committed,
    }
}

/// A membership configuration.
pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| pb::VoterSet {
                voters: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, node)| pb::Node {
                id: *id,
                address: node.addr.clone(),
                peer_address: node.peer_addr.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// A membership configuration from its record; every voter must have a node record.
pub fn membership_from_pb(m: &pb::Membership) -> Result<Membership, CodecError> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|set| set.voters.iter().copied().collect())
        .collect();
    let mut nodes = BTreeMap::new();
    for node in &m.nodes {
        let previous = nodes.insert(
            node.id,
            Node::with_peer(node.address.clone(), Some(node.peer_address.clone())),
        );
        if previous.is_some() {
            return Err(CodecError::new(
                "membership",
                format!("node {} is listed twice", node.id),
            ));
        }
    }
    Membership::new(configs, nodes).map_err(|e| CodecError::new("membership", e.to_string()))
}

/// A membership and the position that set it.
pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: m.log_id().as_ref().map(log_id_to_pb),
        membership: Some(membership_to_pb(m.membership())),
    }
}

/// A stored membership from its record.
pub fn stored_membership_from_pb(m: &pb::StoredMembership) -> Result<StoredMembership, CodecError> {
    let membership = match &m.membership {
        Some(m) => membership_from_pb(m)?,
        None => Membership::default(),
    };
    Ok(StoredMembership::new(
        opt_log_id_from_pb(m.log_id.as_ref()),
        membership,
    ))
}

/// What a snapshot covers.
pub fn snapshot_meta_to_pb(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: meta.last_log_id.as_ref().map(log_id_to_pb),
        last_membership: Some(stored_membership_to_pb(&meta.last_membership)),
    }
}

/// Snapshot coverage from its record.
pub fn snapshot_meta_from_pb(meta: &pb::SnapshotMeta) -> Result<SnapshotMeta, CodecError> {
    let last_membership = match &meta.last_membership {
        Some(m) => stored_membership_from_pb(m)?,
        None => StoredMembership::default(),
    };
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(meta.last_log_id.as_ref()),
        last_membership,
    })
}

/// A log entry.
pub fn entry_to_pb(entry: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    let payload = match &entry.payload {
        EntryPayload::Blank => Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(cmd) => Payload::Command(cmd.to_pb()),
        EntryPayload::Membership(m) => Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&entry.log_id)),
        payload: Some(payload),
    }
}

/// A log entry from its record, with its command re-checked.
pub fn entry_from_pb(entry: pb::Entry) -> Result<Entry, CodecError> {
    use pb::entry::Payload;
    let log_id = entry
        .log_id
        .as_ref()
        .map(log_id_from_pb)
        .ok_or_else(|| CodecError::new("entry", "log_id is missing"))?;
    let payload = match entry.payload {
        Some(Payload::Blank(_)) => EntryPayload::Blank,
        Some(Payload::Command(cmd)) => EntryPayload::Normal(
            Command::from_pb(cmd)
                .map_err(|e| CodecError::new("entry", format!("at {log_id}: {e}")))?,
        ),
        Some(Payload::Membership(m)) => EntryPayload::Membership(membership_from_pb(&m)?),
        None => {
            return Err(CodecError::new(
                "entry",
                format!("at {log_id}: payload is missing"),
            ));
        }
    };
    Ok(Entry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sm::Op;

    #[test]
    fn entries_round_trip() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, Node::new("a:1")),
                (2, Node::with_peer("b:1", Some("b:2".into()))),
                (3, Node::new("c:1")),
                (4, Node::new("d:1")),
            ]),
        )
        .unwrap();
        let entries = [
            Entry {
                log_id: LogId::new_term_index(1, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: LogId::new_term_index(1, 2),
                payload: EntryPayload::Membership(membership),
            },
            Entry {
                log_id: LogId::new_term_index(2, 3),
                payload: EntryPayload::Normal(Command {
                    stamp_ms: 1_700_000_000_000,
                    op: Op::Resolve {
                        scope: "ns/route/0".into(),
                        key: "10.1.2.0/24".parse().unwrap(),
                        endpoint: "10.4.0.17:8080".into(),
                        eligible: vec!["10.4.0.17:8080".into(), "10.4.0.18:8080".into()],
                        absolute_timeout_ms: 60_000,
                        idle_timeout_ms: Some(1_000),
                    },
                }),
            },
        ];
        for entry in entries {
            let back = entry_from_pb(entry_to_pb(&entry)).unwrap();
            assert_eq!(back, entry);
        }
    }

    #[test]
    fn batches_round_trip_and_hold_only_client_writes() {
        let resolve = Op::Resolve {
            scope: "ns/route/0".into(),
            key: "10.1.2.0/24".parse().unwrap(),
            endpoint: "10.4.0.17:8080".into(),
            eligible: Vec::new(),
            absolute_timeout_ms: 60_000,
            idle_timeout_ms: None,
        };
        let release = Op::Release {
            scope: "ns/route/1".into(),
            key: "10.1.3.0/24".parse().unwrap(),
        };
        let batch = Command {
            stamp_ms: 1_700_000_000_000,
            op: Op::Batch(vec![resolve.clone(), release]),
        };
        assert_eq!(Command::from_pb(batch.to_pb()).unwrap(), batch);

        let wrap = |ops: Vec<pb::Command>| pb::Command {
            stamp_ms: 1,
            op: Some(pb::command::Op::Batch(pb::BatchOp { ops })),
            ..Default::default()
        };
        let err = Command::from_pb(wrap(Vec::new())).unwrap_err().to_string();
        assert!(
            err.contains("command.batch.ops") && err.contains("empty"),
            "{err}"
        );
        let sweep = Command {
            stamp_ms: 0,
            op: Op::Sweep { up_to_ms: 5 },
        };
        let inner = Command {
            stamp_ms: 0,
            op: resolve,
        };
        let err = Command::from_pb(wrap(vec![inner.to_pb(), sweep.to_pb()]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("command.batch.ops[1]") && err.contains("sweep"),
            "{err}"
        );
        let nested = wrap(vec![batch.to_pb()]);
        let err = Command::from_pb(nested).unwrap_err().to_string();
        assert!(err.contains("batch cannot be batched"), "{err}");
    }

    #[test]
    fn votes_round_trip() {
        for vote in [Vote::new(3, 1), Vote::new_committed(7, 2)] {
            assert_eq!(vote_from_pb(&vote_to_pb(&vote)), vote);
        }
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert!(entry_from_pb(pb::Entry::default()).is_err());
        let no_payload = pb::Entry {
            log_id: Some(pb::LogId { term: 1, index: 1 }),
            payload: None,
        };
        assert!(entry_from_pb(no_payload).is_err());
        // A voter without a node record.
        let m = pb::Membership {
            configs: vec![pb::VoterSet { voters: vec![1, 2] }],
            nodes: vec![pb::Node {
                id: 1,
                address: "a".into(),
                peer_address: String::new(),
            }],
        };
        assert!(membership_from_pb(&m).is_err());
        // A command with a broken key.
        let bad = pb::Entry {
            log_id: Some(pb::LogId { term: 1, index: 1 }),
            payload: Some(pb::entry::Payload::Command(pb::Command {
                stamp_ms: 0,
                request_id: String::new(),
                op: Some(pb::command::Op::Release(pb::ReleaseOp {
                    key: Some(pb::LeaseKey {
                        scope: "s".into(),
                        prefix: Some(pb::Prefix {
                            addr: vec![10, 0, 0, 1],
                            len: 8,
                        }),
                    }),
                })),
            })),
        };
        let err = entry_from_pb(bad).unwrap_err().to_string();
        assert!(err.contains("host bits"), "{err}");
    }
}
