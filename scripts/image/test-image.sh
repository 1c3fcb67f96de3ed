#!/usr/bin/env bash
# `npm run test:image` (and .ci/run): the image built and run for real, and
# the testcontainers suite, on rootful podman from Debian's packages.
#
#   1. podman and its helpers (only what is missing), its containers.conf,
#      a container that runs;
#   2. the base images no registry can give us here: Debian bookworm
#      (debootstrap), a stand-in for node:24-bookworm-slim, Redis;
#   3. the project's Dockerfile, unchanged, with
#      --build-arg NODE_IMAGE=localhost/node:24-bookworm-slim;
#   4. test/image/ (vitest.image.config.mts) against that image;
#   5. suites of `npm test` with their Redis in containers through
#      testcontainers (TEST_REDIS=container: no fallback to processes).
#
# The podman API socket is the project's own (scripts/image/podman.sh), named
# by DOCKER_HOST for steps 4 and 5 only, and stopped at the end if this run
# started it: other `npm test` runs on the machine keep their redis-server
# processes. Each step is timed; the table is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
# shellcheck source=podman.sh
source scripts/image/podman.sh
# shellcheck source=base-images.sh
source scripts/image/base-images.sh

IMAGE=${CONTEXT_CACHE_IMAGE:-localhost/context-cache:test}
# Suites whose Redis runs in a container here: they kill, pause and restart it.
CONTAINER_SUITES=${CONTEXT_CACHE_CONTAINER_SUITES:-test/distributed}

TIMINGS=()
CURRENT_STEP=
step() {
  local name=$1 started elapsed
  shift
  CURRENT_STEP=$name
  started=$(date +%s.%N)
  "$@"
  elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  TIMINGS+=("$(printf '%-34s %7.1f s' "$name" "$elapsed")")
  CURRENT_STEP=
}

finish() {
  local status=$?
  podman_service_stop
  if [ ${#TIMINGS[@]} -gt 0 ]; then
    echo "image: times"
    printf '  %s\n' "${TIMINGS[@]}"
  fi
  if [ "$status" != 0 ]; then
    echo "image: FAILED${CURRENT_STEP:+ at step \"$CURRENT_STEP\"} (exit $status); the machine is left as it was apart from installed packages and images" >&2
  fi
  exit "$status"
}
trap finish EXIT

build_image() {
  podman build --quiet --build-arg "NODE_IMAGE=$NODE_STAND_IN" --tag "$IMAGE" . | tail -1
}

describe_image() {
  local bytes
  bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  echo "image: $IMAGE is $((bytes / 1000000)) MB ($bytes bytes); what is in it (MB):"
  podman run --rm --user 0 --entrypoint sh "$IMAGE" -c '
    set -- $(du -sm /usr/local/bin/node /usr/local/lib/node_modules /app/node_modules /app/dist | cut -f1)
    total=$(du -smx / | cut -f1)
    echo "  node binary $1, npm (from the base) $2, production node_modules $3, dist $4, the Debian base and the rest $((total - $1 - $2 - $3 - $4))"'
}

run_image_tests() {
  CONTEXT_CACHE_IMAGE=$IMAGE TEST_REDIS=container npx vitest run --config vitest.image.config.mts
}

run_container_suites() {
  # shellcheck disable=SC2086
  TEST_REDIS=container npx vitest run $CONTAINER_SUITES
}

step "podman (Debian packages)" podman_install
podman_configure
step "base image debian:bookworm" base_debian
step "a container runs" podman_smoke "$DEBIAN_IMAGE"
step "stand-in node:24-bookworm-slim" base_node "$REPO"
step "Redis image (Debian's redis-server)" base_redis
step "docker build of the Dockerfile" build_image
describe_image
step "podman API socket" podman_service_start
step "image tests (test/image)" run_image_tests
step "testcontainers: $CONTAINER_SUITES" run_container_suites
