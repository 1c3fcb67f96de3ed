import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ContextCacheClient } from '../../src/client';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { failure, HoldRecorder, isFree, ms, withLock } from './lock-helpers';

/**
 * Redlock over three independent masters (CONTEXT_CACHE_LOCK_REDIS_URLS):
 * a majority decides, so one master may be dead or come back empty; two may not.
 * The tests run in order and share the masters' fate.
 */
describe('locks on a quorum of three Redis masters', () => {
  let masters: TestRedis[];
  let a: TestSidecar;
  let b: TestSidecar;
  const fences: number[] = [];
  const LOCK_KEY = 'cc:quorum:lock:q';
  const FENCE_KEY = 'cc:quorum:fence:q';

  beforeAll(async () => {
    masters = await Promise.all([startRedis(), startRedis(), startRedis()]);
    const env = {
      CONTEXT_CACHE_NAMESPACE: 'quorum',
      CONTEXT_CACHE_LOCK_REDIS_URLS: masters.map((m) => m.url).join(','),
      CONTEXT_CACHE_REDIS_RECONNECT_MAX: '200ms',
    };
    a = await startSidecar(env);
    b = await startSidecar(env);
    await waitFor(() => a.sidecar.locks.connectedMasters === 3 && b.sidecar.locks.connectedMasters === 3, 'both sidecars connected to all three masters');
  });
  afterAll(async () => {
    await closeAllSidecars();
    await Promise.all(masters.map((m) => m.stop()));
  });

  const acquireFence = async (client: ContextCacheClient) => {
    const lock = await client.acquireLock({ resource: 'q', ttl: ms(5000), waitTimeout: ms(2000) });
    fences.push(lock.fencingToken);
    await client.releaseLock({ resource: 'q', token: lock.token });
    return lock;
  };

  /** Workers on both sidecars; an in-process read-modify-write with an await in between. */
  const contend = async (workersPerSidecar: number, increments: number) => {
    let counter = 0;
    let inside = 0;
    let maxInside = 0;
    const worker = async (client: ContextCacheClient) => {
      for (let i = 0; i < increments; i++) {
        await withLock(client, 'q', async (lock) => {
          fences.push(lock.fencingToken);
          inside++;
          maxInside = Math.max(maxInside, inside);
          const read = counter;
          await new Promise((resolve) => setTimeout(resolve, 1));
          counter = read + 1;
          inside--;
        });
      }
    };
    await Promise.all([a, b].flatMap((sc) => Array.from({ length: workersPerSidecar }, () => worker(sc.client))));
    return { counter, maxInside };
  };

  it('with all three up, the lock and its fencing token are written to every master', async () => {
    const lock = await a.client.acquireLock({ resource: 'q', ttl: ms(5000) });
    fences.push(lock.fencingToken);
    for (const master of masters) {
      expect(String(await master.command('GET', LOCK_KEY))).toBe(lock.token);
      expect(Number(String(await master.command('GET', FENCE_KEY)))).toBe(lock.fencingToken);
    }
    expect(await isFree(b.client, 'q')).toBe(false);
    await a.client.releaseLock({ resource: 'q', token: lock.token });
    for (const master of masters) expect(await master.command('EXISTS', LOCK_KEY)).toBe(0);
  });

  it('with one of three killed: exclusion, extension, release and fencing keep working', async () => {
    await masters[0]!.kill();
    await waitFor(() => a.sidecar.locks.connectedMasters === 2 && b.sidecar.locks.connectedMasters === 2, 'both sidecars to notice');
    const { counter, maxInside } = await contend(3, 5);
    expect(maxInside).toBe(1);
    expect(counter).toBe(2 * 3 * 5);

    const lock = await b.client.acquireLock({ resource: 'q', ttl: ms(500) });
    fences.push(lock.fencingToken);
    const extended = await a.client.extendLock({ resource: 'q', token: lock.token, ttl: ms(5000) });
    expect(extended.expiresAt!.getTime()).toBeGreaterThan(lock.expiresAt!.getTime());
    expect((await failure(a.client.acquireLock({ resource: 'q', ttl: ms(1000) }))).code).toBe(status.ABORTED);
    await a.client.releaseLock({ resource: 'q', token: lock.token });

    const hold = new HoldRecorder(a.client.holdLock({ resource: 'q-hold', ttl: ms(300) }));
    await waitFor(() => hold.messages.length >= 3, 'two extensions with a master down');
    expect(hold.messages.every((m) => !m.lost)).toBe(true);
    hold.cancel();
  });

  it('after a master comes back empty and another dies, fencing tokens still increase', async () => {
    const before = await acquireFence(a.client);
    // Master 0 restarts without data; the counters live on 1 and 2 (written while 0 was down).
    await masters[0]!.restart();
    expect(await masters[0]!.command('EXISTS', FENCE_KEY)).toBe(0);
    await waitFor(() => a.sidecar.locks.connectedMasters === 3 && b.sidecar.locks.connectedMasters === 3, 'both sidecars reconnected to master 0');
    // Now the majority is {0 (empty), 2}: the one master they share with the last write has the counter.
    await masters[1]!.kill();
    await waitFor(() => a.sidecar.locks.connectedMasters === 2 && b.sidecar.locks.connectedMasters === 2, 'both sidecars to notice');

    const after = await acquireFence(b.client);
    expect(after.fencingToken).toBeGreaterThan(before.fencingToken);
    // The write-back reached the empty master too, so it now knows the counter.
    expect(Number(String(await masters[0]!.command('GET', FENCE_KEY)))).toBe(after.fencingToken);
    await acquireFence(a.client);

    // Every token handed out in this file, in acquisition order.
    for (let i = 1; i < fences.length; i++) expect(fences[i], `fence #${i}`).toBeGreaterThan(fences[i - 1]!);
    expect(new Set(fences).size).toBe(fences.length);
  });

  it('with two of three killed: UNAVAILABLE at once, even for a resource that is held; nothing is granted', async () => {
    const held = await a.client.acquireLock({ resource: 'q-held', ttl: ms(10_000) });
    await masters[0]!.kill();
    await waitFor(() => a.sidecar.locks.connectedMasters === 1 && b.sidecar.locks.connectedMasters === 1, 'both sidecars to notice');

    let started = Date.now();
    const free = await failure(b.client.acquireLock({ resource: 'q-free', ttl: ms(1000), waitTimeout: ms(2000) }));
    expect(free.code).toBe(status.UNAVAILABLE);
    expect(Date.now() - started).toBeLessThan(500);
    // The only master left says "held"; one vote cannot decide, so this is UNAVAILABLE, not ABORTED.
    started = Date.now();
    const busy = await failure(b.client.acquireLock({ resource: 'q-held', ttl: ms(1000), waitTimeout: ms(2000) }));
    expect(busy.code).toBe(status.UNAVAILABLE);
    expect(Date.now() - started).toBeLessThan(500);
    expect((await failure(a.client.extendLock({ resource: 'q-held', token: held.token, ttl: ms(1000) }))).code).toBe(status.UNAVAILABLE);
    expect((await failure(a.client.releaseLock({ resource: 'q-held', token: held.token }))).code).toBe(status.UNAVAILABLE);

    const hold = new HoldRecorder(b.client.holdLock({ resource: 'q-free' }));
    await waitFor(() => hold.status, 'the HoldLock stream to end');
    expect(hold.status!.code).toBe(status.UNAVAILABLE);
    expect(hold.messages).toEqual([]);
    // Nothing was left behind on the surviving master by the refused attempts.
    expect(await masters[2]!.command('EXISTS', 'cc:quorum:lock:q-free')).toBe(0);
  });
});
