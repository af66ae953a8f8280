#!/usr/bin/env bash
# Run every fuzz target under libFuzzer for a bounded time, growing fuzz/corpus/<target>/.
#
#   fuzz/run.sh                 60 s per target
#   fuzz/run.sh 600             10 minutes per target
#   fuzz/run.sh 30 snapshot     one target
#
# Needs nightly Rust (rustup toolchain install nightly) and cargo-fuzz
# (cargo install cargo-fuzz). Findings land in fuzz/libfuzzer/artifacts/<target>/; each
# becomes a unit test next to the code it broke, and its input joins the corpus, which
# `cargo test -p affinity-fuzz` replays on stable Rust in every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(request client_key log_entry snapshot routes)
fi

cargo run --quiet -p affinity-fuzz --bin affinity-fuzz-seeds
for target in "${targets[@]}"; do
  echo "== $target for ${seconds}s"
  cargo +nightly fuzz run --fuzz-dir fuzz/libfuzzer "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
# Keep the corpus small: only inputs that add coverage.
for target in "${targets[@]}"; do
  cargo +nightly fuzz cmin --fuzz-dir fuzz/libfuzzer "$target" "fuzz/corpus/$target" >/dev/null 2>&1 || true
done
