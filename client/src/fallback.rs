//! Rendezvous (highest random weight) hashing of the client key over the eligible
//! endpoints: the endpoint a new lease proposes by default, and the fail-open decision
//! while the store is away. Both are the same pick, so a decision made during an outage is
//! the one the store records once it is back.
//!
//! Every gateway replica computes the same choice from the same inputs, with no state and no
//! coordination, so while the store is away clients of one prefix still land on one backend
//! everywhere. Removing an endpoint moves only the prefixes that chose it; adding one takes
//! about `1/n` of the prefixes. The hash is XXH3-64 with a fixed seed, stable across
//! processes, machines and versions of this crate.
//!
//! [`choose_weighted`] gives each endpoint a share of the keys proportional to its weight
//! (the score `w / -ln(u)` of weighted rendezvous hashing, `u` the key's hash for that
//! endpoint mapped into (0, 1)); with equal weights it is exactly [`choose`].

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

/// `-ln(u)` for `u = (hash + 0.5) / 2^64`, in (0, 45): accurate at both ends (near
/// `u = 1` through the complement, where `ln` alone would round to 0).
#[allow(clippy::cast_precision_loss)]
fn minus_ln_unit(hash: u64) -> f64 {
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    if hash >= 1 << 63 {
        let complement = ((u64::MAX - hash) as f64 + 0.5) / TWO_POW_64;
        -(-complement).ln_1p()
    } else {
        -((hash as f64 + 0.5) / TWO_POW_64).ln()
    }
}

/// The endpoint weighted rendezvous hashing picks for `key` in `scope`: each candidate
/// takes a share of the keys proportional to its weight (`weights[i]` for
/// `candidates[i]`); a weight of 0 takes none. With `weights` empty, or all the positive
/// weights equal, this is [`choose`] over the candidates of positive weight. `None` when
/// no candidate has a positive weight, or when `weights` is neither empty nor one per
/// candidate.
pub fn choose_weighted<'a>(
    scope: &str,
    key: &ClientKey,
    candidates: &'a [String],
    weights: &[u32],
) -> Option<&'a str> {
    if weights.is_empty() {
        return choose(scope, key, candidates);
    }
    if weights.len() != candidates.len() {
        return None;
    }
    let weighted = || {
        candidates
            .iter()
            .zip(weights)
            .filter(|(_, w)| **w > 0)
            .map(|(e, w)| (e.as_str(), *w))
    };
    let mut positive = weighted().map(|(_, w)| w);
    let first = positive.next()?;
    if positive.all(|w| w == first) {
        // Equal weights: the exact integer comparison, as `choose` makes it.
        return weighted()
            .map(|(e, _)| (weight(scope, key, e), e))
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
            .map(|(_, e)| e);
    }
    weighted()
        .map(|(e, w)| (f64::from(w) / minus_ln_unit(weight(scope, key, e)), e))
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
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

    #[test]
    fn weights_share_the_keys_in_proportion() {
        let backends: Vec<String> = (0..3).map(|i| format!("10.4.0.{i}:8080")).collect();
        let mut counts = [0u32; 3];
        for i in 0..6000 {
            let pick = choose_weighted("ns/route/0", &key(i), &backends, &[1, 2, 3]).unwrap();
            counts[backends.iter().position(|b| b == pick).unwrap()] += 1;
        }
        // Expected 1000 / 2000 / 3000; a few percent either way is hashing noise.
        for (count, expected) in counts.iter().zip([1000u32, 2000, 3000]) {
            assert!(
                count.abs_diff(expected) < expected / 8,
                "shares do not follow the weights: {counts:?}"
            );
        }
        // Pinned, as for the unweighted pick.
        let pinned: Vec<&str> = (0..12)
            .map(|i| choose_weighted("ns/route/0", &key(i), &backends, &[1, 2, 3]).unwrap())
            .collect();
        let unweighted: Vec<&str> = (0..12)
            .map(|i| choose("ns/route/0", &key(i), &backends).unwrap())
            .collect();
        assert_eq!(pinned, PINNED_WEIGHTED);
        // Weights move some keys to the heavier endpoints, and only there.
        let moved: Vec<(&str, &str)> = unweighted
            .iter()
            .zip(&pinned)
            .filter(|(u, w)| u != w)
            .map(|(u, w)| (*u, *w))
            .collect();
        assert_eq!(
            moved,
            [
                ("10.4.0.1:8080", "10.4.0.2:8080"),
                ("10.4.0.0:8080", "10.4.0.2:8080")
            ]
        );
    }

    const PINNED_WEIGHTED: [&str; 12] = [
        "10.4.0.1:8080",
        "10.4.0.0:8080",
        "10.4.0.2:8080",
        "10.4.0.1:8080",
        "10.4.0.2:8080",
        "10.4.0.0:8080",
        "10.4.0.2:8080",
        "10.4.0.1:8080",
        "10.4.0.2:8080",
        "10.4.0.1:8080",
        "10.4.0.2:8080",
        "10.4.0.2:8080",
    ];

    #[test]
    fn zero_weights_take_nothing_and_bad_weights_pick_nothing() {
        let backends: Vec<String> = (0..3).map(|i| format!("b{i}:80")).collect();
        for i in 0..500 {
            let pick = choose_weighted("s", &key(i), &backends, &[0, 5, 5]).unwrap();
            assert_ne!(pick, "b0:80");
            // Equal positive weights are the unweighted pick over those endpoints.
            assert_eq!(Some(pick), choose("s", &key(i), &backends[1..]));
        }
        assert_eq!(choose_weighted("s", &key(1), &backends, &[0, 0, 0]), None);
        assert_eq!(choose_weighted("s", &key(1), &backends, &[1, 1]), None);
        assert_eq!(
            choose_weighted("s", &key(1), &backends, &[]),
            choose("s", &key(1), &backends)
        );
    }

    #[test]
    fn the_log_of_the_unit_hash_is_finite_and_falls_as_the_hash_grows() {
        let mut last = f64::INFINITY;
        for hash in [
            0,
            1,
            1 << 20,
            1 << 62,
            1 << 63,
            u64::MAX - (1 << 20),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let v = minus_ln_unit(hash);
            assert!(v.is_finite() && v > 0.0, "{hash}: {v}");
            assert!(v < last, "not falling at {hash}");
            last = v;
        }
    }

    proptest! {
        #[test]
        fn weighted_removal_moves_only_the_removed_prefixes(
            weights in proptest::collection::vec(1u32..10, 2..8),
            removed in any::<proptest::sample::Index>(),
            keys in proptest::collection::vec(any::<u32>(), 1..100),
        ) {
            let n = weights.len();
            let backends: Vec<String> = (0..n).map(|i| format!("backend-{i}:80")).collect();
            let gone = removed.index(n);
            let mut less = weights.clone();
            less[gone] = 0;
            for k in keys {
                let before = choose_weighted("scope", &key(k), &backends, &weights).unwrap();
                let after = choose_weighted("scope", &key(k), &backends, &less).unwrap();
                if before != backends[gone] {
                    prop_assert_eq!(before, after, "a prefix moved although its endpoint stayed");
                }
            }
        }

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
