import { randomBytes } from 'node:crypto';
import { Bus } from './cache/bus';
import { ValueCodec } from './cache/codec';
import { EventHub } from './cache/events';
import { L1Cache } from './cache/l1';
import { KeySpace, L2Store } from './cache/l2';
import { TieredCache, type SharedTier } from './cache/tiered-cache';
import type { Config } from './config';
import { ContextCacheService } from './gen/contextcache/v1/context_cache';
import type { Logger } from './log';
import { linkOptions, RedisLink } from './redis/connection';
import { DataLossDetector } from './redis/data-loss';
import { Mutex } from './redis/mutex';
import { AdminServer } from './ops/admin-server';
import { Metrics } from './ops/metrics';
import { CallTracker } from './server/calls';
import { contextCacheService } from './server/context-cache-service';
import { contextHandlers } from './server/context-handlers';
import { SessionStore } from './context/session-store';
import { SessionKeys, SessionRedis } from './context/session-redis';
import { DistributedLocks } from './locks/distributed-locks';
import { lockHandlers } from './server/lock-handlers';
import { GrpcServer, HEALTH_SERVICE_CACHE, HEALTH_SERVICE_OVERALL } from './server/grpc-server';
import { addReflection, REFLECTION_SERVICES, ReflectionIndex } from './server/reflection';
import { SidecarStats } from './server/stats';
import { RequestValidator } from './server/validation';
import { WatchFanout, type WatchCounters } from './server/watch';
import { acceptPreEncoded } from './server/encoding';

/** Health names of the components; the overall service stays SERVING while they are down. */
export const HEALTH_COMPONENT_REDIS = 'contextcache.v1.ContextCache/redis';
export const HEALTH_COMPONENT_PUBSUB = 'contextcache.v1.ContextCache/pubsub';
/** SERVING while a majority of the lock masters is connected. */
export const HEALTH_COMPONENT_LOCKS = 'contextcache.v1.ContextCache/locks';

/** The Redis side of a sidecar: two connections, the L2 store, the bus. */
class SharedParts implements SharedTier {
  readonly link: RedisLink;
  readonly subscriber: RedisLink;
  readonly l2: L2Store;
  readonly bus: Bus;
  readonly dataLoss: DataLossDetector;
  readonly leaseMutex: Mutex;
  readonly sessions: SessionRedis;

  constructor(config: Config, keys: KeySpace, codec: ValueCodec, sidecarId: string, log: Logger) {
    const options = linkOptions(config);
    this.link = new RedisLink('commands', config.redis!, options, log);
    this.subscriber = new RedisLink('subscriber', config.redis!, options, log);
    this.l2 = new L2Store(this.link.client, keys, codec, sidecarId, (key, error) =>
      log.warn({ key, err: error.message }, 'unreadable value in Redis; deleted and treated as a miss'),
      this.link.latency,
    );
    this.bus = new Bus(this.subscriber, keys.channel, sidecarId, log, config.pubsubHeartbeatMs);
    this.dataLoss = new DataLossDetector(this.link, keys.epoch, log, config.pubsubHeartbeatMs);
    this.leaseMutex = new Mutex([this.link.client], config.redis!.db);
    this.sessions = new SessionRedis(this.link.client, new SessionKeys(keys), codec, sidecarId, (sessionId, error) =>
      log.warn({ sessionId, err: error.message }, 'unreadable session in Redis; deleted and treated as a miss'),
      this.link.latency,
    );
  }

  start(): void {
    this.link.start();
    this.bus.start();
    this.dataLoss.start();
  }

  async close(): Promise<void> {
    this.bus.stop();
    this.dataLoss.stop();
    await Promise.all([this.subscriber.close(), this.link.close()]);
  }
}

/**
 * The composition root: builds every part from the configuration, starts
 * them in order, and closes them in reverse. `close()` is idempotent and is
 * what SIGTERM runs.
 */
export class Sidecar {
  readonly sidecarId = `${process.pid.toString(36)}-${randomBytes(4).toString('hex')}`;
  readonly l1: L1Cache;
  readonly cache: TieredCache;
  readonly events = new EventHub();
  readonly codec: ValueCodec;
  readonly shared: SharedParts | undefined;
  readonly sessions: SessionStore;
  /** Distributed locks: on CONTEXT_CACHE_LOCK_REDIS_URLS, else on the main Redis link, else refused (L1-only). */
  readonly locks: DistributedLocks;
  readonly watchCounters: WatchCounters = { open: 0, delivered: 0, dropped: 0 };
  readonly metrics: Metrics;
  private readonly admin: AdminServer | undefined;
  private readonly calls: CallTracker;
  private readonly grpc: GrpcServer;
  private closing: Promise<void> | undefined;
  private address: string | undefined;

  private constructor(
    readonly config: Config,
    private readonly log: Logger,
  ) {
    const keys = new KeySpace(config.namespace);
    this.codec = new ValueCodec(config.compressionThreshold);
    this.l1 = new L1Cache(config.l1MaxBytes);
    this.shared = config.redis === undefined ? undefined : new SharedParts(config, keys, this.codec, this.sidecarId, log);
    this.cache = new TieredCache(this.l1, this.shared, this.events, this.sidecarId, log);
    this.shared?.dataLoss.on('data-lost', () => this.cache.resync('redis-data-lost'));
    this.events.onListenerError = (error) => log.error({ err: error }, 'an event listener failed; the event was still delivered to the others');
    this.locks = DistributedLocks.create(config, this.shared?.link, keys, log);
    this.sessions = new SessionStore(this.cache, this.shared?.sessions, config.defaultTtlMs);
    this.calls = new CallTracker(log);
    this.grpc = new GrpcServer({ listen: config.listen, healthListen: config.healthListen, maxMessageBytes: config.maxMessageBytes });
    const stats = new SidecarStats({
      namespace: config.namespace,
      sidecarId: this.sidecarId,
      l1: this.l1,
      cache: this.cache,
      codec: this.codec,
      shared: this.shared,
      watch: this.watchCounters,
      locks: this.locks,
    });
    const health = () => this.grpc.healthStatuses();
    this.metrics = new Metrics(() => stats.snapshot(), this.events, this.sidecarId, health);
    this.calls.onCallEnd = (method, code, seconds) => this.metrics.rpcDuration.observe({ method, code: String(code) }, seconds);
    if (this.shared) this.shared.link.latency.onSample = (us) => this.metrics.redisDuration.observe(us / 1e6);
    this.admin = config.adminListen === undefined ? undefined : new AdminServer(config.adminListen, this.metrics, health, log);
    const validate = new RequestValidator(config);
    this.grpc.server.addService(
      acceptPreEncoded(ContextCacheService, ['watch', 'buildContext', 'getSessionNodes']),
      contextCacheService({
        cache: this.cache,
        validate,
        calls: this.calls,
        stats,
        watch: new WatchFanout(this.events, {
          validate,
          sidecarId: this.sidecarId,
          subscribed: () => this.cache.mode === 'coherent',
          bufferLimit: config.watchBuffer,
          counters: this.watchCounters,
          onError: (error) => log.error({ err: error }, 'delivering a Watch event failed'),
        }),
        locks: lockHandlers({ calls: this.calls, locks: this.locks, validate, log }),
        context: contextHandlers({ sessions: this.sessions, validate, calls: this.calls, maxKeysPerCall: config.maxKeysPerCall }),
      }),
    );
    addReflection(this.grpc.server, new ReflectionIndex([HEALTH_SERVICE_CACHE, 'grpc.health.v1.Health', ...REFLECTION_SERVICES]));
  }

  static async start(config: Config, log: Logger): Promise<Sidecar> {
    const sidecar = new Sidecar(config, log);
    sidecar.address = await sidecar.grpc.start();
    try {
      await sidecar.admin?.start();
    } catch (error) {
      await sidecar.grpc.stop(0);
      throw error;
    }
    sidecar.grpc.setHealth(HEALTH_SERVICE_OVERALL, 'SERVING');
    sidecar.grpc.setHealth(HEALTH_SERVICE_CACHE, 'SERVING');
    const { shared } = sidecar;
    if (shared !== undefined) {
      const report = () => {
        if (sidecar.closing) return;
        sidecar.grpc.setHealth(HEALTH_COMPONENT_REDIS, shared.link.connected ? 'SERVING' : 'NOT_SERVING');
        sidecar.grpc.setHealth(HEALTH_COMPONENT_PUBSUB, shared.bus.subscribed ? 'SERVING' : 'NOT_SERVING');
      };
      report();
      shared.link.on('state', report);
      shared.bus.on('subscribed', report);
      shared.bus.on('unsubscribed', report);
      shared.start();
    }
    if (sidecar.locks.configured) {
      const reportLocks = () => {
        if (!sidecar.closing) sidecar.grpc.setHealth(HEALTH_COMPONENT_LOCKS, sidecar.locks.ready ? 'SERVING' : 'NOT_SERVING');
      };
      reportLocks();
      sidecar.locks.onStateChange(reportLocks);
    }
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
      },
      'sidecar listening',
    );
    if (config.redis === undefined) {
      log.warn('running L1-only: REDIS_URL and REDIS_HOST are not set, so nothing is shared with other sidecars');
    }
    return sidecar;
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
    await this.admin?.close();
    // Before the links close: releases the locks of HoldLock streams (ended above) and closes dedicated lock links.
    await this.locks.close();
    await this.shared?.close();
    this.l1.clear();
    this.log.info({ tookMs: Date.now() - started }, 'shutdown complete');
  }
}
