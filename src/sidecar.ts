import { randomBytes } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { EntryCache } from './cache/entries';
import { EventHub } from './cache/event-hub';
import { L1Cache } from './cache/l1';
import { Tiers } from './cache/tiers';
import type { Config } from './config';
import { SessionStore } from './context/sessions';
import { WorkerTokenCounter } from './context/token-counter';
import { ContextCacheService } from './gen/contextcache/v1/context_cache';
import { DistributedLocks } from './locks/distributed-locks';
import type { Logger } from './log';
import { AdminServer } from './ops/admin-server';
import { HealthReporter } from './ops/health';
import type { Metrics } from './ops/metrics';
import type * as MetricsModule from './ops/metrics';
import { startTracing, type Tracing } from './ops/tracing';
import { ValueCodec } from './redis/codec';
import { CLUSTER_BUCKETS, KeySpace } from './redis/keys';
import type * as LockMastersModule from './redis/lock-masters';
import type { RedisTier } from './redis/shared';
import type * as SharedModule from './redis/shared';
import { AuthToken, warnIfOpenToNetwork } from './server/auth';
import { cacheHandlers } from './server/cache-handlers';
import { CallTracker } from './server/calls';
import { contextHandlers } from './server/context-handlers';
import { acceptPreEncoded, decodeStrictly } from './server/encoding';
import { GrpcServer, HEALTH_SERVICE_CACHE, HEALTH_SERVICE_OVERALL } from './server/grpc-server';
import { lockHandlers } from './server/lock-handlers';
import { addReflection, REFLECTION_SERVICES } from './server/reflection';
import { contextCacheService } from './server/service';
import { SidecarStats } from './server/stats';
import { RequestValidator } from './server/validation';
import { WatchFanout, type WatchCounters } from './server/watch';
import { VERSION } from './version';


/*
 * Parts loaded only when the configuration needs them, so that a sidecar
 * pays in memory for what it runs: the Redis side (ioredis, the Redlock
 * library: ~30 MiB of RSS) only with Redis or lock masters configured; the
 * metrics registry (prom-client: ~20 MiB) only with the admin port on.
 */
interface OptionalParts {
  shared: typeof SharedModule | undefined;
  lockMasters: typeof LockMastersModule | undefined;
  metrics: typeof MetricsModule | undefined;
}

async function loadOptionalParts(config: Config): Promise<OptionalParts> {
  const [shared, lockMasters, metrics] = await Promise.all([
    config.redis === undefined ? undefined : import('./redis/shared.js'),
    config.redis === undefined && config.lockRedis === undefined ? undefined : import('./redis/lock-masters.js'),
    config.adminListen === undefined ? undefined : import('./ops/metrics.js'),
  ]);
  return { shared, lockMasters, metrics };
}

/**
 * The composition root: builds every part from the configuration, starts
 * them in order, and closes them in reverse. `close()` is idempotent and is
 * what SIGTERM runs. Wiring only: what each part does is in its own file.
 */
export class Sidecar {
  readonly sidecarId = `${process.pid.toString(36)}-${randomBytes(4).toString('hex')}`;
  readonly l1: L1Cache;
  /** The write path: coherence mode, generation, leases, counters. */
  readonly tiers: Tiers;
  readonly entries: EntryCache;
  readonly sessions: SessionStore;
  /** Counts tokens in a worker thread, started on the first count. */
  readonly tokenCounter = new WorkerTokenCounter();
  readonly events = new EventHub();
  readonly codec: ValueCodec;
  /** The Redis side; undefined when L1-only. */
  readonly redis: RedisTier | undefined;
  /** Distributed locks: on CONTEXT_CACHE_LOCK_REDIS_URLS, else on the main Redis link, else refused (L1-only). */
  readonly locks: DistributedLocks;
  readonly watchCounters: WatchCounters = { open: 0, delivered: 0, dropped: 0 };
  /** The Watch streams' fan-out (bounded in streams and bytes). */
  readonly watch: WatchFanout;
  /** Prometheus metrics; undefined with the admin port off (nothing would read them). */
  readonly metrics: Metrics | undefined;
  private readonly admin: AdminServer | undefined;
  private readonly calls: CallTracker;
  private readonly grpc: GrpcServer;
  private readonly health: HealthReporter;
  /** The bearer token callers must present (CONTEXT_CACHE_AUTH_TOKEN_FILE), reloaded on change; undefined: off. */
  private readonly auth: AuthToken | undefined;
  /** OpenTelemetry (OTEL_* variables); undefined: off, and nothing of it is loaded. */
  private tracing: Tracing | undefined;
  private closing: Promise<void> | undefined;
  private address: string | undefined;

  private constructor(
    readonly config: Config,
    private readonly log: Logger,
    parts: OptionalParts,
  ) {
    // On a Cluster, generic entries are spread over buckets (keys.ts); one server needs one.
    const keys = new KeySpace(config.namespace, config.redis?.topology.kind === 'cluster' ? CLUSTER_BUCKETS : 1);
    this.codec = new ValueCodec(config.compressionThreshold);
    this.l1 = new L1Cache(config.l1MaxBytes);
    this.redis = config.redis === undefined ? undefined : new parts.shared!.RedisTier(config, keys, this.codec, this.sidecarId, log);
    this.tiers = new Tiers(this.l1, this.redis, this.events, this.sidecarId, log, { degradedMaxAgeMs: config.degradedMaxAgeMs });
    this.entries = new EntryCache(this.tiers, this.redis?.entries);
    this.sessions = new SessionStore(this.tiers, this.redis?.sessions, config.defaultTtlMs, this.tokenCounter);
    this.events.onListenerError = (error) => log.error({ err: error }, 'an event listener failed; the event was still delivered to the others');
    const lockMasters = parts.lockMasters?.createLockMasters(config, this.redis, keys, this.sidecarId, log);
    this.locks = new DistributedLocks(lockMasters, log);

    this.calls = new CallTracker(log);
    this.auth = config.auth === undefined ? undefined : new AuthToken(config.auth, log);
    this.grpc = new GrpcServer({ listen: config.listen, healthListen: config.healthListen, maxMessageBytes: config.maxMessageBytes,
      auth: this.auth,
      // Refused before any handler runs: counted here, under the code they got, with no duration to speak of.
      onAuthRefused: (method) => this.metrics?.observeRpc(method, status.UNAUTHENTICATED, 0),
    });
    this.health = new HealthReporter((service, status) => this.grpc.setHealth(service, status));
    const stats = new SidecarStats({
      namespace: config.namespace,
      sidecarId: this.sidecarId,
      l1: this.l1,
      tiers: this.tiers,
      codec: this.codec,
      redis: this.redis,
      watch: this.watchCounters,
      locks: this.locks,
    });
    const healthStatuses = () => this.grpc.healthStatuses();
    if (config.adminListen !== undefined) {
      const metrics = (this.metrics = new parts.metrics!.Metrics(() => stats.snapshot(), this.events, this.sidecarId, healthStatuses));
      this.calls.onCallEnd = (method, code, seconds) => metrics.observeRpc(method, code, seconds);
      if (this.redis) this.redis.link.latency.onSample = (us) => metrics.redisDuration.observe(us / 1e6);
      this.admin = new AdminServer(config.adminListen, metrics, healthStatuses, log);
    }

    const validate = new RequestValidator(config);
    const watch = (this.watch = new WatchFanout(this.events, {
      validate,
      sidecarId: this.sidecarId,
      subscribed: () => this.tiers.mode === 'coherent',
      coherent: () => this.tiers.mode === 'coherent' || this.tiers.mode === 'l1-only',
      bufferBytes: config.watchBufferBytes,
      totalBufferBytes: config.watchTotalBufferBytes,
      maxStreams: config.watchMaxStreams,
      resumeBufferBytes: config.watchResumeBufferBytes,
      counters: this.watchCounters,
      onError: (error) => log.error({ err: error }, 'delivering a Watch event failed'),
    }));
    this.sessions.nodeWanted = (sessionId) => watch.wantsSession(sessionId);
    this.tiers.onModeChange(() => watch.coherenceChanged());
    const service = contextCacheService({
      calls: this.calls,
      cache: cacheHandlers({ entries: this.entries, validate, calls: this.calls }),
      context: contextHandlers({ sessions: this.sessions, validate, calls: this.calls, defaultTokenizer: config.tokenizer }),
      locks: lockHandlers({ calls: this.calls, locks: this.locks, validate, log }),
      watch,
      stats,
    });
    this.grpc.server.addService(decodeStrictly(acceptPreEncoded(ContextCacheService, service)), service);
    addReflection(this.grpc.server, [HEALTH_SERVICE_CACHE, 'grpc.health.v1.Health', ...REFLECTION_SERVICES]);
  }

  static async start(config: Config, log: Logger): Promise<Sidecar> {
    const sidecar = new Sidecar(config, log, await loadOptionalParts(config));
    if (config.tracing !== undefined) sidecar.trace(await startTracing(config.tracing, { sidecarId: sidecar.sidecarId, namespace: config.namespace, version: VERSION }, log));
    try {
      sidecar.address = await sidecar.grpc.start();
      try {
        await sidecar.admin?.start();
      } catch (error) {
        await sidecar.grpc.stop(0);
        throw error;
      }
    } catch (error) {
      await sidecar.tracing?.close();
      throw error;
    }
    sidecar.grpc.setHealth(HEALTH_SERVICE_OVERALL, 'SERVING');
    sidecar.grpc.setHealth(HEALTH_SERVICE_CACHE, 'SERVING');
    if (sidecar.redis !== undefined) {
      sidecar.health.watchRedis(sidecar.redis);
      sidecar.redis.start();
    }
    sidecar.health.watchLocks(sidecar.locks);
    sidecar.locks.start();
    log.info(
      {
        address: sidecar.address,
        healthAddress: sidecar.grpc.healthAddress,
        adminAddress: sidecar.admin?.address ?? 'off',
        namespace: config.namespace,
        sidecarId: sidecar.sidecarId,
        l1MaxBytes: config.l1MaxBytes,
        redis: config.redis?.describe ?? 'none',
        auth: config.auth === undefined ? 'off' : 'bearer token',
      },
      'sidecar listening',
    );
    warnIfOpenToNetwork(config, log);
    sidecar.auth?.start();
    if (config.redis === undefined) {
      log.warn('running L1-only: REDIS_URL and REDIS_HOST are not set, so nothing is shared with other sidecars');
    }
    return sidecar;
  }

  /** Hooks tracing into the call tracker, the Redis link and the lease manager. */
  private trace(tracing: Tracing): void {
    this.tracing = tracing;
    this.calls.tracer = tracing.calls;
    this.tiers.leases.tracer = tracing.work;
    if (this.redis !== undefined) this.redis.link.tracer = tracing.work;
  }

  /** Exports every span ended so far; nothing when tracing is off. */
  async flushTraces(): Promise<void> {
    await this.tracing?.flush();
  }

  /** The address clients dial: host:port with the real port, or unix:/path. */
  get listenAddress(): string {
    if (this.address === undefined) throw new Error('Sidecar is not started');
    return this.address;
  }

  /** The HTTP admin address (with the real port), unless it is off. */
  get adminAddress(): string | undefined {
    return this.admin?.address;
  }

  /** The health-only address, when CONTEXT_CACHE_HEALTH_LISTEN is set. */
  get healthAddress(): string | undefined {
    return this.grpc.healthAddress;
  }

  /**
   * Graceful shutdown: health turns NOT_SERVING, new calls are refused,
   * streams end with UNAVAILABLE, calls in flight get the grace period, then
   * everything closes.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const started = Date.now();
    this.log.info({ graceMs: this.config.shutdownGraceMs }, 'shutting down');
    this.health.stop();
    this.grpc.setHealth(HEALTH_SERVICE_OVERALL, 'NOT_SERVING');
    this.grpc.setHealth(HEALTH_SERVICE_CACHE, 'NOT_SERVING');
    this.calls.beginDrain();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.calls.idle(), new Promise<void>((resolve) => (timer = setTimeout(resolve, this.config.shutdownGraceMs)))]);
    clearTimeout(timer);
    // Only streams can be left now (health watches, reflection); they got NOT_SERVING or
    // UNAVAILABLE already, so they get a moment to close on their own, then are cut.
    const remainingMs = Math.max(0, this.config.shutdownGraceMs - (Date.now() - started));
    await this.grpc.stop(Math.min(remainingMs, 500));
    await this.auth?.close();
    await this.admin?.close();
    // Before the links close: releases the locks of HoldLock streams (ended above) and closes dedicated lock links.
    await this.locks.close();
    this.tiers.close();
    await this.tokenCounter.close();
    await this.redis?.close();
    // Last: the spans of the calls that finished during the grace go out too.
    await this.tracing?.close();
    this.l1.clear();
    this.log.info({ tookMs: Date.now() - started }, 'shutdown complete');
  }
}
