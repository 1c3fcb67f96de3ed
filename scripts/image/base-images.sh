# shellcheck shell=bash
# The images the tests build on, made locally because no image registry is
# reachable: Debian bookworm from debootstrap, a stand-in for
# node:24-bookworm-slim, and Redis from Debian's redis-server. Sourced by
# scripts/image/test-image.sh after scripts/image/podman.sh; each image is
# built only when it is missing or its inputs changed.

IMAGE_WORK=${CONTEXT_CACHE_IMAGE_WORK:-/var/tmp/context-cache-image}
DEBIAN_IMAGE=localhost/debian:bookworm
NODE_STAND_IN=localhost/node:24-bookworm-slim
TEST_REDIS_IMAGE=localhost/context-cache-test-redis:7
IMAGE_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The Debian mirror apt is configured with (the only one this machine reaches).
debian_mirror() {
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
    awk '$2 == "bookworm" { print $1; exit }'
}

base_debian() {
  if podman image exists "$DEBIAN_IMAGE"; then
    echo "image: $DEBIAN_IMAGE exists"
    return 0
  fi
  local mirror rootfs
  mirror=$(debian_mirror)
  mirror=${mirror:-http://deb.debian.org/debian/}
  rootfs="$IMAGE_WORK/debian-rootfs"
  echo "image: debootstrap --variant=minbase bookworm from $mirror"
  rm -rf "$rootfs" && mkdir -p "$IMAGE_WORK"
  if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$IMAGE_WORK/debootstrap.log" 2>&1; then
    tail -20 "$IMAGE_WORK/debootstrap.log" >&2
    return 1
  fi
  # What debian:bookworm-slim leaves out too: package lists and caches, docs, man pages, locales.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
  tar -C "$rootfs" -c . | podman import --quiet - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

# node:24-bookworm-slim as far as a build needs it (see node-stand-in.Containerfile).
base_node() {
  local repo=$1 node npm_version node_version ca id
  node="$repo/node_modules/node/bin/node"
  [ -x "$node" ] || { echo "image: $node is missing: run npm install first" >&2; return 1; }
  node_version=$("$node" --version | sed 's/^v//')
  npm_version=$(npm --version)
  ca=/etc/ssl/certs/ca-certificates.crt
  id="node-$node_version-npm-$npm_version-ca-$(sha256sum "$ca" | cut -c1-12)-$(sha256sum "$IMAGE_SCRIPTS/node-stand-in.Containerfile" | cut -c1-12)"
  if [ "$(podman image inspect --format '{{index .Labels "context-cache.stand-in"}}' "$NODE_STAND_IN" 2>/dev/null)" = "$id" ]; then
    echo "image: $NODE_STAND_IN exists (Node $node_version, npm $npm_version)"
    return 0
  fi
  echo "image: building $NODE_STAND_IN (Node $node_version, npm $npm_version)"
  local context="$IMAGE_WORK/node-stand-in"
  rm -rf "$context" && mkdir -p "$context/npm"
  cp "$node" "$context/node"
  cp "$ca" "$context/ca-certificates.crt"
  (cd "$context" && npm pack --silent "npm@$npm_version" >/dev/null && tar -xzf "npm-$npm_version.tgz" -C npm --strip-components=1 && rm "npm-$npm_version.tgz")
  podman build --quiet --file "$IMAGE_SCRIPTS/node-stand-in.Containerfile" \
    --build-arg "NODE_VERSION=$node_version" --build-arg "NPM_VERSION=$npm_version" --build-arg "STAND_IN_ID=$id" \
    --tag "$NODE_STAND_IN" "$context" >/dev/null
  rm -rf "$context"
}

base_redis() {
  local id
  id=$(sha256sum "$IMAGE_SCRIPTS/redis.Containerfile" | cut -c1-12)
  if [ "$(podman image inspect --format '{{index .Labels "context-cache.test-redis"}}' "$TEST_REDIS_IMAGE" 2>/dev/null)" = "$id" ]; then
    echo "image: $TEST_REDIS_IMAGE exists"
    return 0
  fi
  echo "image: building $TEST_REDIS_IMAGE (Debian's redis-server)"
  podman build --quiet --label "context-cache.test-redis=$id" --file "$IMAGE_SCRIPTS/redis.Containerfile" --tag "$TEST_REDIS_IMAGE" "$IMAGE_SCRIPTS" >/dev/null
}
