import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheClient } from '../../src/client';
import type { HealthClient } from '../../src/gen/health/v1/health';
import { checkHealth, healthClient, ServingStatus, watchHealth } from '../helpers/health';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf, waitFor } from '../helpers/wait';

const CACHE_SERVICE = 'contextcache.v1.ContextCache';

describe('grpc.health.v1', () => {
  const clients: { close(): void }[] = [];
  const track = <T extends { close(): void }>(client: T): T => {
    clients.push(client);
    return client;
  };
  afterAll(async () => {
    for (const client of clients) client.close();
    await closeAllSidecars();
  });

  describe('on the API address', () => {
    let sc: TestSidecar;
    let health: HealthClient;
    beforeAll(async () => {
      sc = await startSidecar();
      health = track(healthClient(sc.address));
    });

    it('answers SERVING for the whole server ("") and for the cache service', async () => {
      expect(await checkHealth(health, '')).toBe(ServingStatus.SERVING);
      expect(await checkHealth(health, CACHE_SERVICE)).toBe(ServingStatus.SERVING);
    });

    it('answers NOT_FOUND for a service it does not know', async () => {
      const error = await rejectionOf(checkHealth(health, 'no.such.Service'));
      expect(error.code).toBe(status.NOT_FOUND);
      expect(error.details).toContain('no.such.Service');
    });

    it('Watch reports SERVING at once', async () => {
      const watch = watchHealth(health, CACHE_SERVICE);
      await waitFor(() => watch.statuses.length > 0, 'the first Watch message');
      expect(watch.statuses).toEqual([ServingStatus.SERVING]);
      watch.cancel();
      const ended = await watch.ended;
      expect(ended.code).toBe(status.CANCELLED);
    });
  });

  describe('while the sidecar closes', () => {
    it('Watch streams SERVING, then NOT_SERVING, then ends', async () => {
      const sc = await startSidecar({ CONTEXT_CACHE_SHUTDOWN_GRACE: '1s' });
      const health = track(healthClient(sc.address));
      const overall = watchHealth(health, '');
      const cache = watchHealth(health, CACHE_SERVICE);
      await waitFor(() => overall.statuses.length > 0 && cache.statuses.length > 0, 'both Watch streams to start');

      const closing = sc.close();
      await waitFor(() => overall.statuses.includes(ServingStatus.NOT_SERVING) && cache.statuses.includes(ServingStatus.NOT_SERVING), 'NOT_SERVING on both streams');
      expect(overall.statuses).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);
      expect(cache.statuses).toEqual([ServingStatus.SERVING, ServingStatus.NOT_SERVING]);

      // The server ends the streams itself (at the latest when the grace period runs out).
      const [overallEnd, cacheEnd] = await Promise.all([overall.ended, cache.ended]);
      expect(overallEnd.code).not.toBe(status.OK);
      expect(cacheEnd.code).not.toBe(status.OK);
      await closing;

      const error = await rejectionOf(checkHealth(health, '', 1000));
      expect([status.UNAVAILABLE, status.DEADLINE_EXCEEDED]).toContain(error.code);
    });

    it('Check no longer answers SERVING once shutdown began', async () => {
      const sc = await startSidecar({ CONTEXT_CACHE_SHUTDOWN_GRACE: '1s' });
      const health = track(healthClient(sc.address));
      // A Watch keeps the server from finishing its shutdown at once, so Check can still be asked.
      const watch = watchHealth(health, '');
      await waitFor(() => watch.statuses.length > 0, 'the Watch stream to start');
      const closing = sc.close();
      await waitFor(() => watch.statuses.includes(ServingStatus.NOT_SERVING), 'NOT_SERVING on the Watch stream');
      // The listener is closed by now; whatever answers must not claim SERVING.
      const answer = await checkHealth(health, '', 1000).catch((error: { code: number }) => error.code);
      expect(answer).not.toBe(ServingStatus.SERVING);
      watch.cancel();
      await closing;
    });
  });

  describe('on the health-only address (CONTEXT_CACHE_HEALTH_LISTEN)', () => {
    let sc: TestSidecar;
    let health: HealthClient;
    let cacheOnHealthAddress: ContextCacheClient;
    beforeAll(async () => {
      sc = await startSidecar({ CONTEXT_CACHE_HEALTH_LISTEN: '127.0.0.1:0' });
      const address = sc.sidecar.healthAddress;
      expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(address).not.toBe(sc.address);
      health = track(healthClient(address!));
      cacheOnHealthAddress = track(new ContextCacheClient(address!));
    });

    it('answers Check for "" and the cache service', async () => {
      expect(await checkHealth(health, '')).toBe(ServingStatus.SERVING);
      expect(await checkHealth(health, CACHE_SERVICE)).toBe(ServingStatus.SERVING);
      const error = await rejectionOf(checkHealth(health, 'no.such.Service'));
      expect(error.code).toBe(status.NOT_FOUND);
    });

    it('does not serve contextcache.v1.ContextCache', async () => {
      const get = await rejectionOf(cacheOnHealthAddress.get({ key: 'k' }));
      expect(get.code).toBe(status.UNIMPLEMENTED);
      const set = await rejectionOf(cacheOnHealthAddress.set({ key: 'k', value: Buffer.from('x') }));
      expect(set.code).toBe(status.UNIMPLEMENTED);
      // While the API address does.
      await sc.client.set({ key: 'k', value: Buffer.from('x') });
      expect((await sc.client.get({ key: 'k' })).found).toBe(true);
    });

    it('has no address when CONTEXT_CACHE_HEALTH_LISTEN is unset', async () => {
      const plain = await startSidecar();
      expect(plain.sidecar.healthAddress).toBeUndefined();
      await plain.close();
    });
  });
});
