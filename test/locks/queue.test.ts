import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AcquireLockResponse, ContextCacheClient } from '../../src/client';
import { FALLBACK_POLL_MS } from '../../src/redis/lock-masters';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { failure, ms } from './lock-helpers';

/**
 * Waiters queue: granted in the order they asked, across sidecars, woken by
 * the release rather than by polling; on one Redis and on three masters.
 */
for (const masters of [1, 3]) {
  describe(`lock waiters queue (${masters === 1 ? 'one Redis' : 'three lock masters'})`, () => {
    let servers: TestRedis[];
    let a: TestSidecar;
    let b: TestSidecar;
    const namespace = `queue${masters}`;
    const queueKey = (resource: string) => `cc:${namespace}:lockq:${resource}`;

    beforeAll(async () => {
      servers = await Promise.all(Array.from({ length: masters }, () => startRedis()));
      const env: Record<string, string> =
        masters === 1 ? { REDIS_URL: servers[0]!.url } : { CONTEXT_CACHE_LOCK_REDIS_URLS: servers.map((s) => s.url).join(',') };
      a = await startSidecar({ ...env, CONTEXT_CACHE_NAMESPACE: namespace });
      b = await startSidecar({ ...env, CONTEXT_CACHE_NAMESPACE: namespace });
      await waitFor(() => a.sidecar.locks.ready && b.sidecar.locks.ready, 'both sidecars connected to the lock masters');
    });
    afterAll(async () => {
      await closeAllSidecars();
      await Promise.all(servers.map((s) => s.stop()));
    });

    const queued = async (resource: string) => Number(await servers[0]!.command('ZCARD', queueKey(resource)));

    it('grants a busy lock to its waiters in the order they asked, alternating sidecars', async () => {
      const resource = 'fifo';
      const holder = await a.client.acquireLock({ resource, ttl: ms(10_000) });
      const order: number[] = [];
      const waits: Promise<void>[] = [];
      for (let i = 0; i < 6; i++) {
        const client: ContextCacheClient = (i % 2 === 0 ? b : a).client;
        waits.push(
          client.acquireLock({ resource, ttl: ms(10_000), waitTimeout: ms(20_000) }).then(async (lock: AcquireLockResponse) => {
            order.push(i);
            await client.releaseLock({ resource, token: lock.token });
          }),
        );
        // The next one asks only once this one is in the queue: arrival order is then known.
        await waitFor(async () => (await queued(resource)) === i + 1, `waiter ${i} in the queue`);
      }
      await a.client.releaseLock({ resource, token: holder.token });
      await Promise.all(waits);
      expect(order).toEqual([0, 1, 2, 3, 4, 5]);
      expect(await queued(resource)).toBe(0);
    });

    it('a release wakes the next waiter at once, well before any poll would', async () => {
      const resource = 'handoff';
      const handoffs: number[] = [];
      for (let round = 0; round < 5; round++) {
        const holder = await a.client.acquireLock({ resource, ttl: ms(10_000) });
        const waiting = b.client.acquireLock({ resource, ttl: ms(10_000), waitTimeout: ms(10_000) });
        await waitFor(async () => (await queued(resource)) === 1, 'the waiter in the queue');
        const released = Date.now();
        await a.client.releaseLock({ resource, token: holder.token });
        const next = await waiting;
        handoffs.push(Date.now() - released);
        await b.client.releaseLock({ resource, token: next.token });
      }
      // A waiter polls by itself only every FALLBACK_POLL_MS: every handoff here came from the wake-up.
      expect(Math.max(...handoffs), `handoffs ${handoffs.join(', ')} ms`).toBeLessThan(FALLBACK_POLL_MS / 2);
    });

    it('trying once never overtakes a waiter; a waiter that stopped asking loses its place after its deadline', async () => {
      const resource = 'no-overtaking';
      // A waiter of a sidecar that died: in every queue, with a deadline 600 ms ahead (Redis ms).
      for (const server of servers) {
        const [seconds, micros] = (await server.command('TIME')) as string[];
        const now = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
        await server.command('ZADD', queueKey(resource), '1', 'gone');
        await server.command('HSET', `cc:${namespace}:lockw:${resource}`, 'gone', String(now + 600));
      }
      const started = Date.now();
      expect((await failure(a.client.acquireLock({ resource, ttl: ms(1000) }))).code).toBe(status.ABORTED);
      // A waiter behind it gets the lock once the dead one's deadline passes (its own poll, or the TTL hint).
      const lock = await b.client.acquireLock({ resource, ttl: ms(1000), waitTimeout: ms(5000) });
      expect(Date.now() - started).toBeGreaterThanOrEqual(500);
      expect(Date.now() - started).toBeLessThan(600 + FALLBACK_POLL_MS + 1000);
      await b.client.releaseLock({ resource, token: lock.token });
      expect(await queued(resource)).toBe(0);
    });

    it('a waiter that gives up leaves the queue; the one behind it is still woken by the release', async () => {
      const resource = 'leaver';
      const holder = await a.client.acquireLock({ resource, ttl: ms(10_000) });
      const leaver = failure(a.client.acquireLock({ resource, ttl: ms(1000), waitTimeout: ms(300) }));
      await waitFor(async () => (await queued(resource)) === 1, 'the first waiter in the queue');
      const patient = b.client.acquireLock({ resource, ttl: ms(1000), waitTimeout: ms(10_000) });
      await waitFor(async () => (await queued(resource)) === 2, 'the second waiter in the queue');
      expect((await leaver).code).toBe(status.ABORTED);
      await waitFor(async () => (await queued(resource)) === 1, 'the first waiter out of the queue');
      const released = Date.now();
      await a.client.releaseLock({ resource, token: holder.token });
      const lock = await patient;
      expect(Date.now() - released).toBeLessThan(FALLBACK_POLL_MS / 2);
      await b.client.releaseLock({ resource, token: lock.token });
    });
  });
}

describe('lock queues from Redis are untrusted', () => {
  it('queue keys of another Redis type are removed, and the lock works', async () => {
    const redis = await startRedis();
    try {
      const sidecar = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'planted' });
      await waitFor(() => sidecar.sidecar.locks.ready, 'the sidecar connected');
      await redis.command('SET', 'cc:planted:lockq:r', 'not a queue');
      await redis.command('RPUSH', 'cc:planted:lockw:r', 'not a hash');
      const lock = await sidecar.client.acquireLock({ resource: 'r', ttl: ms(1000) });
      const waiting = sidecar.client.acquireLock({ resource: 'r', ttl: ms(1000), waitTimeout: ms(5000) });
      await waitFor(async () => Number(await redis.command('ZCARD', 'cc:planted:lockq:r')) === 1, 'the waiter in a repaired queue');
      await sidecar.client.releaseLock({ resource: 'r', token: lock.token });
      await sidecar.client.releaseLock({ resource: 'r', token: (await waiting).token });
    } finally {
      await closeAllSidecars();
      await redis.stop();
    }
  });
});
