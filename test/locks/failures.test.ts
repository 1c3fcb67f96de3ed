import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { failure, HoldRecorder, ms } from './lock-helpers';

/** A lock is never granted without Redis: UNAVAILABLE, quickly. */
describe('locks without Redis', () => {
  afterAll(closeAllSidecars);

  it('an L1-only sidecar refuses every lock RPC with UNAVAILABLE "locks need Redis"', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_NAMESPACE: 'l1only' });
    for (const call of [
      sc.client.acquireLock({ resource: 'r', ttl: ms(1000) }),
      sc.client.extendLock({ resource: 'r', token: 't', ttl: ms(1000) }),
      sc.client.releaseLock({ resource: 'r', token: 't' }),
    ]) {
      const error = await failure(call);
      expect(error.code).toBe(status.UNAVAILABLE);
      expect(error.details).toMatch(/^locks need Redis/);
    }
    const hold = new HoldRecorder(sc.client.holdLock({ resource: 'r' }));
    await waitFor(() => hold.status, 'the HoldLock stream to end');
    expect(hold.status!.code).toBe(status.UNAVAILABLE);
    expect(hold.messages).toEqual([]);
    expect((await sc.client.getStats()).locks).toEqual({ acquired: 0, busy: 0, held: 0 });
  });
});

describe('locks when Redis goes away', () => {
  let redis: TestRedis;
  let sc: TestSidecar;

  beforeAll(async () => {
    redis = await startRedis();
    sc = await startSidecar({
      REDIS_URL: redis.url,
      CONTEXT_CACHE_NAMESPACE: 'gone',
      CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: '200ms',
      CONTEXT_CACHE_REDIS_RECONNECT_MAX: '200ms',
    });
    await waitFor(() => sc.sidecar.locks.ready, 'the sidecar connected to Redis');
  });
  afterAll(async () => {
    await closeAllSidecars();
    await redis.stop();
  });

  it('a hung Redis: UNAVAILABLE after about the command timeout, not a grant', async () => {
    await redis.pause();
    try {
      const started = Date.now();
      const error = await failure(sc.client.acquireLock({ resource: 'hung', ttl: ms(5000), waitTimeout: ms(5000) }));
      expect(error.code).toBe(status.UNAVAILABLE);
      expect(Date.now() - started).toBeLessThan(1500);
    } finally {
      await redis.resume();
    }
    // The attempt the sidecar gave up on reaches Redis when it resumes and may take the lock for its 5 s TTL: allow for it.
    await waitFor(() => sc.client.acquireLock({ resource: 'hung', ttl: ms(1000) }).then(() => true), 'locks to work after the resume', 9000);
  });

  it('a killed Redis: every lock RPC fails with UNAVAILABLE at once; a HoldLock is lost (UNAVAILABLE) before its lock lapses; all works again after the restart', async () => {
    const held = await sc.client.acquireLock({ resource: 'held', ttl: ms(10_000) });
    const hold = new HoldRecorder(sc.client.holdLock({ resource: 'stream', ttl: ms(600) }));
    await waitFor(() => hold.first, 'the HoldLock grant');

    await redis.kill();
    const started = Date.now();
    const acquire = await failure(sc.client.acquireLock({ resource: 'new', ttl: ms(5000), waitTimeout: ms(5000) }));
    expect(acquire.code).toBe(status.UNAVAILABLE);
    expect(Date.now() - started).toBeLessThan(500);
    // The held lock may or may not still exist: Redis cannot say, so neither FAILED_PRECONDITION nor success.
    expect((await failure(sc.client.extendLock({ resource: 'held', token: held.token, ttl: ms(5000) }))).code).toBe(status.UNAVAILABLE);
    expect((await failure(sc.client.releaseLock({ resource: 'held', token: held.token }))).code).toBe(status.UNAVAILABLE);

    await waitFor(() => hold.status, 'the HoldLock stream to end', 3000);
    const lostAt = Date.now();
    expect(hold.status!.code).toBe(status.UNAVAILABLE);
    expect(hold.last!.lost).toBe(true);
    // Told while the lock was still valid: the extension retries stop a third of the TTL before the lapse.
    expect(lostAt).toBeLessThan(hold.last!.lock!.expiresAt!.getTime());

    await redis.restart();
    await waitFor(() => sc.sidecar.locks.ready, 'the sidecar reconnected', 5000);
    const again = await sc.client.acquireLock({ resource: 'held', ttl: ms(1000) });
    expect(again.token).not.toBe(held.token);
    // Redis came back empty, counters and all: fencing tokens still do not go back.
    expect(again.fencingToken).toBeGreaterThan(held.fencingToken);
    await sc.client.releaseLock({ resource: 'held', token: again.token });
  });
});
