//! Tests that need a tool from outside Rust (kubernetes-validate, docker-compose, Envoy,
//! nginx): where it is missing they skip with a loud message, and under
//! `AFFINITY_REQUIRE_DOCKER=1` (as `.ci/run` sets) they fail instead.

/// Whether a missing tool fails the test (CI) or skips it.
pub fn required() -> bool {
    std::env::var(crate::docker::REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Say loudly that a check is skipped (or fail, when tools are required).
pub fn skip(test: &str, why: &str) {
    use std::io::Write as _;
    assert!(
        !required(),
        "{test}: {why} (AFFINITY_REQUIRE_DOCKER=1 requires it; tests/install-deps.sh installs it)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: {why}; run tests/install-deps.sh to install it ***\n"
    );
}
