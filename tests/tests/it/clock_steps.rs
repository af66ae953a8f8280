//! Wall-clock steps on the leader do not lengthen or shorten leases already granted, and a
//! new leader whose wall clock is wrong moves store time by at most `--max-clock-step`.
//! Nodes run under libfaketime (Debian's `faketime` package; `tests/install-deps.sh`
//! installs it), with an offset the test sets or changes while the node runs. The monotonic
//! clock is left alone, as a real clock step leaves it.

use std::path::Path;
use std::time::Duration;

use affinity_tests::requests::{lookup, resolve, retry_unavailable};
use affinity_tests::{Cluster, ClusterOptions, wait};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn now_ms() -> i64 {
    affinity_server::clock::now_ms()
}

/// Whether libfaketime is here; without it the test is skipped loudly (and fails in CI).
fn have_libfaketime() -> bool {
    if Path::new(LIBFAKETIME).exists() {
        return true;
    }
    assert!(
        std::env::var("AFFINITY_REQUIRE_DOCKER").as_deref() != Ok("1"),
        "{LIBFAKETIME} is missing: install Debian's faketime (tests/install-deps.sh does)"
    );
    eprintln!(
        "\n*** SKIPPED clock_steps: {LIBFAKETIME} is missing (apt-get install faketime) ***\n"
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_steps_on_the_leader_neither_end_nor_extend_leases() {
    if !have_libfaketime() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let env = [
        ("LD_PRELOAD", LIBFAKETIME.to_string()),
        ("FAKETIME_TIMESTAMP_FILE", offset.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
        ("DONT_FAKE_MONOTONIC", "1".to_string()),
    ];
    let options = ClusterOptions {
        nodes: 1,
        extra_env: env
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start("clock-steps", options).await;
    let mut client = cluster.client(1);
    let lifetime = Duration::from_secs(4);

    let first = client
        .resolve(resolve("ns/clock/0", "10.0.1.1", "10.9.0.1:80", lifetime))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let ends_at = first.expires_at_ms;

    // An hour forward on the leader: the lease does not end early, and new leases are
    // stamped with the real time, not the stepped one.
    std::fs::write(&offset, "+1h\n").unwrap();
    let second = client
        .resolve(resolve("ns/clock/0", "10.0.2.1", "10.9.0.1:80", lifetime))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert!(
        second.created_at_ms < now_ms() + 60_000,
        "a lease was stamped {} ms ahead of real time",
        second.created_at_ms - now_ms()
    );
    let held = client
        .lookup(lookup("ns/clock/0", "10.0.1.1"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        now_ms() >= ends_at || held.lease.is_some(),
        "a forward step ended a live lease"
    );

    // An hour back: the lease still ends on time, not an hour late.
    std::fs::write(&offset, "-1h\n").unwrap();
    wait::until_wall_clock(ends_at).await;
    wait::until(
        "the first lease ends at its real end",
        Duration::from_secs(5),
        || {
            let mut client = client.clone();
            async move {
                let lease = client
                    .lookup(lookup("ns/clock/0", "10.0.1.1"))
                    .await
                    .map_err(|s| s.to_string())?
                    .into_inner()
                    .lease;
                match lease {
                    None => Ok(()),
                    Some(l) => Err(format!("still live, expires_at_ms {}", l.expires_at_ms)),
                }
            }
        },
    )
    .await;
    assert!(
        cluster.log(1).contains("the wall clock stepped"),
        "the step is logged"
    );
}

/// Node 3's wall clock is 10 s ahead, then (in a new cluster) 10 s behind. Once it leads,
/// the leases it creates are stamped within `--max-clock-step` (1 s) of real time, not
/// 10 s off: ahead, it would end every lease 10 s early while gateways still route by
/// them; behind, it would keep them 10 s too long. It reports its offset meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_with_a_wrong_clock_moves_store_time_by_at_most_the_step() {
    if !have_libfaketime() {
        return;
    }
    for offset_s in [10i64, -10] {
        let skewed = 3;
        let env = vec![
            ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
            ("FAKETIME".to_string(), format!("{offset_s:+}")),
            ("DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ];
        let options = ClusterOptions {
            node_env: [(skewed, env)].into(),
            ..ClusterOptions::default()
        };
        let mut cluster = Cluster::start("clock-skew", options).await;
        let mut leader = cluster.wait_leader(&cluster.ids()).await;
        if leader == skewed {
            leader = hand_over(&cluster, skewed, 1).await;
        }
        let mut client = cluster.client(leader);
        client
            .resolve(resolve("ns/skew/0", "10.0.0.1", "10.9.0.1:80", HOUR))
            .await
            .unwrap();
        // While it follows, the skewed node knows how far off it is.
        let reported = wait::until(
            "node 3 reports its clock offset",
            Duration::from_secs(20),
            || async {
                cluster
                    .metric(skewed, "affinity_clock_offset_seconds")
                    .filter(|v| (v - f64::from(i32::try_from(offset_s).unwrap())).abs() < 1.0)
                    .ok_or("not yet")
            },
        )
        .await;
        eprintln!("node {skewed} reports a clock offset of {reported:.3} s");

        cluster.kill(leader);
        let rest: Vec<u64> = cluster.ids().into_iter().filter(|n| *n != leader).collect();
        let mut new = cluster.wait_leader(&rest).await;
        if new != skewed {
            new = hand_over(&cluster, new, skewed).await;
        }
        assert_eq!(new, skewed);
        let client = cluster.client(skewed);
        let before = now_ms();
        let lease = retry_unavailable(Duration::from_secs(10), || {
            let mut client = client.clone();
            async move {
                client
                    .resolve(resolve("ns/skew/0", "10.0.1.1", "10.9.0.1:80", HOUR))
                    .await
            }
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
        let after = now_ms();
        let stamped = lease.created_at_ms;
        assert!(
            stamped <= after + 1_000 + SLACK_MS && stamped >= before - 1_000 - SLACK_MS,
            "with a clock {offset_s:+} s off, the new leader stamped {} ms from real time",
            if stamped > after {
                stamped - after
            } else {
                stamped - before
            }
        );
        assert!(
            cluster.log(skewed).contains("max-clock-step"),
            "the held-back clock is logged"
        );
        eprintln!(
            "clock {offset_s:+} s: new leader stamped {} ms from real time",
            stamped - i64::midpoint(before, after)
        );
    }
}

/// Slack for the test's own readings around a call (scheduling, rounding).
const SLACK_MS: i64 = 300;

const HOUR: Duration = Duration::from_secs(3600);

/// Ask leader `from` to hand over to `to` and wait until all running nodes agree; `to`.
async fn hand_over(cluster: &Cluster, from: u64, to: u64) -> u64 {
    cluster
        .admin(from)
        .transfer_leader(affinity_proto::pb::TransferLeaderRequest { to_node_id: to })
        .await
        .unwrap();
    let agreed = cluster.wait_leader(&cluster.running()).await;
    assert_eq!(agreed, to, "leadership went to {agreed}, not {to}");
    agreed
}
