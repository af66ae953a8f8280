//! The client and the server must agree on every request: the same key for the same IP, and
//! a request survives the trip into the log and back unchanged.

use std::net::IpAddr;

use affinity_client::{ClientKey, Policy, pb, request};
use affinity_server::sm::{Command, Event, LeaseTable, Op, Outcome};
use proptest::prelude::*;

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
        any::<[u8; 4]>().prop_map(|b| IpAddr::from(std::net::Ipv4Addr::from(b).to_ipv6_mapped())),
    ]
}

fn arb_request() -> impl Strategy<Value = pb::ResolveRequest> {
    (
        "[a-z0-9/._-]{1,40}",
        arb_ip(),
        proptest::option::of(0u32..=32),
        proptest::option::of(0u32..=128),
        1u64..=3_600_000,
        "[a-z0-9.:-]{1,30}",
        proptest::collection::vec("[a-z0-9.:-]{1,30}", 0..4),
    )
        .prop_map(|(scope, ip, v4, v6, abs, endpoint, mut eligible)| {
            if !eligible.is_empty() {
                eligible.push(endpoint.clone());
            }
            pb::ResolveRequest {
                scope,
                client_ip: ip.to_string(),
                policy: Some(pb::Policy {
                    ipv4_mask: v4,
                    ipv6_mask: v6,
                    absolute_timeout_ms: abs,
                    idle_timeout_ms: None,
                }),
                endpoint,
                eligible_endpoints: eligible,
                request_id: String::new(),
            }
        })
}

proptest! {
    #[test]
    fn a_request_means_the_same_on_both_sides(req in arb_request()) {
        let ip: IpAddr = req.client_ip.parse().unwrap();
        let policy = Policy::from_pb(req.policy.as_ref().unwrap()).unwrap();
        // What a gateway computes locally (for its cache key)...
        let client_key = ClientKey::new(ip, policy.masks());
        // ...is the key the server derives from the same request.
        let checked = request::Resolve::try_from(req).unwrap();
        prop_assert_eq!(checked.key, client_key);

        // The command survives the log's encoding unchanged.
        let cmd = Command { stamp_ms: 1_000, op: Op::resolve(checked) };
        let back = Command::from_pb(cmd.to_pb()).unwrap();
        prop_assert_eq!(&back, &cmd);

        // And the lease the server stores names the prefix the client would look up.
        let mut table = LeaseTable::new();
        let mut events: Vec<Event> = Vec::new();
        let Outcome::Resolved { lease, created: true, .. } = table.apply(1, &back, &mut events) else {
            panic!("first resolve must create");
        };
        prop_assert_eq!(lease.key, client_key);
        prop_assert_eq!(lease.to_pb().prefix.parse::<ClientKey>().unwrap(), client_key);
    }
}
