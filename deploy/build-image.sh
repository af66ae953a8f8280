#!/usr/bin/env bash
# Build the affinity container image on this machine, with no image registry: the binaries
# are built (or taken) from the host, and the image is `FROM scratch` holding them, the
# shared libraries they load, a non-root user and an empty data folder.
#
#   deploy/build-image.sh                       cargo build --release, tag affinity:dev
#   deploy/build-image.sh --tag affinity:1.2    another tag
#   deploy/build-image.sh --binary-dir DIR      use DIR/affinityd and DIR/affinityctl as built
#
# The image is labelled with a digest of the two binaries; when the tag already holds the
# same binaries, nothing is rebuilt. For machines that can pull base images,
# deploy/Dockerfile builds the same layout from source in a multi-stage build.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'build-image: %s\n' "$*" >&2; }

tag=affinity:dev
bin_dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --binary-dir) bin_dir=${2:?--binary-dir needs a value}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) say "unknown argument: $1 (see --help)"; exit 2 ;;
  esac
done

command -v docker >/dev/null 2>&1 || { say "docker is not installed"; exit 1; }
docker info >/dev/null 2>&1 || { say "the Docker daemon does not answer (is it running?)"; exit 1; }

if [ -z "$bin_dir" ]; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  say "cargo build --release -p affinity-server --bins"
  cargo build --release --locked --quiet -p affinity-server --bins
  bin_dir=target/release
fi
for b in affinityd affinityctl; do
  [ -x "$bin_dir/$b" ] || { say "$bin_dir/$b is missing or not executable"; exit 1; }
done

digest=$(cat "$bin_dir/affinityd" "$bin_dir/affinityctl" | sha256sum | cut -c1-64)
current=$(docker image inspect --format '{{ index .Config.Labels "org.affinity.binaries" }}' \
  "$tag" 2>/dev/null || true)
if [ "$current" = "$digest" ]; then
  say "$tag already holds these binaries"
  exit 0
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$stage/data"
for b in affinityd affinityctl; do
  # Debug information stays on the host; symbols stay for readable backtraces.
  if command -v strip >/dev/null 2>&1; then
    strip --strip-debug -o "$root/usr/local/bin/$b" "$bin_dir/$b"
  else
    cp "$bin_dir/$b" "$root/usr/local/bin/$b"
  fi
done

# The dynamic loader and every library the binaries load, at the paths they are looked
# up by (symlinks resolved to their contents).
libs=$(ldd "$bin_dir/affinityd" "$bin_dir/affinityctl" \
  | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

echo 'root:x:0:0:root:/:/sbin/nologin' > "$root/etc/passwd"
echo 'affinity:x:65532:65532:affinity:/var/lib/affinity:/sbin/nologin' >> "$root/etc/passwd"
printf 'root:x:0:\naffinity:x:65532:\n' > "$root/etc/group"
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

cat > "$stage/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
COPY --chown=65532:65532 data/ /var/lib/affinity/
USER 65532:65532
ENV AFFINITY_LISTEN=0.0.0.0:7400 \\
    AFFINITY_METRICS_LISTEN=0.0.0.0:9400 \\
    AFFINITY_DATA_DIR=/var/lib/affinity
EXPOSE 7400 9400
VOLUME /var/lib/affinity
LABEL org.affinity.binaries="$digest"
ENTRYPOINT ["/usr/local/bin/affinityd"]
EOF

say "docker build -t $tag"
# FROM scratch needs no registry with the classic builder (BuildKit may be absent here).
if ! out=$(DOCKER_BUILDKIT=0 docker build -t "$tag" "$stage" 2>&1); then
  printf '%s\n' "$out" >&2
  say "docker build failed"
  exit 1
fi
# The image this tag held before is now untagged: remove it (and only images of ours).
docker image prune --force --filter "label=org.affinity.binaries" >/dev/null 2>&1 || true
say "built $tag ($(docker image inspect --format '{{ .Size }}' "$tag") bytes)"
