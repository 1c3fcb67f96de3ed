import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { entrySize, L1Cache } from '../../src/cache/l1';
import type { Entry } from '../../src/model/entry';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf, waitFor } from '../helpers/wait';

const KiB = 1024;
const MiB = 1024 * KiB;

function entry(version: number, value = `v${version}`, tags: readonly string[] = [], expiresAt = 0): Entry {
  return { value: Buffer.from(value), version, tags, expiresAt };
}

describe('L1 over gRPC', () => {
  afterAll(closeAllSidecars);

  describe('TTL', () => {
    let sc: TestSidecar;
    beforeAll(async () => {
      sc = await startSidecar();
    });

    it('serves an entry until its TTL runs out, then answers not found and counts an expiration', async () => {
      const before = Date.now();
      const set = await sc.client.set({ key: 'ttl/short', value: Buffer.from('brief'), ttl: { seconds: 0, nanos: 200_000_000 } });
      const after = Date.now();
      await sc.client.set({ key: 'ttl/long', value: Buffer.from('stays'), ttl: { seconds: 60 } });
      const expiresAt = set.info!.expiresAt!.getTime();
      expect(expiresAt).toBeGreaterThanOrEqual(before + 200);
      expect(expiresAt).toBeLessThanOrEqual(after + 200);

      const goneAt = await waitFor(async () => ((await sc.client.get({ key: 'ttl/short' })).found ? undefined : Date.now()), 'the 200 ms entry to expire', 5000);
      // It did not vanish early (a little slack for the cache's coarse clock).
      expect(goneAt).toBeGreaterThanOrEqual(expiresAt - 5);

      const stats = await sc.client.getStats();
      expect(stats.l1?.expirations).toBe(1);
      expect(stats.l1?.entries).toBe(1);
      expect((await sc.client.get({ key: 'ttl/long' })).found).toBe(true);
      // The expired key is gone for GetMany too.
      const { results } = await sc.client.getMany({ keys: ['ttl/short', 'ttl/long'] });
      expect(results.map((r) => r.found)).toEqual([false, true]);
    });

    it('does not count an expired entry as deleted', async () => {
      const set = await sc.client.set({ key: 'ttl/delete', value: Buffer.from('x'), ttl: { seconds: 0, nanos: 100_000_000 } });
      const expiresAt = set.info!.expiresAt!.getTime();
      // Wait on the clock, not on a read: a read would purge the entry before Delete sees it.
      await waitFor(() => Date.now() > expiresAt + 20, 'the entry TTL to pass', 5000);
      expect((await sc.client.delete({ keys: ['ttl/delete'] })).deleted).toBe(0);
    });

    it('can write a key again after it expired', async () => {
      await sc.client.set({ key: 'ttl/again', value: Buffer.from('1'), ttl: { seconds: 0, nanos: 50_000_000 } });
      await waitFor(async () => !(await sc.client.get({ key: 'ttl/again' })).found, 'the entry to expire', 5000);
      await sc.client.set({ key: 'ttl/again', value: Buffer.from('2'), ifAbsent: true });
      expect(Buffer.from((await sc.client.get({ key: 'ttl/again' })).value).toString()).toBe('2');
    });
  });

  describe('byte bound', () => {
    const valueBytes = 64 * KiB;
    const key = (i: number) => `evict/${String(i).padStart(3, '0')}`;

    it('never holds more than CONTEXT_CACHE_L1_MAX_BYTES and evicts the least recently used key first', async () => {
      const sc = await startSidecar({ CONTEXT_CACHE_L1_MAX_BYTES: '1MiB' });
      const maxBytes = (await sc.client.getStats()).l1!.maxBytes;
      expect(maxBytes).toBe(MiB);

      const write = async (i: number) => {
        await sc.client.set({ key: key(i), value: Buffer.alloc(valueBytes, i % 256) });
        const { l1 } = await sc.client.getStats();
        expect(l1!.bytes).toBeLessThanOrEqual(maxBytes);
        // Each entry costs its value plus a little bookkeeping.
        expect(l1!.bytes).toBeGreaterThanOrEqual(l1!.entries * valueBytes);
        expect(l1!.bytes).toBeLessThanOrEqual(l1!.entries * (valueBytes + KiB));
        return l1!;
      };

      for (let i = 0; i < 4; i++) await write(i);
      // Reading key 0 makes it the most recently used; key 1 is now the least.
      expect((await sc.client.get({ key: key(0) })).found).toBe(true);

      let next = 4;
      let l1 = await write(next++);
      while (l1.evictions < 2) {
        expect(next).toBeLessThan(64); // 1 MiB holds about 15 of these; it must start evicting long before 64
        l1 = await write(next++);
      }
      expect(l1.evictions).toBe(2);
      // The bound is used, not just respected: bookkeeping is small next to 64 KiB values.
      expect(l1.entries).toBeGreaterThanOrEqual(Math.floor(MiB / (valueBytes + 4 * KiB)));

      const { results } = await sc.client.getMany({ keys: [key(0), key(1), key(2), key(3), key(next - 1)] });
      expect(results.map((r) => r.found)).toEqual([true, false, false, true, true]);
      expect(Buffer.from(results[0]!.value).equals(Buffer.alloc(valueBytes, 0))).toBe(true);

      // Keep writing: the bound holds however much is written.
      for (let i = 0; i < 40; i++) l1 = await write(next++);
      expect(l1.evictions).toBeGreaterThan(40);
      expect(l1.bytes).toBeLessThanOrEqual(maxBytes);
      await sc.close();
    });

    it('refuses (RESOURCE_EXHAUSTED) a value larger than the whole tier when there is no Redis, instead of evicting everything for it', async () => {
      const sc = await startSidecar({ CONTEXT_CACHE_L1_MAX_BYTES: '1MiB', CONTEXT_CACHE_MAX_VALUE_BYTES: '2MiB' });
      await sc.client.set({ key: 'small', value: Buffer.alloc(KiB) });
      const refused = await rejectionOf(sc.client.set({ key: 'huge', value: Buffer.alloc(MiB + KiB) }));
      expect(refused.code).toBe(status.RESOURCE_EXHAUSTED);
      expect(refused.details).toMatch(/does not fit/);
      expect((await sc.client.get({ key: 'huge' })).found).toBe(false);
      const { l1 } = await sc.client.getStats();
      expect(l1!.bytes).toBeLessThanOrEqual(MiB);
      expect((await sc.client.get({ key: 'small' })).found).toBe(true);
      await sc.close();
    });
  });
});

describe('L1Cache (unit)', () => {
  it('keeps exact-size copies of values that are views into larger buffers, so the byte bound is real memory', () => {
    const l1 = new L1Cache(MiB);
    const message = Buffer.alloc(64 * KiB, 1);
    const view = message.subarray(100, 100 + 512);
    expect(l1.set('k', { value: view, version: 1, tags: [], expiresAt: 0 })).toBe(true);
    const stored = l1.peek('k')!.value;
    expect(stored.equals(view)).toBe(true);
    expect(stored.buffer.byteLength).toBe(512);
    const exact = Buffer.allocUnsafeSlow(100);
    l1.set('exact', { value: exact, version: 1, tags: [], expiresAt: 0 });
    expect(l1.peek('exact')!.value).toBe(exact);
  });

  it('arms no timer to read or write entries with a TTL (a timer per call is an event-loop wake-up per call under a steady trickle)', () => {
    const l1 = new L1Cache(MiB);
    const armed = vi.spyOn(globalThis, 'setTimeout');
    const now = Date.now();
    for (let i = 0; i < 10; i++) {
      l1.set(`k${i}`, entry(1, 'v', [], now + 60_000));
      expect(l1.get(`k${i}`)?.version).toBe(1);
      l1.invalidate(`gone${i}`, 5);
    }
    expect(armed).not.toHaveBeenCalled();
    armed.mockRestore();
  });

  describe('versions', () => {
    it('never lets an older version overwrite a newer one', () => {
      const l1 = new L1Cache(MiB);
      expect(l1.set('k', entry(10, 'ten'))).toBe(true);
      expect(l1.set('k', entry(9, 'nine'))).toBe(false);
      expect(l1.peek('k')?.version).toBe(10);
      expect(l1.peek('k')?.value.toString()).toBe('ten');
      expect(l1.set('k', entry(11, 'eleven'))).toBe(true);
      expect(l1.peek('k')?.value.toString()).toBe('eleven');
      expect(l1.set('k', entry(1, 'one'))).toBe(false);
      expect(l1.get('k')?.version).toBe(11);
    });

    it('refuses an older version after the key was invalidated at a newer one', () => {
      const l1 = new L1Cache(MiB);
      l1.set('k', entry(10));
      expect(l1.invalidate('k', 20)).toBe(true);
      expect(l1.peek('k')).toBeUndefined();
      // A read that started before the invalidation comes back with version 10: refused.
      expect(l1.set('k', entry(10))).toBe(false);
      expect(l1.set('k', entry(19))).toBe(false);
      expect(l1.peek('k')).toBeUndefined();
      expect(l1.set('k', entry(21))).toBe(true);
      // An invalidation older than what is held leaves it alone.
      expect(l1.invalidate('k', 15)).toBe(false);
      expect(l1.peek('k')?.version).toBe(21);
    });

    it('refuses an entry that is already expired and removes the older copy', () => {
      const l1 = new L1Cache(MiB);
      const now = Date.now();
      l1.set('k', entry(1, 'old', [], now + 60_000), now);
      expect(l1.set('k', entry(2, 'dead', [], now - 1), now)).toBe(false);
      expect(l1.peek('k')).toBeUndefined();
    });
  });

  describe('tag index', () => {
    it('follows an overwrite to the new tags', () => {
      const l1 = new L1Cache(MiB);
      l1.set('k', entry(1, 'a', ['old']));
      l1.set('k', entry(2, 'b', ['new']));
      expect(l1.invalidateTags(['old'])).toHaveLength(0);
      expect(l1.peek('k')?.version).toBe(2);
      expect(l1.invalidateTags(['new'])).toHaveLength(1);
      expect(l1.peek('k')).toBeUndefined();
    });

    it('forgets the tags of an evicted entry', () => {
      const valueBytes = 100 * KiB;
      const l1 = new L1Cache(MiB);
      l1.set('victim', entry(1, 'x'.repeat(valueBytes), ['doomed']));
      for (let i = 0; l1.counters.evictions === 0; i++) {
        expect(i).toBeLessThan(20);
        l1.set(`filler-${i}`, entry(1, 'x'.repeat(valueBytes)));
      }
      expect(l1.peek('victim')).toBeUndefined();
      // The key comes back without the tag: invalidating the old tag must not touch it.
      l1.set('victim', entry(2, 'back'));
      expect(l1.invalidateTags(['doomed'])).toHaveLength(0);
      expect(l1.peek('victim')?.value.toString()).toBe('back');
    });

    it('forgets the tags of a deleted entry', () => {
      const l1 = new L1Cache(MiB);
      l1.set('k', entry(1, 'a', ['t']));
      expect(l1.delete('k')).toBe(true);
      l1.set('k', entry(2, 'b'));
      expect(l1.invalidateTags(['t'])).toHaveLength(0);
      expect(l1.peek('k')).toBeDefined();
    });

    it('forgets the tags of an expired entry once it is purged', async () => {
      const l1 = new L1Cache(MiB);
      const expiresAt = Date.now() + 30;
      l1.set('k', entry(1, 'a', ['t'], expiresAt));
      await waitFor(() => Date.now() > expiresAt + 5, 'the TTL to pass', 2000);
      expect(l1.get('k')).toBeUndefined();
      expect(l1.counters.expirations).toBe(1);
      l1.set('k', entry(2, 'b'));
      expect(l1.invalidateTags(['t'])).toHaveLength(0);
      expect(l1.peek('k')).toBeDefined();
    });

    it('removes an entry carrying several of the tags once and counts it once', () => {
      const l1 = new L1Cache(MiB);
      l1.set('both', entry(1, 'x', ['a', 'b']));
      l1.set('a-only', entry(1, 'x', ['a']));
      l1.set('c-only', entry(1, 'x', ['c']));
      expect(l1.invalidateTags(['a', 'b'])).toHaveLength(2);
      expect(l1.peek('c-only')).toBeDefined();
      expect(l1.entries).toBe(1);
    });

    it('does not count an expired entry as removed by a tag invalidation', async () => {
      const l1 = new L1Cache(MiB);
      const expiresAt = Date.now() + 30;
      l1.set('stale', entry(1, 'a', ['t'], expiresAt));
      l1.set('live', entry(1, 'b', ['t']));
      await waitFor(() => Date.now() > expiresAt + 5, 'the TTL to pass', 2000);
      expect(l1.invalidateTags(['t'])).toHaveLength(1);
      expect(l1.entries).toBe(0);
      expect(l1.counters.expirations).toBe(1);
    });

    it('does not count an expired entry as deleted, and counts it as an expiration', async () => {
      const l1 = new L1Cache(MiB);
      const expiresAt = Date.now() + 30;
      l1.set('stale', entry(1, 'a', [], expiresAt));
      await waitFor(() => Date.now() > expiresAt + 5, 'the TTL to pass', 2000);
      expect(l1.delete('stale')).toBe(false);
      expect(l1.entries).toBe(0);
      expect(l1.counters.expirations).toBe(1);
      expect(l1.delete('never-there')).toBe(false);
    });
  });

  describe('accounting', () => {
    it('counts bytes of keys, values and bookkeeping, and returns to zero when emptied', () => {
      const l1 = new L1Cache(MiB);
      l1.set('a', entry(1, 'x'.repeat(1000), ['tag']));
      l1.set('b', entry(1, 'y'.repeat(3000)));
      expect(l1.entries).toBe(2);
      expect(l1.bytes).toBe(entrySize('a', entry(1, 'x'.repeat(1000), ['tag'])) + entrySize('b', entry(1, 'y'.repeat(3000))));
      expect(l1.bytes).toBeGreaterThan(4000);
      l1.delete('a');
      l1.invalidateTags(['nothing']);
      l1.delete('b');
      expect(l1.bytes).toBe(0);
      expect(l1.entries).toBe(0);
    });

    it('counts hits and misses of get, not of peek', () => {
      const l1 = new L1Cache(MiB);
      l1.set('a', entry(1));
      l1.get('a');
      l1.get('missing');
      l1.peek('a');
      l1.peek('missing');
      expect(l1.counters).toMatchObject({ hits: 1, misses: 1 });
    });
  });
});
