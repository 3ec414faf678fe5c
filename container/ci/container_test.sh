#!/usr/bin/env bash
# The container test (run by .ci/run after the fast suite; needs root, as CI is).
#
# Builds the image from the project's Dockerfile with podman, on a local base image that
# brings torch (the only change from what users build: BASE_IMAGE, and DOWNLOAD_WEIGHTS=false
# since there is no network for weights here), then drives it as users do:
#   - `podman run IMAGE train` / `podman run IMAGE serve` (docker-run style), and
#   - the SageMaker Python SDK 2.x local mode (Estimator.fit, deploy, predict, delete_endpoint)
#     through podman's Docker-compatible API and Debian's docker-compose;
# see container/ci/test_image.py. Exits non-zero on any failure; never skips.
#
# `container_test.sh --build-only` stops after building the image.
# Environment: SEGCONTAINER_CI_CACHE (default /var/cache/segcontainer-ci): where the base
# image recipe's downloads go. The base image itself stays in podman's storage, tagged with a
# hash of its recipe, and is reused while the machine keeps it.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
START=$SECONDS

IMAGE=localhost/segcontainer:ci
CACHE=${SEGCONTAINER_CI_CACHE:-/var/cache/segcontainer-ci}
RUN_DIR=/run/segcontainer-ci # the API socket and the service's PID: found again by a later run
SOCK=$RUN_DIR/podman.sock
SERVICE_PID_FILE=$RUN_DIR/podman-service.pid
export CONTAINERS_CONF=$REPO/container/ci/containers.conf
export DEBIAN_FRONTEND=noninteractive
export SAGEMAKER_SUPPRESS_V2_WARNING=1

# The base image's recipe: a Debian root plus the pinned torch pair from wheels.
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=http://deb.debian.org/debian
DEBIAN_INCLUDE=python3,python3-pip,ca-certificates
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1

log() { printf '[container-test %s +%ss] %s\n' "$(date +%T)" "$((SECONDS - START))" "$*"; }

# retry CMD...: network steps get TRIES (default 4) tries with growing pauses.
retry() {
  local attempt=1
  until "$@"; do
    if ((attempt >= ${TRIES:-4})); then
      log "failed after $attempt tries: $*"
      return 1
    fi
    log "try $attempt failed, retrying in $((attempt * 15)) s: $*"
    sleep $((attempt * 15))
    attempt=$((attempt + 1))
  done
}

install_tools() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v docker >/dev/null || missing+=(podman-docker)
  command -v curl >/dev/null || missing+=(curl)
  command -v ss >/dev/null || missing+=(iproute2)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    retry apt-get update -qq
    retry apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  podman --version
  docker-compose --version
}

# The project's venv with the SDK (sagemaker>=2,<3 is in the test extra): .ci/run made it with
# the README's test command; made here the same way when this script runs alone.
ensure_venv() {
  if ! .venv/bin/python -c 'import sagemaker, pytest' 2>/dev/null; then
    log "making .venv"
    python3 -m venv .venv
    retry .venv/bin/pip install -q -c constraints.txt -e '.[test]'
  fi
  .venv/bin/python -c 'import sagemaker; print("sagemaker", sagemaker.__version__)'
}

stop_service() {
  local pid
  if [ -f "$SERVICE_PID_FILE" ]; then
    pid=$(cat "$SERVICE_PID_FILE")
    # Only the podman API service this script started (the PID file may be stale).
    if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "podman system service"; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$SERVICE_PID_FILE"
  fi
  rm -f "$SOCK"
}

# Containers of this image (docker-run style and the SDK's compose services), the SDK's
# compose network, the API service of an earlier run.
clean_leftovers() {
  local ids
  ids=$(podman ps -a -q --filter "ancestor=$IMAGE" 2>/dev/null || true)
  if [ -n "$ids" ]; then
    log "removing containers of $IMAGE: $(echo "$ids" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    podman rm -f -t 5 $ids >/dev/null || true
  fi
  if podman network exists sagemaker-local 2>/dev/null; then
    podman network rm -f sagemaker-local >/dev/null || true
  fi
  stop_service
}

on_exit() {
  local status=$?
  set +e
  if ((status != 0)) && [ -n "${SERVICE_STARTED:-}" ] && [ -s "$RUN_DIR/podman-service.log" ]; then
    log "podman API service log (last 40 lines):"
    tail -n 40 "$RUN_DIR/podman-service.log"
  fi
  clean_leftovers
  if [ -n "${WORK:-}" ]; then
    rm -rf "$WORK"
  fi
  log "finished with status $status"
  exit "$status"
}

build_base() {
  local key os_image base_image root wheels
  key=$(
    {
      printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$DEBIAN_INCLUDE" "$TORCH_VERSION" "$TORCHVISION_VERSION"
      cat container/ci/base.Containerfile
      cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true
    } | sha256sum | cut -c1-16
  )
  base_image=localhost/segcontainer-ci-base:$key
  BASE_IMAGE=$base_image
  if podman image exists "$base_image"; then
    log "base image $base_image cached"
    return
  fi
  log "building base image $base_image"
  need_disk 16 # wheels, the install's container layer and the committed layer, at once
  python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), "host Python must match the base (3.11)"'
  mkdir -p "$CACHE"
  root=$CACHE/root
  rm -rf "$root" "$CACHE/wheels"
  retry debootstrap --variant=minbase --include="$DEBIAN_INCLUDE" "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 30 "$CACHE/debootstrap.log"; return 1; }
  # The machine's extra certificate authorities (this workplace reaches PyPI through a proxy),
  # so that pip in the image build trusts what pip on the host trusts.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  os_image=localhost/segcontainer-ci-os:$key
  tar -C "$root" -c . | podman import - "$os_image" >/dev/null
  rm -rf "$root"
  wheels=$CACHE/wheels
  retry python3 -m pip download -q --only-binary=:all: -d "$wheels" \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" >"$CACHE/pip-download.log" 2>&1 ||
    { tail -n 30 "$CACHE/pip-download.log"; return 1; }
  podman build --network none --volume "$wheels:/wheels:ro" \
    --build-arg "OS_IMAGE=$os_image" --build-arg "TORCH_VERSION=$TORCH_VERSION" \
    --build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION" \
    -t "$base_image" -f container/ci/base.Containerfile container/ci
  podman rmi "$os_image" >/dev/null
  rm -rf "$wheels"
  # Bases of earlier recipes.
  podman images --format '{{.Repository}}:{{.Tag}}' localhost/segcontainer-ci-base |
    grep -v ":$key\$" | xargs -r podman rmi >/dev/null 2>&1 || true
  log "base image built"
}

build_image() {
  local old new
  need_disk 3
  old=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  log "building $IMAGE from Dockerfile on $BASE_IMAGE"
  # --format docker: OCI image configs have no SHELL. Two tries: the build reaches the network.
  TRIES=2 retry podman build --format docker --network host \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg DOWNLOAD_WEIGHTS=false \
    -t "$IMAGE" -f Dockerfile .
  new=$(podman image inspect --format '{{.Id}}' "$IMAGE")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  log "image $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=si --suffix=B) \
(base $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | numfmt --to=si --suffix=B))"
  podman history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-150
}

start_service() {
  mkdir -p "$RUN_DIR"
  podman system service --time=0 "unix://$SOCK" >"$RUN_DIR/podman-service.log" 2>&1 &
  echo $! >"$SERVICE_PID_FILE"
  SERVICE_STARTED=1
  for _ in $(seq 100); do
    [ -S "$SOCK" ] && break
    sleep 0.2
  done
  [ -S "$SOCK" ] || { log "podman API socket did not appear"; return 1; }
  export DOCKER_HOST=unix://$SOCK
}

# need_disk GB: fail early, and say so, when podman's storage has less room than that.
need_disk() {
  local free
  mkdir -p /var/lib/containers
  free=$(df --output=avail -BG /var/lib/containers | tail -n 1 | tr -dc 0-9)
  if ((free < $1)); then
    log "only ${free} GB free under /var/lib/containers; this step needs about $1 GB"
    df -h /var/lib/containers /tmp
    return 1
  fi
}

# The SDK publishes the endpoint on 8080; something that is not ours there is reported.
check_port() {
  if ss -ltnH 'sport = :8080' | grep -q .; then
    log "port 8080 is in use by something other than this test's containers:"
    ss -ltnp 'sport = :8080'
    return 1
  fi
}

install_tools
ensure_venv
trap on_exit EXIT
clean_leftovers
build_base
build_image
if [ "${1:-}" = "--build-only" ]; then
  exit 0
fi
start_service
check_port
log "running the tests"
# Models, model.tar.gz files and the SDK's container_root go under WORK, removed on exit.
WORK=$(mktemp -d /tmp/segcontainer-ci.XXXXXX)
IMAGE=$IMAGE .venv/bin/python -m pytest -q -p no:cacheprovider --basetemp="$WORK/pytest" \
  container/ci/test_image.py
log "container test passed in $((SECONDS - START)) s"
