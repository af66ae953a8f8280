#!/usr/bin/env bash
# What affinity-agent adds per request through Envoy and through nginx, against the same
# proxy with plain round robin, in one run: a 3-node store (affinityd dev), three
# affinity-backends, one agent, Envoy and nginx from the shipped configurations (and the
# same configurations without the agent), loaded by wrk (HTTP/1.1, kept-alive connections) from 127.0.0.1 (one /24,
# so after the first request every decision is a cache hit), rounds alternating.
#
#   cargo build --release -p affinity-server -p affinity-gateway -p affinity-agent --bins
#   benches/agent.sh [SECONDS_PER_RUN] [ROUNDS] [CONNECTIONS]
#
# Needs envoy (tests/install-deps.sh puts it in ~/.cache/affinity/venv), nginx and wrk
# (Debian's wrk). Uses the demo ports (7400-7402, 9001-9003, 9510-9512, 9901,
# 10000, 10001, 10080, 10081).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}; rounds=${2:-3}; conns=${3:-16}
B=target/release
ENVOY=${AFFINITY_ENVOY:-$HOME/.cache/affinity/venv/bin/envoy}
for tool in "$ENVOY" nginx wrk "$B/affinityd" "$B/affinity-backend" "$B/affinity-agent"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "agent.sh: $tool is missing" >&2; exit 1; }
done
work=$(mktemp -d /tmp/affinity-agent-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$B/affinityd" dev --nodes 3 --data-dir "$work/store" 2>"$work/store.log" & pids+=($!)
for i in 1 2 3; do "$B/affinity-backend" --name "backend-$i" --listen "127.0.0.1:900$i" >/dev/null & pids+=($!); done
"$B/affinity-agent" --routes examples/gateway/demo/routes.yaml \
  --store 127.0.0.1:7400,127.0.0.1:7401,127.0.0.1:7402 --log-level info 2>"$work/agent.log" & pids+=($!)

# Envoy with the agent (the shipped bootstrap), and the same bootstrap without the
# ext_proc filter on 10001 (admin 9902).
cp agent/config/envoy.yaml "$work/envoy.yaml"
awk '/- name: envoy.filters.http.ext_proc/{skip=1} /- name: envoy.filters.http.router/{skip=0} !skip' \
  agent/config/envoy.yaml | sed -e 's/port_value: 10000}/port_value: 10001}/' -e 's/port_value: 9901}/port_value: 9902}/' \
  >"$work/envoy-plain.yaml"
for f in envoy envoy-plain; do
  "$ENVOY" -c "$work/$f.yaml" --disable-hot-restart --concurrency 1 -l error \
    >"$work/$f.log" 2>&1 & pids+=($!)
done
# nginx with the agent (the shipped configuration), and the same without auth_request on
# 10081.
for f in nginx nginx-plain; do mkdir -p "$work/$f/tmp"; done
cp agent/config/nginx.conf "$work/nginx/nginx.conf"
sed -e '/auth_request \/_affinity;/d' -e 's|proxy_pass http://$affinity_target;|proxy_pass http://web_pool;|' \
  -e 's/listen 127.0.0.1:10080;/listen 127.0.0.1:10081;/' agent/config/nginx.conf >"$work/nginx-plain/nginx.conf"
for f in nginx nginx-plain; do
  nginx -p "$work/$f" -c "$work/$f/nginx.conf" -e stderr 2>"$work/$f.log" & pids+=($!)
done

ready() { for _ in $(seq 1 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "agent.sh: $1 never answered" >&2; exit 1; }
ready http://127.0.0.1:9512/readyz
# The agent's cache answers only once it is current (warmed, watch progress seen).
for _ in $(seq 1 100); do curl -s http://127.0.0.1:9512/readyz | grep -q 'cache: current' && break; sleep 0.1; done
for port in 10000 10001 10080 10081; do ready "http://127.0.0.1:$port/"; done

declare -A results
targets=("envoy+agent=http://127.0.0.1:10000/" "envoy=http://127.0.0.1:10001/"
         "nginx+agent=http://127.0.0.1:10080/" "nginx=http://127.0.0.1:10081/")
for r in $(seq 1 "$rounds"); do
  for t in "${targets[@]}"; do
    name=${t%%=*}; url=${t#*=}
    out=$(wrk -t 1 -c "$conns" -d "${secs}s" "$url" 2>&1)
    rps=$(awk '/Requests\/sec/{printf "%d", $2}' <<<"$out")
    bad=$(awk '/Non-2xx/{print $NF} /Socket errors/{print}' <<<"$out")
    results[$name]="${results[$name]:-}${results[$name]:+ / }${rps}"
    echo "round $r  $name  $rps requests/s  ${bad:+(errors: $bad)}" >&2
  done
done
echo
echo "| target | requests/s ($rounds rounds, $conns connections, ${secs} s each) |"
echo "| --- | --- |"
for t in "${targets[@]}"; do name=${t%%=*}; echo "| $name | ${results[$name]} |"; done
echo
curl -s http://127.0.0.1:9512/metrics | awk '
  /^affinity_agent_decision_seconds_sum/ {split($1,a,"via=\""); split(a[2],b,"\""); sum[b[1]]=$2}
  /^affinity_agent_decision_seconds_count/ {split($1,a,"via=\""); split(a[2],b,"\""); n[b[1]]=$2}
  /^affinity_agent_(decisions|reassigns)_total/ {print}
  /^affinity_client_(watch_timeouts|watch_reconnects|cache_misses|fallbacks)_total/ {print}
  END {for (v in n) printf "agent decision time via %s: %.2f us mean over %d decisions\n", v, sum[v]/n[v]*1e6, n[v]}'
