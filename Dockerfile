# syntax=docker/dockerfile:1
#
# context-cache sidecar image. Three stages:
#   build      npm ci (all dependencies) + npm run build  ->  /app/dist
#   prod-deps  npm ci --omit=dev                          ->  /app/node_modules
#   runtime    dist + production node_modules + package.json, as a non-root user
#
#   docker build -t context-cache:0.1.0 .
#
# Pin the base image by digest in your own builds, e.g.
#   docker build --build-arg NODE_IMAGE=node:24-bookworm-slim@sha256:<digest> .
# test/deploy/dockerfile.test.ts replays these steps without a container
# engine; see deploy/README.md for which test covers which step.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
# Manifests first, so the dependency layer is reused while only src/ changes.
COPY package.json package-lock.json ./
# Installs the devDependencies too: typescript, and the `node` package whose
# install script package.json allows (allowScripts) for npm 11.
RUN --mount=type=cache,target=/root/.npm npm ci
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
# Type declarations, source maps and Markdown are never read at run time:
# dropped, they take 86 MB of production modules down to about 50 MB.
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev \
 && find node_modules -type f \( -name '*.d.ts' -o -name '*.d.mts' -o -name '*.d.cts' -o -name '*.map' -o -name '*.md' \) -delete

FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
# The API stays on loopback: containers in a pod share the network namespace,
# so the app container reaches 127.0.0.1:50051 and nothing outside the pod
# does. Only the health-only listener (grpc.health.v1, for kubelet gRPC
# probes) and the HTTP admin port (/metrics, /healthz, /readyz, for
# Prometheus) bind every interface. To publish the API with `docker run -p`,
# set CONTEXT_CACHE_LISTEN=0.0.0.0:50051 yourself: it has no authentication.
ENV CONTEXT_CACHE_LISTEN=127.0.0.1:50051 \
    CONTEXT_CACHE_HEALTH_LISTEN=0.0.0.0:50052 \
    CONTEXT_CACHE_ADMIN_LISTEN=0.0.0.0:50053
# glibc's allocator keeps what Node frees (one arena per thread, large
# buffers from the heap once the mmap threshold has risen), so a sidecar's
# RSS stays at its peak. Fewer arenas, a fixed mmap threshold and trimming
# give memory back: a 64 MiB L1 overfilled with 8 MiB values grows RSS by
# 2.16x its bound instead of 2.63x (`npm run bench -- l1-memory`, which runs
# the sidecar with these settings).
ENV MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=131072 \
    MALLOC_TRIM_THRESHOLD_=131072
# V8's young generation: Node 24 lets each semi-space grow well past 16 MiB
# on a large host, and under steady load the heap then holds ~190 MiB for
# ~50 MiB of live objects (test/ops/leak.test.ts); 16 MiB, V8's long-time
# default, keeps it near 100 MiB. The old space is sized by Node from the
# container's memory limit (cgroup); set --max-old-space-size here or in the
# pod to override.
ENV NODE_OPTIONS=--max-semi-space-size=16
# Owned by root and read-only to the process; package.json is read at run
# time for the version.
COPY package.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The image's `node` user, by number so that Kubernetes' runAsNonRoot can
# verify it without reading /etc/passwd.
USER 1000:1000
EXPOSE 50051 50052 50053
# Exec form: node is PID 1 and receives SIGTERM itself (graceful shutdown
# within CONTEXT_CACHE_SHUTDOWN_GRACE, then exit 0).
CMD ["node", "dist/main.js"]
