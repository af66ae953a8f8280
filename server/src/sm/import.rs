//! Import: putting back leases from a backup (`affinityctl restore`).
//!
//! Restoring must not break what the table promises: a key that already holds a live lease
//! keeps it (first writer wins, also against a backup), an ended lease is not brought back,
//! and an imported lease keeps its own creation and expiry times, so a restore never
//! extends a session. Imported leases get the import's revision: they are new to this
//! cluster's history, and Watch subscribers see them as CREATED.

use super::command::{Event, EventKind, Outcome};
use super::lease::Lease;
use super::{LeaseTable, event};

impl LeaseTable {
    /// Apply an import at `revision`, the table's clock being `now`.
    pub(super) fn import(
        &mut self,
        revision: u64,
        now: i64,
        leases: &[Lease],
        events: &mut Vec<Event>,
    ) -> Outcome {
        let (mut imported, mut expired, mut present) = (0, 0, 0);
        for lease in leases {
            if !lease.is_live(now) {
                expired += 1;
                continue;
            }
            if let Some(held) = self.present(&lease.scope, lease.key) {
                if held.is_live(now) {
                    present += 1;
                    continue;
                }
                self.remove_ended(&lease.scope, lease.key, revision, events);
            }
            let record = self.new_record(&lease.endpoint, lease, revision);
            let scope = self.insert(&lease.scope, lease.key, record);
            let created = record.lease(&scope, lease.key, &self.endpoints);
            events.push(event(EventKind::Created, &created, revision));
            imported += 1;
        }
        Outcome::Imported {
            imported,
            expired,
            present,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use affinity_proto::ClientKey;

    use super::*;
    use crate::sm::{Command, Op};

    fn lease(ip: &str, endpoint: &str, created: i64, expires: i64) -> Lease {
        let addr: std::net::IpAddr = ip.parse().unwrap();
        Lease {
            scope: Arc::from("s"),
            key: ClientKey::new(addr, affinity_proto::Masks::default()),
            endpoint: Arc::from(endpoint),
            created_at_ms: created,
            expires_at_ms: expires,
            idle_timeout_ms: None,
            last_used_ms: created,
            revision: 7,
        }
    }

    fn import(table: &mut LeaseTable, at: i64, revision: u64, leases: Vec<Lease>) -> Outcome {
        let cmd = Command {
            stamp_ms: at,
            op: Op::Import { leases },
        };
        let mut events = Vec::new();
        let outcome = table.apply(revision, &cmd, &mut events);
        table.check_invariants().unwrap();
        outcome
    }

    #[test]
    fn live_leases_come_back_with_their_own_times_and_nothing_live_is_replaced() {
        let mut table = LeaseTable::new();
        let kept = lease("192.0.2.1", "10.0.0.1:80", 1_000, 100_000);
        let ended = lease("192.0.2.2", "10.0.0.2:80", 1_000, 5_000);
        let outcome = import(&mut table, 10_000, 3, vec![kept.clone(), ended.clone()]);
        assert_eq!(
            outcome,
            Outcome::Imported {
                imported: 1,
                expired: 1,
                present: 0
            }
        );
        let back = table.get("s", kept.key, 10_000).unwrap();
        assert_eq!(back.endpoint, kept.endpoint);
        assert_eq!(back.created_at_ms, 1_000, "times are the backup's");
        assert_eq!(back.expires_at_ms, 100_000, "never extended");
        assert_eq!(back.revision, 3, "the import's revision");
        assert!(table.get("s", ended.key, 10_000).is_none());

        // Again, with another endpoint for the same key: the live lease stays.
        let rival = lease("192.0.2.1", "10.0.0.9:80", 2_000, 200_000);
        let outcome = import(&mut table, 11_000, 4, vec![rival]);
        assert_eq!(
            outcome,
            Outcome::Imported {
                imported: 0,
                expired: 0,
                present: 1
            }
        );
        assert_eq!(
            &*table.get("s", kept.key, 11_000).unwrap().endpoint,
            "10.0.0.1:80"
        );

        // Once the held lease has ended, an import may take the key.
        let later = lease("192.0.2.1", "10.0.0.3:80", 150_000, 300_000);
        let outcome = import(&mut table, 160_000, 5, vec![later]);
        assert_eq!(
            outcome,
            Outcome::Imported {
                imported: 1,
                expired: 0,
                present: 0
            }
        );
        assert_eq!(
            &*table.get("s", kept.key, 160_000).unwrap().endpoint,
            "10.0.0.3:80"
        );
    }

    #[test]
    fn an_import_survives_the_log_codec() {
        let cmd = Command {
            stamp_ms: 42,
            op: Op::Import {
                leases: vec![lease("2001:db8::1", "backend:8080", 1, 2)],
            },
        };
        let back = Command::from_pb(cmd.to_pb()).unwrap();
        assert_eq!(back, cmd);
        let mut bad = cmd.to_pb();
        if let Some(affinity_proto::pb::command::Op::Import(op)) = &mut bad.op {
            op.leases[0].expires_at_ms = 0;
        }
        let err = Command::from_pb(bad).unwrap_err();
        assert!(err.to_string().contains("leases[0]"), "{err}");
    }
}
