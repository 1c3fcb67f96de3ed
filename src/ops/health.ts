import type { ServingStatus } from '../server/health-service';
import type { DistributedLocks } from '../locks/distributed-locks';
import type { RedisTier } from '../redis/shared';

/** Health names of the components; the overall service stays SERVING while they are down. */
export const HEALTH_COMPONENT_REDIS = 'contextcache.v1.ContextCache/redis';
export const HEALTH_COMPONENT_PUBSUB = 'contextcache.v1.ContextCache/pubsub';
/** SERVING while a majority of the lock masters is connected. */
export const HEALTH_COMPONENT_LOCKS = 'contextcache.v1.ContextCache/locks';

/**
 * Keeps the component health statuses in step with the parts they describe:
 * the Redis command link, the Pub/Sub subscription, the lock masters. Each
 * is reported once at start and again on every change, until `stop()`
 * (shutdown turns everything NOT_SERVING and nothing may flip it back).
 */
export class HealthReporter {
  private stopped = false;

  constructor(private readonly set: (service: string, status: ServingStatus) => void) {}

  watchRedis(redis: RedisTier): void {
    const report = () => {
      if (this.stopped) return;
      this.set(HEALTH_COMPONENT_REDIS, redis.link.connected ? 'SERVING' : 'NOT_SERVING');
      this.set(HEALTH_COMPONENT_PUBSUB, redis.bus.subscribed ? 'SERVING' : 'NOT_SERVING');
    };
    report();
    redis.link.on('state', report);
    redis.bus.onChange(report);
  }

  watchLocks(locks: DistributedLocks): void {
    if (!locks.configured) return;
    const report = () => {
      if (!this.stopped) this.set(HEALTH_COMPONENT_LOCKS, locks.ready ? 'SERVING' : 'NOT_SERVING');
    };
    report();
    locks.onStateChange(report);
  }

  stop(): void {
    this.stopped = true;
  }
}
