import { afterAll, beforeAll } from 'vitest';
import { startRedis, type TestRedis } from './redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from './sidecar';
import { waitFor } from './wait';

/**
 * A Redis of its own and `count` sidecars on it, started before the suite
 * (all subscribed) and closed after it: the factory registers its own hooks.
 * Read `redis` and `sidecars` from a `beforeAll` registered after the call.
 */
export function sidecarsOnRedis(count: number, env: Record<string, string> = {}): { redis: TestRedis; sidecars: TestSidecar[] } {
  const fixture = { redis: undefined as unknown as TestRedis, sidecars: [] as TestSidecar[] };
  beforeAll(async () => {
    fixture.redis = await startRedis();
    fixture.sidecars = await Promise.all(Array.from({ length: count }, () => startSidecar({ REDIS_URL: fixture.redis.url, ...env })));
    await waitFor(() => fixture.sidecars.every((s) => s.sidecar.tiers.mode === 'coherent'), `${count} sidecars to subscribe`);
  });
  afterAll(async () => {
    await closeAllSidecars();
    await fixture.redis?.stop();
  });
  return fixture;
}
