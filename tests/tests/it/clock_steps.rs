//! Wall-clock steps on the leader do not lengthen or shorten leases already granted: the
//! node runs under libfaketime (Debian's `faketime` package; `tests/install-deps.sh`
//! installs it), whose offset the test changes while the node runs. The monotonic clock is
//! left alone, as a real clock step leaves it.

use std::path::Path;
use std::time::Duration;

use affinity_tests::requests::{lookup, resolve};
use affinity_tests::{Cluster, ClusterOptions, wait};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn now_ms() -> i64 {
    affinity_server::clock::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_steps_on_the_leader_neither_end_nor_extend_leases() {
    if !Path::new(LIBFAKETIME).exists() {
        assert!(
            std::env::var("AFFINITY_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "{LIBFAKETIME} is missing: install Debian's faketime (tests/install-deps.sh does)"
        );
        eprintln!(
            "\n*** SKIPPED clock_steps: {LIBFAKETIME} is missing (apt-get install faketime) ***\n"
        );
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
