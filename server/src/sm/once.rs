//! Writes applied at most once: the first outcome of every named write (a write whose
//! request carried a `request_id`), kept for a while so that a retry of the same call is
//! answered with that outcome instead of being applied again.
//!
//! A caller whose write timed out cannot know whether it was applied. Retrying a `Release`
//! that was in fact applied, after another gateway re-created the key, would delete an
//! acknowledged lease; a retried `Reassign` would report `swapped: false` for its own swap.
//! With a name kept across the retries, the state machine recognises the retry and returns
//! the first outcome.
//!
//! What is remembered is part of the replicated state (every replica must skip the same
//! retries, or their tables would diverge), so it is bounded by rules every replica applies
//! alike: an outcome is forgotten [`RETENTION_MS`] of store time after it was applied, and
//! the oldest is forgotten first once [`MAX_REMEMBERED`] are held. Both are constants of the
//! format, never settings, for the same reason.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use affinity_proto::{ValidationError, pb};

use super::command::Outcome;
use super::snapshot::lease_from_stored;

/// How long (store time) a named write's outcome is remembered.
pub const RETENTION_MS: i64 = 60_000;
/// Most outcomes remembered at once; past it the oldest is forgotten.
pub const MAX_REMEMBERED: usize = 262_144;

/// A caller's name for one logical write: 1..=128 printable ASCII characters without
/// spaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// Check `text` as the request id in `field` (the rule of
    /// [`affinity_proto::request::check_request_id`]); empty means "no id".
    pub fn parse(field: &'static str, text: &str) -> Result<Option<Self>, ValidationError> {
        affinity_proto::request::check_request_id(field, text)?;
        Ok((!text.is_empty()).then(|| Self(Arc::from(text))))
    }

    /// The id of a request already checked by `affinity_proto::request` (empty: none).
    pub fn checked(text: String) -> Option<Self> {
        (!text.is_empty()).then(|| Self(Arc::from(text)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One remembered write: when it was applied (store time) and what it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    /// The write's name.
    pub id: RequestId,
    /// The store time it was applied at.
    pub applied_ms: i64,
    /// Its first outcome.
    pub outcome: Outcome,
}

impl Remembered {
    /// The snapshot form; `None` for an outcome no named write has (never remembered).
    pub fn to_stored(&self) -> Option<pb::RememberedWrite> {
        use pb::remembered_write::Outcome as W;
        let outcome = match &self.outcome {
            Outcome::Resolved {
                lease,
                created,
                replaced,
            } => W::Resolved(pb::ResolvedOutcome {
                lease: Some(lease.to_stored()),
                created: *created,
                replaced: *replaced,
            }),
            Outcome::Reassigned { lease, swapped } => W::Reassigned(pb::ReassignedOutcome {
                lease: lease.as_ref().map(super::Lease::to_stored),
                swapped: *swapped,
            }),
            Outcome::Released(released) => W::Released(*released),
            Outcome::Drained(removed) => W::Drained(*removed),
            _ => return None,
        };
        Some(pb::RememberedWrite {
            request_id: self.id.as_str().to_owned(),
            applied_ms: self.applied_ms,
            outcome: Some(outcome),
        })
    }

    /// From the snapshot form, checked.
    pub fn from_stored(stored: pb::RememberedWrite) -> Result<Self, String> {
        use pb::remembered_write::Outcome as W;
        let id = RequestId::parse("request_id", &stored.request_id)
            .map_err(|e| e.to_string())?
            .ok_or("request_id is empty")?;
        let lease = |l: Option<pb::StoredLease>| -> Result<super::Lease, String> {
            lease_from_stored(l.ok_or("the resolved outcome has no lease")?)
        };
        let outcome = match stored.outcome.ok_or("the outcome is missing")? {
            W::Resolved(r) => Outcome::Resolved {
                lease: lease(r.lease)?,
                created: r.created,
                replaced: r.replaced,
            },
            W::Reassigned(r) => Outcome::Reassigned {
                lease: r.lease.map(lease_from_stored).transpose()?,
                swapped: r.swapped,
            },
            W::Released(released) => Outcome::Released(released),
            W::Drained(removed) => Outcome::Drained(removed),
        };
        Ok(Self {
            id,
            applied_ms: stored.applied_ms,
            outcome,
        })
    }
}

/// The outcomes of recent named writes, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Outcomes {
    by_id: HashMap<RequestId, (i64, Outcome)>,
    /// (applied at, id), in the order applied; store time never decreases along it.
    order: VecDeque<(i64, RequestId)>,
}

impl PartialEq for Outcomes {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order && self.by_id == other.by_id
    }
}

impl Eq for Outcomes {}

impl Outcomes {
    /// The first outcome of `id`, if it is still remembered at store time `now_ms`.
    pub fn get(&self, id: &RequestId, now_ms: i64) -> Option<&Outcome> {
        self.by_id
            .get(id)
            .filter(|(at, _)| now_ms.saturating_sub(*at) < RETENTION_MS)
            .map(|(_, outcome)| outcome)
    }

    /// Forget what has aged out at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some((at, _)) = self.order.front() {
            if now_ms.saturating_sub(*at) < RETENTION_MS {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Remember the first outcome of `id`, applied at `now_ms`.
    pub fn remember(&mut self, id: RequestId, now_ms: i64, outcome: Outcome) {
        self.expire(now_ms);
        while self.order.len() >= MAX_REMEMBERED {
            self.pop_oldest();
        }
        if self.by_id.insert(id.clone(), (now_ms, outcome)).is_none() {
            self.order.push_back((now_ms, id));
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.by_id.remove(&id);
        }
    }

    /// Outcomes held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// None held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Every remembered write, oldest first (the order a snapshot keeps).
    pub fn iter(&self) -> impl Iterator<Item = Remembered> + '_ {
        self.order.iter().filter_map(|(at, id)| {
            self.by_id.get(id).map(|(_, outcome)| Remembered {
                id: id.clone(),
                applied_ms: *at,
                outcome: outcome.clone(),
            })
        })
    }

    /// Put back one write read from a snapshot; they come oldest first.
    pub fn restore(&mut self, remembered: Remembered) {
        let Remembered {
            id,
            applied_ms,
            outcome,
        } = remembered;
        if self
            .by_id
            .insert(id.clone(), (applied_ms, outcome))
            .is_none()
        {
            self.order.push_back((applied_ms, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> RequestId {
        RequestId::parse("request_id", text).unwrap().unwrap()
    }

    #[test]
    fn ids_are_checked() {
        assert_eq!(RequestId::parse("request_id", "").unwrap(), None);
        assert_eq!(id("a1-B2_c3").as_str(), "a1-B2_c3");
        for (bad, rule) in [
            ("has space", "printable ASCII"),
            ("tab\there", "printable ASCII"),
            ("caf\u{e9}", "printable ASCII"),
            (&"x".repeat(129), "at most 128 bytes"),
        ] {
            let err = RequestId::parse("request_id", bad).unwrap_err();
            assert_eq!(err.field, "request_id");
            assert!(err.rule.contains(rule), "{bad:?}: {err}");
        }
    }

    #[test]
    fn outcomes_are_kept_for_the_retention_then_forgotten() {
        let mut outcomes = Outcomes::default();
        outcomes.remember(id("a"), 1_000, Outcome::Released(true));
        assert_eq!(
            outcomes.get(&id("a"), 1_000 + RETENTION_MS - 1),
            Some(&Outcome::Released(true))
        );
        assert_eq!(outcomes.get(&id("a"), 1_000 + RETENTION_MS), None);
        outcomes.remember(id("b"), 1_000 + RETENTION_MS, Outcome::Drained(2));
        assert_eq!(outcomes.len(), 1, "a aged out when b was remembered");
        assert_eq!(outcomes.iter().next().map(|r| r.id), Some(id("b")));
    }

    #[test]
    fn the_oldest_goes_first_past_the_bound() {
        let mut outcomes = Outcomes::default();
        for n in 0..=MAX_REMEMBERED {
            outcomes.remember(id(&format!("r{n}")), 5, Outcome::Released(false));
        }
        assert_eq!(outcomes.len(), MAX_REMEMBERED);
        assert_eq!(outcomes.get(&id("r0"), 5), None);
        assert!(outcomes.get(&id("r1"), 5).is_some());
        assert!(
            outcomes
                .get(&id(&format!("r{MAX_REMEMBERED}")), 5)
                .is_some()
        );
    }
}
