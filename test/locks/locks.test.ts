import { status } from '@grpc/grpc-js';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ContextCacheClient } from '../../src/client';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { failure, isFree, ms, tryAcquire, withLock } from './lock-helpers';

/** AcquireLock, ExtendLock, ReleaseLock on one Redis shared by two sidecars. */
describe('distributed locks across two sidecars on one Redis', () => {
  let redis: TestRedis;
  let a: TestSidecar;
  let b: TestSidecar;
  let direct: Redis;

  beforeAll(async () => {
    redis = await startRedis();
    a = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'locks' });
    b = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'locks' });
    direct = new Redis(redis.port, redis.host, { lazyConnect: true });
    await direct.connect();
    await waitFor(() => a.sidecar.locks.ready && b.sidecar.locks.ready, 'both sidecars connected to Redis');
  });
  afterAll(async () => {
    direct.disconnect();
    await closeAllSidecars();
    await redis.stop();
  });

  /**
   * Workers on both sidecars increment one counter with a read-modify-write
   * that loses updates unless it is mutually exclusive: GET, a pause, SET.
   */
  async function incrementAll(options: { workersPerSidecar: number; increments: number; counterKey: string; lock: boolean }) {
    const fences: number[] = [];
    let inside = 0;
    let maxInside = 0;
    const increment = async () => {
      inside++;
      maxInside = Math.max(maxInside, inside);
      const value = Number((await direct.get(options.counterKey)) ?? '0');
      await new Promise((resolve) => setTimeout(resolve, 1));
      await direct.set(options.counterKey, String(value + 1));
      inside--;
    };
    const worker = async (client: ContextCacheClient) => {
      for (let i = 0; i < options.increments; i++) {
        if (!options.lock) {
          await increment();
          continue;
        }
        await withLock(client, `counter:${options.counterKey}`, async (lock) => {
          fences.push(lock.fencingToken);
          await increment();
        });
      }
    };
    await Promise.all(
      [a, b].flatMap((sidecar) => Array.from({ length: options.workersPerSidecar }, () => worker(sidecar.client))),
    );
    return { final: Number(await direct.get(options.counterKey)), fences, maxInside };
  }

  it('the same non-atomic increment loses updates without the lock (control)', async () => {
    const { final, maxInside } = await incrementAll({ workersPerSidecar: 4, increments: 5, counterKey: 'unguarded', lock: false });
    expect(maxInside).toBeGreaterThan(1);
    expect(final).toBeLessThan(2 * 4 * 5);
  });

  it('N workers × M increments guarded by the lock across both sidecars lose no update, and fencing tokens rise in acquisition order', async () => {
    const workers = 4;
    const increments = 10;
    const { final, fences, maxInside } = await incrementAll({ workersPerSidecar: workers, increments, counterKey: 'guarded', lock: true });
    expect(maxInside).toBe(1);
    expect(final).toBe(2 * workers * increments);
    // Recorded inside the critical section, so the array is in acquisition order.
    expect(fences).toHaveLength(2 * workers * increments);
    for (let i = 1; i < fences.length; i++) expect(fences[i], `fence #${i}`).toBeGreaterThan(fences[i - 1]!);
    expect(new Set(fences).size).toBe(fences.length);
  });

  it('fencing tokens from many acquisitions alternating between the sidecars are strictly increasing and distinct', async () => {
    const seen: number[] = [];
    for (let i = 0; i < 30; i++) {
      const client = i % 2 === 0 ? a.client : b.client;
      const lock = await client.acquireLock({ resource: 'fenced', ttl: ms(5000) });
      seen.push(lock.fencingToken);
      await client.releaseLock({ resource: 'fenced', token: lock.token });
    }
    expect(seen[0]).toBeGreaterThanOrEqual(1);
    expect(seen).toEqual([...seen].sort((x, y) => x - y));
    expect(new Set(seen).size).toBe(seen.length);
  });

  it('a lock with ttl 200 ms can be taken by another after it lapses; the old token then fails with FAILED_PRECONDITION', async () => {
    // The TTL runs from when Redis took the lock, which is after the call was made: measure from there.
    const requestedAt = Date.now();
    const first = await a.client.acquireLock({ resource: 'lapsing', ttl: ms(200) });
    const grantedAt = Date.now();
    expect(first.expiresAt!.getTime()).toBeGreaterThan(requestedAt);
    expect(first.expiresAt!.getTime()).toBeLessThanOrEqual(grantedAt + 200);
    expect(await isFree(b.client, 'lapsing')).toBe(false);

    const second = await waitFor(() => tryAcquire(b.client, 'lapsing', 5000), 'the lapsed lock to be free', 3000);
    // Not before the TTL (Redis expires the key; allow for the clock granularity), not long after.
    expect(Date.now() - requestedAt).toBeGreaterThanOrEqual(180);
    expect(second.fencingToken).toBeGreaterThan(first.fencingToken);

    const extend = await failure(a.client.extendLock({ resource: 'lapsing', token: first.token, ttl: ms(5000) }));
    expect(extend.code).toBe(status.FAILED_PRECONDITION);
    expect(extend.details).toMatch(/does not hold the lock on "lapsing"/);
    expect((await failure(a.client.releaseLock({ resource: 'lapsing', token: first.token }))).code).toBe(status.FAILED_PRECONDITION);
    // The failed calls of the old holder did not touch the new holder's lock.
    await b.client.releaseLock({ resource: 'lapsing', token: second.token });
  });

  it('ExtendLock keeps the lock past its original TTL, from either sidecar', async () => {
    const lock = await a.client.acquireLock({ resource: 'extended', ttl: ms(300) });
    const extended = await b.client.extendLock({ resource: 'extended', token: lock.token, ttl: ms(5000) });
    expect(extended.expiresAt!.getTime()).toBeGreaterThan(lock.expiresAt!.getTime() + 4000);
    // Past the original expiry (the lapse is what is tested): still held.
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(await isFree(b.client, 'extended')).toBe(false);
    expect(Number(await direct.pttl('cc:locks:lock:extended'))).toBeGreaterThan(3000);
    await a.client.releaseLock({ resource: 'extended', token: lock.token });
    expect(await isFree(b.client, 'extended')).toBe(true);
  });

  it('only the holder token releases: a wrong token gets FAILED_PRECONDITION and the lock stays held', async () => {
    const lock = await a.client.acquireLock({ resource: 'guarded-release', ttl: ms(10_000) });
    const wrong = await failure(b.client.releaseLock({ resource: 'guarded-release', token: 'not-the-token' }));
    expect(wrong.code).toBe(status.FAILED_PRECONDITION);
    // A token of another resource does not release this one either.
    const other = await a.client.acquireLock({ resource: 'other-resource', ttl: ms(10_000) });
    expect((await failure(a.client.releaseLock({ resource: 'guarded-release', token: other.token }))).code).toBe(status.FAILED_PRECONDITION);
    expect((await failure(a.client.extendLock({ resource: 'guarded-release', token: other.token, ttl: ms(1000) }))).code).toBe(status.FAILED_PRECONDITION);
    expect(await isFree(b.client, 'guarded-release')).toBe(false);

    await b.client.releaseLock({ resource: 'guarded-release', token: lock.token });
    expect((await failure(a.client.releaseLock({ resource: 'guarded-release', token: lock.token }))).code).toBe(status.FAILED_PRECONDITION);
    expect(await isFree(b.client, 'guarded-release')).toBe(true);
    await a.client.releaseLock({ resource: 'other-resource', token: other.token });
  });

  it('busy: wait_timeout 0 fails at once with ABORTED; a wait gives up with ABORTED after about wait_timeout', async () => {
    const lock = await a.client.acquireLock({ resource: 'busy', ttl: ms(10_000) });
    let started = Date.now();
    const once = await failure(b.client.acquireLock({ resource: 'busy', ttl: ms(1000) }));
    expect(once.code).toBe(status.ABORTED);
    expect(once.details).toMatch(/held by another holder; set wait_timeout/);
    expect(Date.now() - started).toBeLessThan(200);

    started = Date.now();
    const waited = await failure(b.client.acquireLock({ resource: 'busy', ttl: ms(1000), waitTimeout: ms(400) }));
    const elapsed = Date.now() - started;
    expect(waited.code).toBe(status.ABORTED);
    expect(waited.details).toMatch(/after waiting 400 ms/);
    expect(elapsed).toBeGreaterThanOrEqual(390);
    expect(elapsed).toBeLessThan(900);
    await a.client.releaseLock({ resource: 'busy', token: lock.token });
  });

  it('a waiting acquisition gets the lock soon after the holder releases it', async () => {
    const lock = await a.client.acquireLock({ resource: 'handover', ttl: ms(10_000) });
    const started = Date.now();
    const waiting = b.client.acquireLock({ resource: 'handover', ttl: ms(1000), waitTimeout: ms(5000) });
    await new Promise((resolve) => setTimeout(resolve, 150));
    await a.client.releaseLock({ resource: 'handover', token: lock.token });
    const next = await waiting;
    expect(next.fencingToken).toBeGreaterThan(lock.fencingToken);
    expect(Date.now() - started).toBeLessThan(1000);
    await b.client.releaseLock({ resource: 'handover', token: next.token });
  });

  it('the call deadline bounds the wait: DEADLINE_EXCEEDED well before wait_timeout', async () => {
    const lock = await a.client.acquireLock({ resource: 'deadline', ttl: ms(10_000) });
    const started = Date.now();
    const error = await failure(b.client.acquireLock({ resource: 'deadline', ttl: ms(1000), waitTimeout: ms(10_000) }, { deadline: 400 }));
    expect(error.code).toBe(status.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeLessThan(1500);
    // The abandoned wait did not take the lock behind the caller's back.
    await a.client.releaseLock({ resource: 'deadline', token: lock.token });
    expect(await isFree(b.client, 'deadline')).toBe(true);
  });

  it('validates ttl (required, 100 ms to 1 h), resource and token with INVALID_ARGUMENT', async () => {
    const invalid = async (call: Promise<unknown>, message: RegExp) => {
      const error = await failure(call);
      expect(error.code, error.details).toBe(status.INVALID_ARGUMENT);
      expect(error.details).toMatch(message);
    };
    await invalid(a.client.acquireLock({ resource: 'v' }), /^ttl is required/);
    await invalid(a.client.acquireLock({ resource: 'v', ttl: ms(99) }), /^ttl is 99 ms; locks last 100 ms to 1 h/);
    await invalid(a.client.acquireLock({ resource: 'v', ttl: { seconds: 3601, nanos: 0 } }), /^ttl is 3601000 ms; the limit is 3600000 ms/);
    await invalid(a.client.acquireLock({ resource: 'v', ttl: { seconds: -1, nanos: 0 } }), /^ttl is negative/);
    await invalid(a.client.acquireLock({ resource: '', ttl: ms(1000) }), /^resource is empty/);
    await invalid(a.client.acquireLock({ resource: 'r'.repeat(1025), ttl: ms(1000) }), /^resource is 1025 bytes/);
    await invalid(a.client.acquireLock({ resource: 'v', ttl: ms(1000), waitTimeout: { seconds: 7200, nanos: 0 } }), /^wait_timeout is 7200000 ms/);
    await invalid(a.client.extendLock({ resource: 'v', token: '', ttl: ms(1000) }), /^token is empty/);
    await invalid(a.client.extendLock({ resource: 'v', token: 't' }), /^ttl is required/);
    await invalid(a.client.releaseLock({ resource: 'v', token: '' }), /^token is empty/);
    // 100 ms and 1 h themselves are fine.
    const shortest = await a.client.acquireLock({ resource: 'v-min', ttl: ms(100) });
    const longest = await a.client.acquireLock({ resource: 'v-max', ttl: { seconds: 3600, nanos: 0 } });
    await a.client.releaseLock({ resource: 'v-max', token: longest.token });
    await a.client.releaseLock({ resource: 'v-min', token: shortest.token }).catch(() => undefined);
    expect(shortest.fencingToken).toBeGreaterThanOrEqual(1);
  });

  it('keeps lock keys and fencing counters under the namespace', async () => {
    const lock = await a.client.acquireLock({ resource: 'named', ttl: ms(5000) });
    expect(await direct.get('cc:locks:lock:named')).toBe(lock.token);
    expect(Number(await direct.get('cc:locks:fence:named'))).toBe(lock.fencingToken);
    expect(await direct.pttl('cc:locks:fence:named')).toBe(-1);
    await a.client.releaseLock({ resource: 'named', token: lock.token });
    expect(await direct.exists('cc:locks:lock:named')).toBe(0);
  });

  it('GetStats counts acquired, busy and held locks of this sidecar', async () => {
    const before = (await a.client.getStats()).locks!;
    const one = await a.client.acquireLock({ resource: 'stats-1', ttl: ms(10_000) });
    const two = await a.client.acquireLock({ resource: 'stats-2', ttl: ms(10_000) });
    await failure(a.client.acquireLock({ resource: 'stats-1', ttl: ms(1000) }));
    const during = (await a.client.getStats()).locks!;
    expect(during.acquired - before.acquired).toBe(2);
    expect(during.busy - before.busy).toBe(1);
    expect(during.held - before.held).toBe(2);
    await a.client.releaseLock({ resource: 'stats-1', token: one.token });
    await a.client.releaseLock({ resource: 'stats-2', token: two.token });
    const after = (await a.client.getStats()).locks!;
    expect(after.held).toBe(before.held);
    expect(after.acquired).toBe(during.acquired);
  });
});
