# shellcheck shell=bash
# A container engine for the image and testcontainers tests, made from
# Debian's packages: rootful podman behind a Docker-compatible API socket of
# the project's own (never /var/run/docker.sock, which would switch every
# other `npm test` on the machine to containers). Sourced by
# scripts/image/test-image.sh; every step is idempotent and does only what is
# missing.
#
# Two settings make podman 4.3 work on this machine kind (measured):
#   runtime = "runc"   crun fails: "cgroups in hybrid mode not supported"
#   default_ulimits    podman's own raise of RLIMIT_NOFILE fails with
#                      "setrlimit ... Operation not permitted"

PODMAN_DIR=${CONTEXT_CACHE_PODMAN_DIR:-/run/context-cache-podman}
PODMAN_SOCKET="$PODMAN_DIR/podman.sock"
PODMAN_PACKAGES=(podman runc uidmap fuse-overlayfs slirp4netns debootstrap)
export CONTAINERS_CONF="$PODMAN_DIR/containers.conf"
export DOCKER_HOST="unix://$PODMAN_SOCKET"
# testcontainers' resource reaper (ryuk) is an image that cannot be pulled here;
# every test stops what it starts instead.
export TESTCONTAINERS_RYUK_DISABLED=true

podman_missing_packages() {
  local package
  for package in "${PODMAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || echo "$package"
  done
}

podman_install() {
  local missing
  missing=$(podman_missing_packages | tr '\n' ' ')
  if [ -z "${missing// /}" ]; then
    echo "image: podman and its helpers are installed"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "image: missing Debian packages ($missing) and not root: install them with apt-get" >&2
    return 1
  fi
  echo "image: installing $missing(Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

podman_configure() {
  mkdir -p "$PODMAN_DIR"
  local wanted
  wanted=$(cat <<'CONF'
# Written by scripts/image/podman.sh; named by CONTAINERS_CONF, so no other
# podman user on the machine is affected.
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]

[engine]
runtime = "runc"
CONF
)
  if [ "$(cat "$CONTAINERS_CONF" 2>/dev/null)" != "$wanted" ]; then
    printf '%s\n' "$wanted" >"$CONTAINERS_CONF"
  fi
}

podman_socket_answers() {
  curl -fsS --max-time 2 --unix-socket "$PODMAN_SOCKET" http://podman/_ping >/dev/null 2>&1
}

# Starts `podman system service` on the project's socket unless one answers
# there already. Sets PODMAN_SERVICE_PID when this call started it.
PODMAN_SERVICE_PID=
podman_service_start() {
  if podman_socket_answers; then
    echo "image: podman API already answers on $PODMAN_SOCKET"
    return 0
  fi
  rm -f "$PODMAN_SOCKET"
  setsid podman system service --time=0 "unix://$PODMAN_SOCKET" >"$PODMAN_DIR/service.log" 2>&1 </dev/null &
  PODMAN_SERVICE_PID=$!
  echo "$PODMAN_SERVICE_PID" >"$PODMAN_DIR/service.pid"
  local deadline=$((SECONDS + 30))
  until podman_socket_answers; do
    if ! kill -0 "$PODMAN_SERVICE_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "image: podman system service did not come up on $PODMAN_SOCKET:" >&2
      tail -20 "$PODMAN_DIR/service.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "image: podman API on $DOCKER_HOST (pid $PODMAN_SERVICE_PID)"
}

# Stops the service only if this shell started it.
podman_service_stop() {
  [ -n "$PODMAN_SERVICE_PID" ] || return 0
  kill "$PODMAN_SERVICE_PID" 2>/dev/null || true
  wait "$PODMAN_SERVICE_PID" 2>/dev/null || true
  rm -f "$PODMAN_SOCKET" "$PODMAN_DIR/service.pid"
  PODMAN_SERVICE_PID=
}

# A container that runs: catches a broken runtime or network setup before any build.
podman_smoke() {
  local image=$1
  podman run --rm --network none "$image" true
}
