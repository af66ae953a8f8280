#!/usr/bin/env bash
# Run the whole affinity test suite on a Debian machine, installing what it lacks first.
#
#   tests/run.sh              install missing system packages, then `cargo test --workspace`
#   tests/run.sh -- ARGS      pass ARGS on to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

tests/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi

echo "tests/run.sh: cargo test --workspace --locked ${extra[*]:-}" >&2
exec cargo test --workspace --locked "${extra[@]}"
