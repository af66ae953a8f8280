#!/usr/bin/env bash
# Scale figures of one affinityd node holding many leases: restore time, memory and disk per
# lease, snapshot build time, restart-to-serving time, and the time for a new member to
# receive and install the snapshot.
#
#   cargo build --release -p affinity-server --bins
#   AFFINITY_SIZING_COUNTS=1000000 AFFINITY_SIZING_BACKUP_DIR=/tmp/scale \
#     cargo bench -p affinity-bench --bench sizing          # writes /tmp/scale/leases-N.backup
#   benches/scale.sh /tmp/scale/leases-1000000.backup [DATA_ROOT]
#
# AFFINITY_BIN_DIR runs the affinityd and affinityctl found there instead of the release
# build (for example an older release, to compare).
#
# Everything runs on loopback; the data goes under DATA_ROOT (default: the current
# directory, i.e. real disk) and is removed at the end.
set -euo pipefail

backup=${1:?usage: benches/scale.sh BACKUP_FILE [DATA_ROOT]}
root=$(mktemp -d "${2:-.}/affinity-scale-XXXXXX")
bin=${AFFINITY_BIN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
wait_ready() { # metrics port, then the time it took in ms from $2
  until curl -sf "127.0.0.1:$1/readyz" >/dev/null 2>&1; do sleep 0.05; done
  echo $(( $(now_ms) - $2 ))
}

g1=$(port); m1=$(port); g2=$(port); m2=$(port)
peers="1=127.0.0.1:$g1"
start_node() { # id grpc metrics peers
  "$bin/affinityd" --node-id "$1" --listen "127.0.0.1:$2" --metrics-listen "127.0.0.1:$3" \
    --data-dir "$root/node-$1" --peers "$4" --raft-logs-kept 0 --log-level warn \
    >>"$root/node-$1.log" 2>&1 &
  pids+=($!)
  last=$!
}
ctl() { "$bin/affinityctl" --endpoints "127.0.0.1:$g1" --deadline 600s --json "$@"; }

t=$(now_ms); start_node 1 "$g1" "$m1" "$peers"; p1=$last; wait_ready "$m1" "$t" >/dev/null
base_kb=$(rss_kb "$p1")

t=$(now_ms); restored=$(ctl restore "$backup"); restore_ms=$(( $(now_ms) - t ))
leases=$(echo "$restored" | python3 -c 'import json,sys; print(json.load(sys.stdin)["imported"])')
full_kb=$(rss_kb "$p1"); disk_kb=$(du -sk "$root/node-1" | cut -f1)

t=$(now_ms); ctl snapshot >/dev/null; snapshot_ms=$(( $(now_ms) - t ))
snap_disk_kb=$(du -sk "$root/node-1" | cut -f1)

kill -TERM "$p1"; wait "$p1" 2>/dev/null || true
t=$(now_ms); start_node 1 "$g1" "$m1" "$peers"; p1=$last; restart_ms=$(wait_ready "$m1" "$t")
restart_kb=$(rss_kb "$p1")

start_node 2 "$g2" "$m2" "$peers,2=127.0.0.1:$g2"; p2=$last
t=$(now_ms); ctl members add 2 "127.0.0.1:$g2" --no-wait >/dev/null
held() { "$bin/affinityctl" --endpoints "127.0.0.1:$g2" --json status 2>/dev/null \
  | python3 -c 'import json,sys; d=json.load(sys.stdin); print(next((n.get("lease_count",0) for n in d["nodes"] if n.get("node_id")==2), 0))' 2>/dev/null || echo 0; }
until [ "$(held)" -ge "$leases" ]; do sleep 0.05; done
join_ms=$(( $(now_ms) - t ))
joined_kb=$(rss_kb "$p2")

python3 - "$leases" "$base_kb" "$full_kb" "$disk_kb" "$snap_disk_kb" "$restore_ms" \
  "$snapshot_ms" "$restart_ms" "$restart_kb" "$join_ms" "$joined_kb" <<'EOF'
import sys
n, base, full, disk, snap_disk, restore, snap, restart, restart_kb, join, joined = map(int, sys.argv[1:])
print(f"leases                         {n}")
print(f"restore (1000 per Raft write)  {restore} ms")
print(f"RSS empty -> full              {base/1024:.0f} MB -> {full/1024:.0f} MB ({(full-base)*1024/n:.0f} B per lease)")
print(f"data dir after restore         {disk/1024:.0f} MB ({disk*1024/n:.0f} B per lease)")
print(f"snapshot build                 {snap} ms (data dir then {snap_disk/1024:.0f} MB)")
print(f"restart to ready               {restart} ms (RSS after restart {restart_kb/1024:.0f} MB, {(restart_kb-base)*1024/n:.0f} B per lease)")
print(f"new member: snapshot to caught up  {join} ms (its RSS {joined/1024:.0f} MB)")
EOF
