//! [`Resolve`]: what one [`AffinityClient::resolve`](crate::AffinityClient::resolve) call
//! asks for, and the two picks it derives from that: the endpoint a new lease proposes and
//! the fail-open decision. Both default to the same rendezvous pick, so replicas that had
//! to decide while the store was away agree with what it records once it is back.

use std::net::IpAddr;

use affinity_proto::{ClientKey, Policy, ValidationError};

use crate::fallback;

/// One `resolve` call: the rule (scope and policy), the client, and the endpoints that may
/// serve it.
///
/// ```
/// # use std::time::Duration;
/// # use affinity_client::{Policy, Resolve};
/// let policy = Policy::new(Duration::from_secs(1800))?;
/// let healthy = ["10.4.0.17:8080".to_string(), "10.4.0.18:8080".to_string()];
/// let call = Resolve::new("default/web/0", "203.0.113.7".parse()?, &policy)
///     .eligible(&healthy)
///     .weights(&[3, 1]);
/// # let _ = call;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Without [`proposed`](Self::proposed), a new lease proposes the rendezvous pick of the
/// client's key over the eligible endpoints (weighted when [`weights`](Self::weights) are
/// given), which is also what every replica answers while the store is away.
#[derive(Debug, Clone, Copy)]
pub struct Resolve<'a> {
    pub(crate) scope: &'a str,
    pub(crate) ip: IpAddr,
    pub(crate) policy: &'a Policy,
    pub(crate) eligible: &'a [String],
    weights: &'a [u32],
    proposed: Option<&'a str>,
}

impl<'a> Resolve<'a> {
    /// A call for `ip` under the rule `scope` with `policy`. Give it the endpoints that may
    /// serve ([`eligible`](Self::eligible)) or one to propose ([`proposed`](Self::proposed)).
    pub fn new(scope: &'a str, ip: IpAddr, policy: &'a Policy) -> Self {
        Self {
            scope,
            ip,
            policy,
            eligible: &[],
            weights: &[],
            proposed: None,
        }
    }

    /// The endpoints that may serve this client (the healthy backends of the rule): a cached
    /// or stored lease on any other endpoint is replaced. Empty (the default) accepts any
    /// endpoint, and then a [`proposed`](Self::proposed) endpoint is required.
    #[must_use]
    pub fn eligible(mut self, endpoints: &'a [String]) -> Self {
        self.eligible = endpoints;
        self
    }

    /// Weights of the eligible endpoints, one per endpoint in the same order (Gateway API
    /// `backendRefs[].weight`): a new lease goes to each in proportion. An endpoint of
    /// weight 0 keeps the leases it has but gets no new ones. Default: equal weights.
    #[must_use]
    pub fn weights(mut self, weights: &'a [u32]) -> Self {
        self.weights = weights;
        self
    }

    /// Propose this endpoint for a new lease instead of the rendezvous pick (it must be
    /// eligible). Replicas that propose different endpoints still agree through the store,
    /// but while the store is away they answer the rendezvous pick, so after an outage the
    /// store may record another endpoint than the one a client was sent to.
    #[must_use]
    pub fn proposed(mut self, endpoint: &'a str) -> Self {
        self.proposed = Some(endpoint);
        self
    }

    /// The client's key under the policy.
    pub(crate) fn key(&self) -> ClientKey {
        self.policy.key(self.ip)
    }

    /// The endpoint a new lease proposes, or why there is none.
    pub(crate) fn proposal(&self, key: &ClientKey) -> Result<&'a str, ValidationError> {
        if !self.weights.is_empty() && self.weights.len() != self.eligible.len() {
            return Err(ValidationError::new(
                "weights",
                format!(
                    "must give one weight per eligible endpoint ({}), not {}",
                    self.eligible.len(),
                    self.weights.len()
                ),
            ));
        }
        if let Some(proposed) = self.proposed {
            return Ok(proposed);
        }
        if self.eligible.is_empty() {
            return Err(ValidationError::new(
                "eligible",
                "must name at least one endpoint when no proposed endpoint is given",
            ));
        }
        fallback::choose_weighted(self.scope, key, self.eligible, self.weights).ok_or_else(|| {
            ValidationError::new(
                "weights",
                "must give at least one eligible endpoint a weight above 0 when no proposed \
                 endpoint is given",
            )
        })
    }

    /// The fail-open decision: the rendezvous pick over the eligible endpoints (weighted as
    /// given; unweighted if every weight is 0), or the proposal when none are listed.
    pub(crate) fn fallback(&self, key: &ClientKey, proposal: &'a str) -> &'a str {
        if self.eligible.is_empty() {
            return proposal;
        }
        fallback::choose_weighted(self.scope, key, self.eligible, self.weights)
            .or_else(|| fallback::choose(self.scope, key, self.eligible))
            .unwrap_or(proposal)
    }

    /// Whether `endpoint` may serve this call.
    pub(crate) fn allows(&self, endpoint: &str) -> bool {
        self.eligible.is_empty() || self.eligible.iter().any(|e| e == endpoint)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy() -> Policy {
        Policy::new(Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn the_default_proposal_is_the_fallback_pick() {
        let p = policy();
        let eligible: Vec<String> = (0..5).map(|i| format!("10.4.0.{i}:80")).collect();
        for i in 0..200u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xc633_6400 + (i << 8)));
            let call = Resolve::new("ns/r/0", ip, &p).eligible(&eligible);
            let key = call.key();
            let proposal = call.proposal(&key).unwrap();
            assert_eq!(call.fallback(&key, proposal), proposal);
            let weighted = call.weights(&[1, 0, 4, 2, 2]);
            let proposal = weighted.proposal(&key).unwrap();
            assert_ne!(proposal, "10.4.0.1:80", "weight 0 takes no new lease");
            assert_eq!(weighted.fallback(&key, proposal), proposal);
        }
    }

    #[test]
    fn an_explicit_proposal_wins_but_the_fallback_stays_the_rendezvous_pick() {
        let p = policy();
        let eligible: Vec<String> = (0..3).map(|i| format!("b{i}:80")).collect();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let call = Resolve::new("s", ip, &p).eligible(&eligible);
        let key = call.key();
        let pick = call.proposal(&key).unwrap();
        let other = eligible.iter().find(|e| *e != pick).unwrap();
        let mine = call.proposed(other);
        assert_eq!(mine.proposal(&key).unwrap(), other);
        assert_eq!(mine.fallback(&key, other), pick);
        // With nothing eligible listed, the proposal is all there is.
        let alone = Resolve::new("s", ip, &p).proposed("x:1");
        assert_eq!(alone.fallback(&key, "x:1"), "x:1");
        assert!(alone.allows("anything:1"));
        assert!(!call.allows("anything:1"));
    }

    #[test]
    fn bad_calls_name_the_field() {
        let p = policy();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let key = p.key(ip);
        let eligible = vec!["a:1".to_string(), "b:1".to_string()];
        let none = Resolve::new("s", ip, &p);
        assert_eq!(none.proposal(&key).unwrap_err().field, "eligible");
        let short = Resolve::new("s", ip, &p).eligible(&eligible).weights(&[1]);
        let err = short.proposal(&key).unwrap_err();
        assert_eq!(err.field, "weights");
        assert!(
            err.rule
                .contains("one weight per eligible endpoint (2), not 1")
        );
        // Checked even with an explicit proposal: the weights would also drive the fallback.
        assert_eq!(
            short.proposed("a:1").proposal(&key).unwrap_err().field,
            "weights"
        );
        let zero = Resolve::new("s", ip, &p)
            .eligible(&eligible)
            .weights(&[0, 0]);
        assert_eq!(zero.proposal(&key).unwrap_err().field, "weights");
        // All weights 0 with a proposal: the fallback is still a rendezvous pick.
        let pick = zero.proposed("a:1").fallback(&key, "a:1");
        assert!(eligible.iter().any(|e| e == pick));
    }
}
