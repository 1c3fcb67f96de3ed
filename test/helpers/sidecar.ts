import { afterAll, beforeAll } from 'vitest';
import { ContextCacheClient } from '../../src/client';
import { loadConfig } from '../../src/config';
import { createLogger } from '../../src/log';
import { Sidecar } from '../../src/sidecar';
import { startRedis, type TestRedis } from './redis';
import { waitFor } from './wait';

export interface TestSidecar {
  sidecar: Sidecar;
  client: ContextCacheClient;
  address: string;
  close(): Promise<void>;
}

const open = new Set<TestSidecar>();

/**
 * Starts a sidecar in this process on a free loopback port, with a client.
 * `env` overrides the configuration exactly as environment variables would.
 */
export async function startSidecar(env: Record<string, string> = {}): Promise<TestSidecar> {
  const config = loadConfig({
    CONTEXT_CACHE_LISTEN: '127.0.0.1:0',
    CONTEXT_CACHE_LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    CONTEXT_CACHE_SHUTDOWN_GRACE: '2s',
    CONTEXT_CACHE_ADMIN_LISTEN: '127.0.0.1:0',
    ...env,
  });
  const sidecar = await Sidecar.start(config, createLogger(config.logLevel));
  const client = new ContextCacheClient(sidecar.listenAddress);
  const handle: TestSidecar = {
    sidecar,
    client,
    address: sidecar.listenAddress,
    async close() {
      open.delete(handle);
      client.close();
      await sidecar.close();
    },
  };
  open.add(handle);
  return handle;
}

/** Closes every sidecar a test file started and did not close itself. */
export async function closeAllSidecars(): Promise<void> {
  await Promise.all([...open].map((handle) => handle.close()));
}

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
