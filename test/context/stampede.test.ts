import { status } from '@grpc/grpc-js';
import { beforeAll, describe, expect, it } from 'vitest';
import type { ContextCacheClient } from '../../src/client';
import { session } from '../helpers/nodes';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf } from '../helpers/wait';

const databaseDelay = () => new Promise((resolve) => setTimeout(resolve, 150));

describe('stampede protection across sidecars', () => {
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'stampede' });
  let a: TestSidecar;
  let b: TestSidecar;
  beforeAll(() => void ([a, b] = fixture.sidecars));

  it('100 concurrent misses on one key across two sidecars: exactly one loader, everyone gets the value', async () => {
    let loads = 0;
    const caller = async (client: ContextCacheClient) => {
      const miss = await client.get({ key: 'hot', leaseOnMiss: true }, { deadline: 10_000 });
      if (miss.found) return { value: Buffer.from(miss.value).toString(), waited: miss.info?.waitedForFill ?? false };
      expect(miss.lease?.token).toBeTruthy();
      loads++;
      await databaseDelay();
      await client.set({ key: 'hot', value: Buffer.from('from the database'), leaseToken: miss.lease!.token });
      return { value: 'from the database', waited: false };
    };
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) => caller(i % 2 === 0 ? a.client : b.client)));
    expect(loads).toBe(1);
    expect(results.every((r) => r.value === 'from the database')).toBe(true);
    expect(results.filter((r) => r.waited).length).toBe(99);
    const waits = (await a.client.getStats()).leases!.waits + (await b.client.getStats()).leases!.waits;
    expect(waits).toBe(99);
  });

  it('the same for a session: one loader for 40 concurrent GetSessionNodes misses', async () => {
    let loads = 0;
    const caller = async (client: ContextCacheClient) => {
      const miss = await client.getSessionNodes({ sessionId: 'hot-session', leaseOnMiss: true }, { deadline: 10_000 });
      if (miss.found) return miss.nodes.length;
      loads++;
      await databaseDelay();
      await client.putSessionNodes({ sessionId: 'hot-session', nodes: session('hot-session', 3), leaseToken: miss.lease!.token });
      return 3;
    };
    const counts = await Promise.all(Array.from({ length: 40 }, (_, i) => caller(i % 2 === 0 ? a.client : b.client)));
    expect(loads).toBe(1);
    expect(counts.every((count) => count === 3)).toBe(true);
  });

  it('a lease expires when its holder dies, and a waiter takes over', async () => {
    const holder = await a.client.get({ key: 'orphan', leaseOnMiss: true, leaseTtl: { seconds: 0, nanos: 300e6 } });
    expect(holder.lease?.token).toBeTruthy();
    // The holder never fills. A waiter on the other sidecar gets the lease once it lapses.
    const started = Date.now();
    const waiter = await b.client.get({ key: 'orphan', leaseOnMiss: true, leaseWait: { seconds: 5, nanos: 0 } });
    expect(waiter.found).toBe(false);
    expect(waiter.lease?.token).toBeTruthy();
    expect(waiter.lease?.token).not.toBe(holder.lease?.token);
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    // The dead holder's late fill is refused; the new holder's is taken.
    await expect(a.client.set({ key: 'orphan', value: Buffer.from('late'), leaseToken: holder.lease!.token })).rejects.toMatchObject({ code: 10 });
    await b.client.set({ key: 'orphan', value: Buffer.from('fresh'), leaseToken: waiter.lease!.token });
    expect(Buffer.from((await a.client.get({ key: 'orphan' })).value).toString()).toBe('fresh');
  });

  it('a waiter gives up with a plain miss at its deadline instead of hanging', async () => {
    await a.client.get({ key: 'slow', leaseOnMiss: true });
    const started = Date.now();
    const waiter = await b.client.get({ key: 'slow', leaseOnMiss: true, leaseWait: { seconds: 0, nanos: 300e6 } });
    expect(waiter.found).toBe(false);
    expect(waiter.lease).toBeUndefined();
    expect(Date.now() - started).toBeLessThan(2000);
    const byDeadline = await b.client.get({ key: 'slow', leaseOnMiss: true }, { deadline: 400 });
    expect(byDeadline.found).toBe(false);
  });

  it('a tag invalidation after the grant refuses a fill that carries the tag', async () => {
    const miss = await a.client.get({ key: 'tagged', leaseOnMiss: true });
    expect(miss.lease?.token).toBeTruthy();
    // The app reads its database; meanwhile the rows behind tag "docs" change and are invalidated.
    await b.client.invalidateTags({ tags: ['docs'] });
    const fill = await rejectionOf(a.client.set({ key: 'tagged', value: Buffer.from('loaded before'), tags: ['docs'], leaseToken: miss.lease!.token }));
    expect(fill.code).toBe(status.ABORTED);
    expect((await a.client.get({ key: 'tagged' })).found).toBe(false);
    // The refused fill freed its lease: the next reader gets one at once, not after the lease TTL.
    const started = Date.now();
    const again = await b.client.get({ key: 'tagged', leaseOnMiss: true });
    expect(again.lease?.token).toBeTruthy();
    expect(Date.now() - started).toBeLessThan(2000);
    await b.client.set({ key: 'tagged', value: Buffer.from('loaded after'), tags: ['docs'], leaseToken: again.lease!.token });
    expect(Buffer.from((await b.client.get({ key: 'tagged' })).value).toString()).toBe('loaded after');
    // An invalidation of another tag does not disturb a fill.
    const other = await a.client.get({ key: 'tagged-2', leaseOnMiss: true });
    await b.client.invalidateTags({ tags: ['unrelated'] });
    await a.client.set({ key: 'tagged-2', value: Buffer.from('fine'), tags: ['docs'], leaseToken: other.lease!.token });
  });

  it('a plain write revokes outstanding leases: the older fill is refused', async () => {
    const miss = await a.client.get({ key: 'revoked', leaseOnMiss: true });
    await b.client.set({ key: 'revoked', value: Buffer.from('newer') });
    await expect(a.client.set({ key: 'revoked', value: Buffer.from('older'), leaseToken: miss.lease!.token })).rejects.toMatchObject({ code: 10 });
    expect(Buffer.from((await a.client.get({ key: 'revoked' })).value).toString()).toBe('newer');
  });
});

describe('leases without Redis', () => {
  it('protect one sidecar from a stampede from memory', async () => {
    const solo = await startSidecar();
    try {
      let loads = 0;
      const results = await Promise.all(
        Array.from({ length: 30 }, async () => {
          const miss = await solo.client.get({ key: 'k', leaseOnMiss: true }, { deadline: 5000 });
          if (miss.found) return Buffer.from(miss.value).toString();
          loads++;
          await databaseDelay();
          await solo.client.set({ key: 'k', value: Buffer.from('v'), leaseToken: miss.lease!.token });
          return 'v';
        }),
      );
      expect(loads).toBe(1);
      expect(results.every((r) => r === 'v')).toBe(true);
    } finally {
      await solo.close();
    }
  });
});
