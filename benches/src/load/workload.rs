//! What one operation is, per workload, and how its key is chosen.
//!
//! | workload | operation | keys |
//! | --- | --- | --- |
//! | `create` | `Resolve` of a prefix never seen (a Raft write) | unique |
//! | `hit` | `Resolve` of a live lease, raw gRPC, no client cache | uniform over `--keys` |
//! | `cached` | `affinity-client`: `cached()`, else `resolve()` | uniform over `--keys` |
//! | `mixed` | `--create-ratio` of new prefixes, the rest live ones | Zipf over `--keys` |
//! | `churn` | `Resolve` with `--churn-timeout` leases, so they end, are swept and made again | uniform over `--keys` |
//!
//! Keys are IPv4 addresses masked to /32 (so each address is its own lease): key `n` is
//! `10.0.0.0 + n`, new keys count up from 2^23, the preloaded ones are `0..keys`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use affinity_proto::{Masks, Policy, pb};

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// New leases: every operation a Raft write.
    Create,
    /// Resolve of live leases, no client cache.
    Hit,
    /// Through `affinity-client` and its cache.
    Cached,
    /// Zipf-popular live leases plus a share of new ones.
    Mixed,
    /// Short leases that keep ending and being made again.
    Churn,
}

impl Workload {
    /// The scope its leases live in (fresh per run, so runs do not see each other's).
    pub fn scope(self, run: u64) -> String {
        format!("bench/{self:?}/{run}").to_lowercase()
    }

    /// Whether the keys are preloaded before timing starts.
    pub fn preloads(self) -> bool {
        matches!(self, Workload::Hit | Workload::Cached | Workload::Mixed)
    }
}

/// First key of the new ones (`create`, `mixed`), above any preloaded key.
const NEW_KEYS_FROM: u32 = 1 << 23;

/// The address of key `n`.
pub fn address(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))
}

/// An endpoint name among 16.
pub fn endpoint(n: u32) -> String {
    format!("10.9.0.{}:8080", n % 16 + 1)
}

/// The policy of a run: /32 keys (one address per lease), leases of `timeout` (at least 1 s).
pub fn policy(timeout: Duration) -> Result<Policy, String> {
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    Policy::from_millis(Masks::default(), ms, None).map_err(|e| e.to_string())
}

/// Zipf-distributed ranks `0..n` with exponent `s`, by inverse transform on a table.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A table for `n` ranks.
    pub fn new(n: u32, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for rank in 1..=n.max(1) {
            total += 1.0 / f64::from(rank).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// A rank for the uniform sample `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> u32 {
        let i = self.cdf.partition_point(|c| *c < u);
        u32::try_from(i.min(self.cdf.len() - 1)).unwrap_or(0)
    }
}

/// Chooses the key of each operation.
pub struct Keys {
    workload: Workload,
    space: u32,
    create_ratio: f64,
    zipf: Option<Zipf>,
    next_new: AtomicU32,
}

impl Keys {
    /// Keys for `workload` over `keys` preloaded (or cycled) keys.
    pub fn new(workload: Workload, keys: u32, create_ratio: f64, zipf_s: f64) -> Self {
        Keys {
            workload,
            space: keys.max(1),
            create_ratio,
            zipf: (workload == Workload::Mixed).then(|| Zipf::new(keys.max(1), zipf_s)),
            next_new: AtomicU32::new(NEW_KEYS_FROM),
        }
    }

    /// The next key.
    pub fn next(&self, rng: &mut fastrand::Rng) -> u32 {
        let new = || self.next_new.fetch_add(1, Ordering::Relaxed);
        match self.workload {
            Workload::Create => new(),
            Workload::Hit | Workload::Cached | Workload::Churn => rng.u32(..self.space),
            Workload::Mixed => {
                if rng.f64() < self.create_ratio {
                    new()
                } else {
                    self.zipf.as_ref().map_or(0, |z| z.sample(rng.f64()))
                }
            }
        }
    }
}

/// The wire request of one `Resolve`.
pub fn request(scope: &str, key: u32, policy: &Policy) -> pb::ResolveRequest {
    pb::ResolveRequest {
        scope: scope.to_string(),
        client_ip: address(key).to_string(),
        policy: Some(policy.to_pb()),
        endpoint: endpoint(key),
        eligible_endpoints: Vec::new(),
        request_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let zipf = Zipf::new(1000, 1.0);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = [0u32; 1000];
        for _ in 0..100_000 {
            counts[zipf.sample(rng.f64()) as usize] += 1;
        }
        assert!(counts[0] > counts[9] && counts[9] > counts[99] && counts[99] > counts[999]);
        // Rank 1 of 1000 under s = 1 takes about 13% of samples.
        assert!((11_000..15_000).contains(&counts[0]), "{}", counts[0]);
    }

    #[test]
    fn create_keys_are_unique_and_preloaded_keys_in_range() {
        let mut rng = fastrand::Rng::with_seed(1);
        let create = Keys::new(Workload::Create, 10, 0.0, 1.0);
        let a = create.next(&mut rng);
        let b = create.next(&mut rng);
        assert_ne!(a, b);
        assert!(a >= NEW_KEYS_FROM);
        let hit = Keys::new(Workload::Hit, 10, 0.0, 1.0);
        assert!((0..100).all(|_| hit.next(&mut rng) < 10));
        assert_ne!(address(a), address(b));
    }
}
