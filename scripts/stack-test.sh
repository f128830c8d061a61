#!/usr/bin/env bash
# make stack-test: build every image of docker-compose.yml, bring the stack up, run the DAGs in it
# through the api-server's REST API (tests/stack/), and tear everything down, whatever happens.
#
# Needs root (it installs Debian packages when missing and starts its own Docker daemon). Works
# without any container registry: the base image is made with mmdebstrap from the machine's apt
# sources and imported; third-party services are built from Debian packages and PyPI by the
# test-only override docker/stack-test/compose.yml. Docker's data root (images, build cache) is
# kept in LOOKALIKE_STACK_CACHE (default ~/.cache/lookalike/stack), so a second run reuses the
# layers; the daemon itself, its containers, networks, volumes and mounts go at the end.
#
#   LOOKALIKE_STACK_KEEP=1   leave the stack running (and the daemon) for a look; stop it with
#                            scripts/stack-test.sh --down
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${LOOKALIKE_STACK_CACHE:-$HOME/.cache/lookalike/stack}
RUN=$CACHE/run  # the daemon's socket, pid and exec root: short paths (a unix socket path has 108 bytes)
PROJECT=lookalike-stack-test
BASE=lookalike-base:bookworm
export DOCKER_HOST=unix://$RUN/docker.sock
export BASE_IMAGE=$BASE COMPOSE_PROJECT_NAME=$PROJECT
export SAMPLE_ARGS=${SAMPLE_ARGS:---items 1500 --users 400 --days 60}
say() { printf 'stack-test %s  %s\n' "$(date -u +%H:%M:%S)" "$*"; }
started=$(date +%s)

# Debian's docker.io 20.10 (the engine and its CLI) and the Python docker-compose 1.29.
DOCKER=/usr/bin/docker
missing=()
command -v dockerd >/dev/null 2>&1 && [ -x "$DOCKER" ] || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian) …"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
docker() { "$DOCKER" "$@"; }
compose() { docker-compose -f "$RUN/stack.yml" "$@"; }

stop_daemon() {
  if [ -f "$RUN/docker.pid" ]; then
    local pid
    pid=$(cat "$RUN/docker.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$RUN/docker.pid"
  fi
  # What the daemon mounted (overlays, shm, netns) and the bridge it made.
  grep -E " ($CACHE/docker|$RUN/exec)" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
  ip link show docker0 >/dev/null 2>&1 && ip link delete docker0 || true
  rm -rf "$RUN"
}

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "${LOOKALIKE_STACK_KEEP:-0}" = 1 ]; then
    say "left running (LOOKALIKE_STACK_KEEP=1): DOCKER_HOST=$DOCKER_HOST docker-compose -f $RUN/stack.yml ps"
    exit $rc
  fi
  if [ -S "$RUN/docker.sock" ]; then
    if [ $rc -ne 0 ] && [ -f "$RUN/stack.yml" ]; then
      say "the last lines of every service's log:"
      compose logs --no-color --tail 40 2>&1 | tail -400 || true
    fi
    say "tearing down: containers, networks, volumes …"
    [ -f "$RUN/stack.yml" ] && compose down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    docker ps -aq | xargs -r "$DOCKER" rm -f >/dev/null 2>&1 || true
    docker volume prune -f >/dev/null 2>&1 || true
    docker network prune -f >/dev/null 2>&1 || true
  fi
  stop_daemon
  local left
  left=$(pgrep -a -f "containerd-shim|$RUN/exec|dockerd --data-root $CACHE" || true)
  if [ -n "$left" ]; then
    say "processes left behind:"; echo "$left"; rc=1
  fi
  say "done in $(( $(date +%s) - started )) s (exit $rc)"
  exit $rc
}

if [ "${1:-}" = --down ]; then
  LOOKALIKE_STACK_KEEP=0
  trap teardown EXIT
  exit 0
fi

mkdir -p "$CACHE/docker" "$RUN/exec"
if [ -S "$RUN/docker.sock" ] && docker version >/dev/null 2>&1; then
  say "a daemon from an earlier run is still up: stopping it first"
  (LOOKALIKE_STACK_KEEP=0 "$0" --down) || true
  mkdir -p "$CACHE/docker" "$RUN/exec"
fi
trap teardown EXIT
trap 'exit 130' INT TERM
say "starting dockerd (data root $CACHE/docker) …"
dockerd --data-root "$CACHE/docker" --exec-root "$RUN/exec" -H "$DOCKER_HOST" --pidfile "$RUN/docker.pid" \
  >"$RUN/dockerd.log" 2>&1 &
for _ in $(seq 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
docker version >/dev/null || { tail -20 "$RUN/dockerd.log"; exit 1; }

# The base image: Debian bookworm with python3 and venv, the stand-in for python:3.11-slim-bookworm
# and debian:bookworm-slim, with this machine's CA certificates (package downloads may go through
# a TLS-inspecting proxy).
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  say "making the base image $BASE with mmdebstrap …"
  rootfs=$(mktemp -d)/rootfs.tar
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,python3,python3-venv \
    --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    bookworm "$rootfs"
  docker import -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["python3"]' "$rootfs" "$BASE" >/dev/null
  rm -rf "$(dirname "$rootfs")"
fi

scripts/wheelhouse.sh  # the CPU build of torch for the Airflow and Spark images

# The stack: the shipped file, the test-only override, and no NVIDIA device reservation.
docker-compose -f docker-compose.yml -f docker/stack-test/compose.yml config > "$RUN/stack.merged.yml"
.venv/bin/python - "$RUN/stack.merged.yml" "$RUN/stack.yml" <<'EOF'
import sys, yaml
stack = yaml.safe_load(open(sys.argv[1]))
for service in stack["services"].values():
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    reservations.pop("devices", None)
yaml.safe_dump(stack, open(sys.argv[2], "w"), sort_keys=False)
# One service per image to build (several Airflow services share one image).
builders = {}
for name, service in stack["services"].items():
    if "build" in service:
        builders.setdefault(service.get("image", name), name)
print(" ".join(builders.values()), file=open(sys.argv[2] + ".builders", "w"))
EOF

say "building the images …"
build_started=$(date +%s)
read -r -a builders < "$RUN/stack.yml.builders"
if ! compose build "${builders[@]}" > "$CACHE/build.log" 2>&1; then
  tail -60 "$CACHE/build.log"; say "a build failed; the whole log is $CACHE/build.log"; exit 1
fi
grep -E "^(Building |Successfully tagged)" "$CACHE/build.log" | sed 's/^/    /'
docker image prune -f >/dev/null  # the layers of earlier builds: the cache keeps only what the images use
say "images built in $(( $(date +%s) - build_started )) s"
docker images --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -v '<none>'

say "bringing the stack up …"
compose up -d --no-build 2>&1 | sed 's/^/    /'
export LOOKALIKE_STACK_FILE=$RUN/stack.yml
.venv/bin/python -m pytest -q -p no:cacheprovider tests/stack "$@"
