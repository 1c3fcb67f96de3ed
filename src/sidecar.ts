import { randomBytes } from 'node:crypto';
import { L1Cache } from './cache/l1';
import { TieredCache } from './cache/tiered-cache';
import type { Config } from './config';
import { ContextCacheService } from './gen/contextcache/v1/context_cache';
import type { Logger } from './log';
import { CallTracker } from './server/calls';
import { contextCacheService } from './server/context-cache-service';
import { GrpcServer, HEALTH_SERVICE_CACHE, HEALTH_SERVICE_OVERALL } from './server/grpc-server';
import { addReflection, REFLECTION_SERVICES, ReflectionIndex } from './server/reflection';
import { SidecarStats } from './server/stats';
import { RequestValidator } from './server/validation';

/**
 * The composition root: builds every part from the configuration, starts
 * them in order, and closes them in reverse. `close()` is idempotent and is
 * what SIGTERM runs.
 */
export class Sidecar {
  readonly sidecarId = `${process.pid.toString(36)}-${randomBytes(4).toString('hex')}`;
  readonly l1: L1Cache;
  readonly cache: TieredCache;
  private readonly calls: CallTracker;
  private readonly grpc: GrpcServer;
  private closing: Promise<void> | undefined;
  private address: string | undefined;

  private constructor(
    readonly config: Config,
    private readonly log: Logger,
  ) {
    this.l1 = new L1Cache(config.l1MaxBytes);
    this.cache = new TieredCache(this.l1);
    this.calls = new CallTracker(log);
    this.grpc = new GrpcServer({ listen: config.listen, healthListen: config.healthListen, maxMessageBytes: config.maxMessageBytes });
    const stats = new SidecarStats({ namespace: config.namespace, sidecarId: this.sidecarId, l1: this.l1, calls: this.calls });
    this.grpc.server.addService(
      ContextCacheService,
      contextCacheService({ cache: this.cache, validate: new RequestValidator(config), calls: this.calls, stats }),
    );
    addReflection(this.grpc.server, new ReflectionIndex([HEALTH_SERVICE_CACHE, 'grpc.health.v1.Health', ...REFLECTION_SERVICES]));
  }

  static async start(config: Config, log: Logger): Promise<Sidecar> {
    const sidecar = new Sidecar(config, log);
    sidecar.address = await sidecar.grpc.start();
    sidecar.grpc.setHealth(HEALTH_SERVICE_OVERALL, 'SERVING');
    sidecar.grpc.setHealth(HEALTH_SERVICE_CACHE, 'SERVING');
    log.info(
      { address: sidecar.address, healthAddress: sidecar.grpc.healthAddress, namespace: config.namespace, sidecarId: sidecar.sidecarId, l1MaxBytes: config.l1MaxBytes },
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
    const remainingMs = Math.max(0, this.config.shutdownGraceMs - (Date.now() - started));
    await this.grpc.stop(remainingMs);
    this.l1.clear();
    this.log.info({ tookMs: Date.now() - started }, 'shutdown complete');
  }
}
