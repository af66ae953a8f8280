//! Probes the leader-change scenarios share: leases planted before a fault; a probe for
//! stale answers (a lease released on the new leader, asked for at once on the old one);
//! a read-back of an acknowledged write on a restarted node; finding the first node that
//! calls itself leader; a findings file written before a scenario asserts; and skipping
//! loudly when a tool the scenario needs is missing; and a verdict that holds a
//! scenario's own failures until the common history check and report are done.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

use affinity_proto::pb;
use affinity_proto::pb::affinity_client::AffinityClient as RawClient;
use affinity_proto::pb::cluster_client::ClusterClient;
use affinity_tests::containers::ContainerCluster;
use affinity_tests::{docker, requests, wait};
use tonic::transport::Channel;

use crate::{Run, scenario};

/// The scope of planted leases (the workload and its checker never touch it).
pub const PROBE_SCOPE: &str = "chaos/probe/0";

/// How long a planted lease lives: longer than any scenario.
const PLANTED_LIFETIME: Duration = Duration::from_secs(3600);

/// The client address of probe key `k` (a /24 of its own under the requests' mask).
pub fn probe_ip(k: usize) -> String {
    format!("10.{}.{}.1", 100 + k / 256, k % 256)
}

/// A lease acknowledged to the test, and the address that names its key.
#[derive(Debug, Clone)]
pub struct Planted {
    pub ip: String,
    pub lease: pb::Lease,
}

impl Planted {
    /// Whether `lease` is this very lease (not a newer one of the same key).
    fn is(&self, lease: &pb::Lease) -> bool {
        lease.endpoint == self.lease.endpoint && lease.created_at_ms == self.lease.created_at_ms
    }
}

/// Create leases for keys `from..from + n` through node `on`, each acknowledged, living
/// `lifetime` (an hour if `None`).
pub async fn plant(
    cluster: &ContainerCluster,
    on: usize,
    keys: std::ops::Range<usize>,
    lifetime: Option<Duration>,
) -> Vec<Planted> {
    let channel = cluster.channel(on);
    let lifetime = lifetime.unwrap_or(PLANTED_LIFETIME);
    let calls = keys.map(|k| {
        let channel = channel.clone();
        async move {
            let ip = probe_ip(k);
            let request = requests::resolve(PROBE_SCOPE, &ip, &format!("planted:{k}"), lifetime);
            let lease = resolve_retrying(&channel, request)
                .await
                .unwrap_or_else(|s| panic!("plant probe key {k} on node {on}: {s}"))
                .lease
                .expect("a Resolve answers a lease");
            Planted { ip, lease }
        }
    });
    futures::future::join_all(calls).await
}

/// A call's answer, given up on (as DEADLINE_EXCEEDED) shortly after `deadline`: the
/// deadline goes to the server, but tonic does not enforce it on the client, and a node
/// that stopped or hears nothing may never answer.
pub async fn within<T>(
    deadline: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(deadline + Duration::from_millis(200), call).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in time")),
    }
}

/// `request` through `channel`, retried while UNAVAILABLE for up to 10 s (3 s a call).
pub async fn resolve_retrying(
    channel: &Channel,
    request: pb::ResolveRequest,
) -> Result<pb::ResolveResponse, tonic::Status> {
    requests::retry_unavailable(Duration::from_secs(10), || {
        let mut client = RawClient::new(channel.clone());
        let limit = Duration::from_secs(3);
        let request = requests::with_deadline(request.clone(), limit);
        async move { within(limit, client.resolve(request)).await }
    })
    .await
}

/// A Release of `ip`'s key in the probe scope.
fn release(ip: &str) -> pb::ReleaseRequest {
    pb::ReleaseRequest {
        scope: PROBE_SCOPE.into(),
        client_ip: ip.into(),
        policy: Some(requests::policy(24, PLANTED_LIFETIME)),
        request_id: String::new(),
    }
}

/// How one kind of call to a node answered during a probe.
#[derive(Debug, Default)]
pub struct Answers {
    /// Answers that were right: no lease, or a lease other than the one that should be gone
    /// (or, for a read-back, the one that should be there).
    pub right: usize,
    /// Answers naming a released lease, or missing an acknowledged one.
    pub wrong: usize,
    /// Errors, by code.
    pub errors: BTreeMap<String, usize>,
    /// What the first wrong answer was, and when.
    pub first_wrong: Option<String>,
}

impl Answers {
    fn error(&mut self, status: &tonic::Status) {
        *self
            .errors
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
    }

    fn wrong(&mut self, answered: Option<&pb::Lease>, at: Duration) {
        self.wrong += 1;
        if self.first_wrong.is_none() {
            let what = answered.map_or_else(
                || "no lease".to_string(),
                |l| format!("lease {} created at {}", l.endpoint, l.created_at_ms),
            );
            self.first_wrong = Some(format!("{what}, {} ms into the probe", at.as_millis()));
        }
    }
}

impl fmt::Display for Answers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} right, {} wrong", self.right, self.wrong)?;
        for (code, n) in &self.errors {
            write!(f, ", {code} {n}")?;
        }
        if let Some(first) = &self.first_wrong {
            write!(f, " (first wrong: {first})")?;
        }
        Ok(())
    }
}

/// What a stale-answer probe found.
#[derive(Debug, Default)]
pub struct StaleProbe {
    /// Keys released on the new leader (acknowledged) and asked for on the old one.
    pub released: usize,
    /// Releases not acknowledged (those keys were not asked for).
    pub not_released: usize,
    pub resolve: Answers,
    pub lookup: Answers,
    /// When (since the fault) each stale answer came.
    pub stale_at: Vec<Duration>,
}

impl StaleProbe {
    /// Answers naming a released lease.
    pub fn stale(&self) -> usize {
        self.resolve.wrong + self.lookup.wrong
    }
}

impl fmt::Display for StaleProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys released on the new leader ({} releases failed); the old leader's Resolve: {}; its Lookup: {}",
            self.released, self.not_released, self.resolve, self.lookup
        )?;
        if let (Some(first), Some(last)) = (self.stale_at.iter().min(), self.stale_at.iter().max())
        {
            write!(
                f,
                "; stale answers from {} ms to {} ms after the fault",
                first.as_millis(),
                last.as_millis()
            )?;
        }
        Ok(())
    }
}

/// The old leader's answers to one probe, once its key was released.
struct Asked {
    resolve: Result<pb::ResolveResponse, tonic::Status>,
    lookup: Result<pb::LookupResponse, tonic::Status>,
    at: Duration,
}

async fn probe_one(
    new: Channel,
    old: Channel,
    key: Planted,
    fault: Instant,
) -> (Planted, Option<Asked>) {
    let limit = Duration::from_secs(2);
    let mut releaser = RawClient::new(new);
    let released = within(
        limit,
        releaser.release(requests::with_deadline(release(&key.ip), limit)),
    )
    .await;
    if !released.is_ok_and(|r| r.released) {
        return (key, None);
    }
    let at = fault.elapsed();
    let mut resolver = RawClient::new(old.clone());
    let mut reader = RawClient::new(old);
    let (resolve, lookup) = tokio::join!(
        within(
            limit,
            resolver.resolve(requests::with_deadline(
                requests::resolve(PROBE_SCOPE, &key.ip, "after-release:1", PLANTED_LIFETIME),
                limit,
            ))
        ),
        within(
            limit,
            reader.lookup(requests::with_deadline(
                requests::lookup(PROBE_SCOPE, &key.ip),
                limit,
            ))
        ),
    );
    (
        key,
        Some(Asked {
            resolve,
            lookup,
            at,
        }),
    )
}

/// For `window`, one key every 20 ms: release it on node `new` (acknowledged), then at
/// once ask node `old` for it with a Resolve (no eligible list) and a Lookup. The old node
/// must never answer the released lease.
pub async fn release_then_ask_old(
    cluster: &ContainerCluster,
    new: usize,
    old: usize,
    keys: &[Planted],
    window: Duration,
    fault: Instant,
) -> StaleProbe {
    let (new_channel, old_channel) = (cluster.channel(new), cluster.channel(old));
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut running = Vec::new();
    for key in keys {
        pace.tick().await;
        if started.elapsed() >= window {
            break;
        }
        running.push(tokio::spawn(probe_one(
            new_channel.clone(),
            old_channel.clone(),
            key.clone(),
            fault,
        )));
    }
    let mut probe = StaleProbe::default();
    for done in futures::future::join_all(running).await {
        let (key, outcome) = done.expect("a probe task");
        let Some(Asked {
            resolve,
            lookup,
            at,
        }) = outcome
        else {
            probe.not_released += 1;
            continue;
        };
        probe.released += 1;
        match resolve {
            Ok(r) if r.lease.as_ref().is_some_and(|l| key.is(l)) => {
                probe.resolve.wrong += 1;
                probe.stale_at.push(at);
            }
            Ok(_) => probe.resolve.right += 1,
            Err(s) => probe.resolve.error(&s),
        }
        match lookup {
            Ok(r) if r.lease.as_ref().is_some_and(|l| key.is(l)) => {
                probe.lookup.wrong += 1;
                probe.stale_at.push(at);
            }
            Ok(_) => probe.lookup.right += 1,
            Err(s) => probe.lookup.error(&s),
        }
    }
    probe
}

/// Ask node `on` for `key` (a Lookup and a Resolve, no eligible list) every 20 ms until
/// each has answered `enough` times or `bound` passes: every answer must be `key`'s lease.
pub async fn read_back(
    cluster: &ContainerCluster,
    on: usize,
    key: &Planted,
    enough: usize,
    bound: Duration,
) -> (Answers, Answers) {
    let mut client = RawClient::new(cluster.channel(on));
    let (mut lookups, mut resolves) = (Answers::default(), Answers::default());
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    while started.elapsed() < bound
        && (lookups.right + lookups.wrong < enough || resolves.right + resolves.wrong < enough)
    {
        pace.tick().await;
        let limit = Duration::from_secs(1);
        let read = within(
            limit,
            client.lookup(requests::with_deadline(
                requests::lookup(PROBE_SCOPE, &key.ip),
                limit,
            )),
        )
        .await;
        match read {
            Ok(r) if r.lease.as_ref().is_some_and(|l| key.is(l)) => lookups.right += 1,
            Ok(r) => lookups.wrong(r.lease.as_ref(), started.elapsed()),
            Err(s) => lookups.error(&s),
        }
        let resolved = within(
            limit,
            client.resolve(requests::with_deadline(
                requests::resolve(PROBE_SCOPE, &key.ip, "read-back:1", PLANTED_LIFETIME),
                limit,
            )),
        )
        .await;
        match resolved {
            Ok(r) if r.lease.as_ref().is_some_and(|l| key.is(l)) => resolves.right += 1,
            Ok(r) => resolves.wrong(r.lease.as_ref(), started.elapsed()),
            Err(s) => resolves.error(&s),
        }
    }
    (lookups, resolves)
}

/// The first node of `among` whose `Status` says it is the leader, and how long after
/// `fault` that was seen.
pub async fn first_leader(
    cluster: &ContainerCluster,
    among: &[usize],
    fault: Instant,
) -> (usize, Duration) {
    wait::until(
        &format!("one of nodes {among:?} calls itself leader"),
        Duration::from_secs(30),
        || async {
            let mut seen = Vec::new();
            for i in among {
                match cluster.status(*i).await {
                    Ok(s) if s.role == "leader" => return Ok((*i, fault.elapsed())),
                    Ok(s) => seen.push(format!("node {i}: {} in term {}", s.role, s.term)),
                    Err(e) => seen.push(e),
                }
            }
            Err(seen)
        },
    )
    .await
}

/// `TransferLeader` to node `to`, sent to node `on`; the leader it names, or the error.
pub async fn transfer_leader(
    cluster: &ContainerCluster,
    on: usize,
    to: usize,
) -> Result<u64, tonic::Status> {
    let to_node_id = u64::try_from(to + 1).expect("a small ordinal");
    let limit = Duration::from_secs(10);
    let mut client = ClusterClient::new(cluster.channel(on));
    within(
        limit,
        client.transfer_leader(requests::with_deadline(
            pb::TransferLeaderRequest { to_node_id },
            limit,
        )),
    )
    .await
    .map(|r| r.leader_id)
}

/// Record a finding: in the report, and appended to `findings.txt` in the scenario's
/// output folder at once (so it is there even when the scenario then fails).
pub fn note(run: &mut Run, finding: impl Into<String>) {
    let finding = finding.into();
    run.report.did(finding.clone());
    let path = run.cluster.out_dir().join("findings.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{finding}");
    }
}

/// A scenario with checks of its own: skipped (loudly, see [`can_run`]) when `missing`
/// names a tool it lacks; what its faults record in the [`Verdict`] is asserted after the
/// common history check and report, so a failing check still leaves every figure.
pub async fn checked<F>(name: &str, missing: Option<String>, faults: F)
where
    F: AsyncFnOnce(&mut Run, &Verdict),
{
    if !can_run(name, missing) {
        return;
    }
    let verdict = Verdict::default();
    scenario(name, async |run: &mut Run| faults(run, &verdict).await).await;
    verdict.assert_clean(name);
}

/// Whether scenario `name` can run: `None` when `missing` says nothing is missing;
/// otherwise a loud skip, or a failure under `AFFINITY_REQUIRE_DOCKER=1`.
pub fn can_run(name: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    let required = std::env::var(docker::REQUIRE_ENV).is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{name}: needs {why} ({}=1 makes this a failure)",
        docker::REQUIRE_ENV
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !! SKIPPED {name}: {why}.\n\
         !! Set {}=1 to make this a failure.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        docker::REQUIRE_ENV
    );
    false
}

/// What a scenario's own checks found wrong, kept until the common history check and the
/// report are done and then asserted, so that a failing probe still leaves every figure.
#[derive(Default)]
pub struct Verdict(std::sync::Mutex<Vec<String>>);

impl Verdict {
    /// Record `failure` (also as a finding, at once) unless `ok`.
    pub fn expect(&self, run: &mut Run, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            let failure = failure();
            note(run, format!("FAILED: {failure}"));
            self.0.lock().expect("not poisoned").push(failure);
        }
    }

    /// Fail the test with everything recorded, if anything was.
    pub fn assert_clean(&self, name: &str) {
        let failures = self.0.lock().expect("not poisoned");
        assert!(failures.is_empty(), "{name}: {}", failures.join("; "));
    }
}
