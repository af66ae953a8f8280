//! Fail-open decisions: rendezvous (highest random weight) hashing of the client key over
//! the eligible endpoints.
//!
//! Every gateway replica computes the same choice from the same inputs, with no state and no
//! coordination, so while the store is away clients of one prefix still land on one backend
//! everywhere. Removing an endpoint moves only the prefixes that chose it; adding one takes
//! about `1/n` of the prefixes. The hash is XXH3-64 with a fixed seed, stable across
//! processes, machines and versions of this crate.

use affinity_proto::ClientKey;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Fixed seed: changing it would move every fallback decision.
const SEED: u64 = 0x6166_6669_6e69_7479;

fn weight(scope: &str, key: &ClientKey, endpoint: &str) -> u64 {
    // scope \0 family/len/addr \0 endpoint: unambiguous for any scope and endpoint text.
    let mut buf = Vec::with_capacity(scope.len() + endpoint.len() + 20);
    buf.extend_from_slice(scope.as_bytes());
    buf.push(0);
    buf.push(key.prefix_len());
    buf.extend_from_slice(key.addr_bytes());
    buf.push(0);
    buf.extend_from_slice(endpoint.as_bytes());
    xxh3_64_with_seed(&buf, SEED)
}

/// The endpoint rendezvous hashing picks for `key` in `scope` among `candidates` (ties, which
/// need a 64-bit collision, go to the smaller endpoint text). `None` when there are none.
pub fn choose<'a>(scope: &str, key: &ClientKey, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|e| (weight(scope, key, e), e.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u32) -> ClientKey {
        ClientKey::new(
            std::net::Ipv4Addr::from(i << 8).into(),
            affinity_proto::Masks::new(24, 64).unwrap(),
        )
    }

    #[test]
    fn the_choice_is_stable_and_spread() {
        let backends: Vec<String> = (0..4).map(|i| format!("10.4.0.{i}:8080")).collect();
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let pick = choose("ns/route/0", &key(i), &backends).unwrap();
            // The same inputs always give the same answer.
            assert_eq!(choose("ns/route/0", &key(i), &backends).unwrap(), pick);
            counts[backends.iter().position(|b| b == pick).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread: {counts:?}");
        }
        assert_eq!(choose("s", &key(1), &[]), None);
        // Pinned values: a change of hash or encoding would move every client in an outage
        // (and make replicas of different versions disagree).
        let pinned: Vec<&str> = (0..6)
            .map(|i| choose("ns/route/0", &key(i), &backends).unwrap())
            .collect();
        assert_eq!(
            pinned,
            [
                "10.4.0.1:8080",
                "10.4.0.0:8080",
                "10.4.0.2:8080",
                "10.4.0.1:8080",
                "10.4.0.2:8080",
                "10.4.0.0:8080"
            ]
        );
    }

    proptest! {
        #[test]
        fn removing_an_endpoint_moves_only_its_prefixes(
            n in 2usize..12,
            removed in any::<proptest::sample::Index>(),
            keys in proptest::collection::vec(any::<u32>(), 1..200),
        ) {
            let backends: Vec<String> = (0..n).map(|i| format!("backend-{i}:80")).collect();
            let gone = removed.index(n);
            let rest: Vec<String> = backends.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, b)| b.clone()).collect();
            for k in keys {
                let before = choose("scope", &key(k), &backends).unwrap();
                let after = choose("scope", &key(k), &rest).unwrap();
                if before != backends[gone] {
                    prop_assert_eq!(before, after, "a prefix moved although its endpoint stayed");
                }
            }
        }

        #[test]
        fn order_of_candidates_does_not_matter(keys in proptest::collection::vec(any::<u32>(), 1..50)) {
            let backends: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
            let mut reversed = backends.clone();
            reversed.reverse();
            for k in keys {
                prop_assert_eq!(choose("s", &key(k), &backends), choose("s", &key(k), &reversed));
            }
        }
    }
}
