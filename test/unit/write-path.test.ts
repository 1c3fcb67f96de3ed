import { describe, expect, it } from 'vitest';
import { isCacheError } from '../../src/errors';
import { l1Key } from '../../src/model/subject';
import { coreOnFakes, fromPeer, plainWrite } from '../helpers/fakes';
import { rejectionOf, waitFor } from '../helpers/wait';

const k = (key: string) => l1Key('entry', key);
const text = (value: Buffer | undefined) => value?.toString();

/** Asserts a CacheError with code E_CONFLICT. */
async function conflict(promise: Promise<unknown>): Promise<void> {
  const error = await rejectionOf(promise);
  expect(isCacheError(error, 'E_CONFLICT'), `expected E_CONFLICT, got ${String(error)}`).toBe(true);
}

describe('coherence mode', () => {
  it('is l1-only without a shared tier', () => {
    expect(coreOnFakes({ redis: false }).tiers.mode).toBe('l1-only');
  });

  it('is coherent while the shared tier is connected and the bus subscribed', () => {
    const core = coreOnFakes({ redis: true });
    expect(core.shared.connected).toBe(true);
    expect(core.shared.bus.subscribed).toBe(true);
    expect(core.tiers.mode).toBe('coherent');
  });

  it('is detached while connected but not subscribed, including before the first subscription', () => {
    expect(coreOnFakes({ redis: true, subscribed: false }).tiers.mode).toBe('detached');
    const core = coreOnFakes({ redis: true });
    core.shared.bus.unsubscribe();
    expect(core.tiers.mode).toBe('detached');
  });

  it('is degraded while the shared tier is not connected, whatever the bus says', () => {
    const core = coreOnFakes({ redis: true });
    core.shared.connected = false;
    expect(core.shared.bus.subscribed).toBe(true);
    expect(core.tiers.mode).toBe('degraded');
    expect(core.tiers.sharedUsable()).toBe(false);
  });
});

describe('Set', () => {
  it('while connected is shared: it lands in the store and in L1, and announces one key event', async () => {
    const core = coreOnFakes({ redis: true });
    const written = await core.entries.set('k', Buffer.from('v1'), plainWrite({ tags: ['t'] }));
    expect(written.scope).toBe('shared');

    const stored = core.shared.redis.entry('k');
    expect(text(stored?.value)).toBe('v1');
    expect(stored?.version).toBe(written.entry.version);
    expect(core.l1.peek(k('k'))?.version).toBe(written.entry.version);
    expect(text(core.l1.peek<Buffer>(k('k'))?.value)).toBe('v1');

    expect(core.eventsOf('key')).toEqual([{ kind: 'key', key: 'k', change: 'set', version: written.entry.version, tags: ['t'] }]);
    expect(core.events.every((envelope) => envelope.origin === core.origin)).toBe(true);
    expect(core.tiers.counters).toMatchObject({ published: 1, l2Errors: 0 });
    // The store itself published it for the other sidecars, once.
    expect(core.shared.redis.published.map((envelope) => envelope.event)).toEqual(core.eventsOf('key'));

    const read = await core.entries.get('k');
    expect(read?.source).toBe('l1');
    expect(core.shared.entries.callCount('getMany')).toBe(0);
  });

  it('when the store rejects is local: it counts an l2 error, is served from L1 afterwards, and nothing reached the store', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.entries.failNext();
    const written = await core.entries.set('k', Buffer.from('local'), plainWrite());
    expect(written.scope).toBe('local');
    expect(core.tiers.counters).toMatchObject({ l2Errors: 1, published: 0 });
    expect(core.shared.redis.entry('k')).toBeUndefined();
    expect(core.eventsOf('key')).toEqual([{ kind: 'key', key: 'k', change: 'set', version: written.entry.version, tags: [] }]);

    const read = await core.entries.get('k');
    expect(read?.source).toBe('l1');
    expect(text(read?.entry.value)).toBe('local');
  });

  it('when the store rejects gets a local version above the shared version L1 knew, even with Redis clock far ahead', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.clock.offsetMs = 3_600_000; // Redis's clock runs an hour ahead of this host.
    const v1 = await core.entries.set('k', Buffer.from('v1'), plainWrite());
    expect(v1.scope).toBe('shared');
    expect(v1.entry.version).toBeGreaterThan((Date.now() + 3_000_000) * 1000);

    core.shared.entries.failNext();
    const v2 = await core.entries.set('k', Buffer.from('v2'), plainWrite());
    expect(v2.scope).toBe('local');
    expect(v2.entry.version).toBeGreaterThan(v1.entry.version);
    expect(text((await core.entries.get('k'))?.entry.value)).toBe('v2');
    expect(core.shared.redis.entry('k')?.version).toBe(v1.entry.version);
  });

  it('that stays local gets a version above a newer version L1 only heard of (an invalidation floor)', async () => {
    const core = coreOnFakes({ redis: true });
    const tombstone = (Date.now() + 300_000) * 1000; // ahead of this host, within what Redis's clock makes plausible
    core.shared.bus.deliver(fromPeer({ kind: 'key', key: 'k', change: 'deleted', version: tombstone, tags: [] }));
    core.shared.connected = false;
    const written = await core.entries.set('k', Buffer.from('after'), plainWrite());
    expect(written.scope).toBe('local');
    expect(written.entry.version).toBeGreaterThan(tombstone);
    expect(core.l1.peek(k('k'))?.version).toBe(written.entry.version);
  });

  it('while degraded is local and the store is not called at all', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.connected = false;
    const written = await core.entries.set('k', Buffer.from('v'), plainWrite());
    expect(written.scope).toBe('local');
    expect(core.shared.entries.callCount()).toBe(0);
    // Not a failure: nothing was tried.
    expect(core.tiers.counters.l2Errors).toBe(0);
  });

  it('without a shared tier is local, with the TTL applied in L1', async () => {
    const core = coreOnFakes({ redis: false });
    const before = Date.now();
    const written = await core.entries.set('k', Buffer.from('v'), plainWrite({ ttlMs: 5_000 }));
    expect(written.scope).toBe('local');
    expect(written.entry.expiresAt).toBeGreaterThanOrEqual(before + 5_000);
    expect(written.entry.expiresAt).toBeLessThanOrEqual(Date.now() + 5_000);
    expect((await core.entries.get('k'))?.source).toBe('l1');
  });

  it('with a value too large for L1 while Redis is away is refused as E_TOO_LARGE, not silently dropped', async () => {
    const core = coreOnFakes({ redis: false, l1MaxBytes: 4096 });
    const error = await rejectionOf(core.entries.set('big', Buffer.alloc(8192), plainWrite()));
    expect(isCacheError(error, 'E_TOO_LARGE')).toBe(true);
    expect(core.eventsOf('key')).toEqual([]);
  });
});

describe('a refused conditional write', () => {
  /** A core with 'k' written once through Redis (so both the store and L1 hold v1). */
  async function withKey() {
    const core = coreOnFakes({ redis: true });
    const v1 = await core.entries.set('k', Buffer.from('v1'), plainWrite());
    core.events.length = 0;
    return { core, v1: v1.entry.version };
  }

  /** Nothing changed anywhere: L1 and the store still hold v1, nothing was announced, nothing failed over. */
  function unchanged(core: Awaited<ReturnType<typeof withKey>>['core'], v1: number) {
    expect(core.l1.peek(k('k'))?.version).toBe(v1);
    expect(text(core.l1.peek<Buffer>(k('k'))?.value)).toBe('v1');
    expect(core.shared.redis.entry('k')?.version).toBe(v1);
    expect(core.events).toEqual([]);
    expect(core.tiers.counters.l2Errors).toBe(0);
  }

  describe('on the shared path', () => {
    it('refuses if_absent on an existing key with E_CONFLICT and does not retry locally', async () => {
      const { core, v1 } = await withKey();
      await conflict(core.entries.set('k', Buffer.from('v2'), plainWrite({ ifAbsent: true })));
      expect(core.shared.entries.callCount('set')).toBe(2);
      unchanged(core, v1);
    });

    it('refuses an if_version mismatch with E_CONFLICT and does not retry locally', async () => {
      const { core, v1 } = await withKey();
      await conflict(core.entries.set('k', Buffer.from('v2'), plainWrite({ ifVersion: v1 - 1 })));
      unchanged(core, v1);
    });

    it('refuses if_version on a key that does not exist with E_CONFLICT', async () => {
      const { core } = await withKey();
      await conflict(core.entries.set('absent', Buffer.from('v'), plainWrite({ ifVersion: 12345 })));
      expect(core.l1.peek(k('absent'))).toBeUndefined();
      expect(core.shared.redis.entry('absent')).toBeUndefined();
    });

    it('accepts if_version when it matches the current version', async () => {
      const { core, v1 } = await withKey();
      const written = await core.entries.set('k', Buffer.from('v2'), plainWrite({ ifVersion: v1 }));
      expect(written.scope).toBe('shared');
      expect(written.entry.version).toBeGreaterThan(v1);
    });

    it('refuses a fill under a stale lease with E_CONFLICT, counts it, and does not retry locally', async () => {
      const { core, v1 } = await withKey();
      await conflict(core.entries.set('k', Buffer.from('v2'), plainWrite({ leaseToken: 'not-the-lease.123' })));
      expect(core.tiers.leases.counters.staleFillsRefused).toBe(1);
      unchanged(core, v1);
    });
  });

  describe('on the local path (Redis not connected)', () => {
    async function degraded() {
      const { core, v1 } = await withKey();
      core.shared.connected = false;
      return { core, v1 };
    }

    it('refuses if_absent on a key L1 holds with E_CONFLICT', async () => {
      const { core, v1 } = await degraded();
      await conflict(core.entries.set('k', Buffer.from('v2'), plainWrite({ ifAbsent: true })));
      unchanged(core, v1);
    });

    it('refuses an if_version mismatch with E_CONFLICT', async () => {
      const { core, v1 } = await degraded();
      await conflict(core.entries.set('k', Buffer.from('v2'), plainWrite({ ifVersion: v1 + 1 })));
      unchanged(core, v1);
    });

    it('refuses a fill under a lease this sidecar never granted with E_CONFLICT, and counts it', async () => {
      const { core, v1 } = await degraded();
      await conflict(core.entries.set('k', Buffer.from('v2'), plainWrite({ leaseToken: 'local.forged.1' })));
      expect(core.tiers.leases.counters.staleFillsRefused).toBe(1);
      unchanged(core, v1);
    });

    it('refuses a conditional write on the local fallback after the store failed, with E_CONFLICT', async () => {
      const { core, v1 } = await withKey();
      core.shared.entries.failNext();
      await conflict(core.entries.set('k', Buffer.from('v2'), plainWrite({ ifAbsent: true })));
      expect(core.tiers.counters.l2Errors).toBe(1);
      expect(core.l1.peek(k('k'))?.version).toBe(v1);
      expect(core.events).toEqual([]);
    });

    it('accepts if_version matching the version L1 holds', async () => {
      const { core, v1 } = await degraded();
      const written = await core.entries.set('k', Buffer.from('v2'), plainWrite({ ifVersion: v1 }));
      expect(written.scope).toBe('local');
      expect(written.entry.version).toBeGreaterThan(v1);
    });
  });
});

describe('Delete and tag invalidation', () => {
  it('a shared Delete removes the key from the store and L1, counts what existed, and announces tombstones', async () => {
    const core = coreOnFakes({ redis: true });
    const v1 = (await core.entries.set('a', Buffer.from('1'), plainWrite())).entry.version;
    core.events.length = 0;
    const deleted = await core.entries.delete(['a', 'b', 'a']);
    expect(deleted).toEqual({ deleted: 1, scope: 'shared' });
    expect(core.shared.redis.entry('a')).toBeUndefined();
    expect(core.l1.peek(k('a'))).toBeUndefined();
    const events = core.eventsOf('key');
    expect(events.map((event) => [event.key, event.change])).toEqual([
      ['a', 'deleted'],
      ['b', 'deleted'],
    ]);
    expect(events[0]!.version).toBeGreaterThan(v1);
  });

  it('a local Delete (store failing) drops L1 and leaves a floor; the older value in Redis is deleted by the replay, never read back', async () => {
    const core = coreOnFakes({ redis: true });
    const v1 = (await core.entries.set('a', Buffer.from('old'), plainWrite())).entry.version;
    core.shared.entries.failNext();
    expect(await core.entries.delete(['a'])).toEqual({ deleted: 1, scope: 'local' });
    expect(core.l1.peek(k('a'))).toBeUndefined();
    expect(core.l1.knownVersion(k('a'))).toBeGreaterThan(v1);

    // Until the replay is done the sidecar is degraded: the older value in Redis is not served.
    expect(core.tiers.mode).toBe('degraded');
    expect(await core.entries.get('a')).toBeUndefined();
    await waitFor(() => core.tiers.mode === 'coherent', 'the replay');
    expect(core.shared.redis.entry('a')).toBeUndefined();
    expect(await core.entries.get('a')).toBeUndefined();
    expect(core.l1.peek(k('a'))).toBeUndefined();
  });

  it('a shared tag invalidation removes tagged entries from the store and L1 and announces the keys', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('a', Buffer.from('1'), plainWrite({ tags: ['t'] }));
    await core.entries.set('b', Buffer.from('2'), plainWrite({ tags: ['u'] }));
    core.events.length = 0;
    const result = await core.entries.invalidateTags(['t']);
    expect(result).toEqual({ localEntriesRemoved: 1, scope: 'shared' });
    expect(core.shared.redis.entry('a')).toBeUndefined();
    expect(core.shared.redis.entry('b')).toBeDefined();
    expect(core.l1.peek(k('a'))).toBeUndefined();
    expect(core.l1.peek(k('b'))).toBeDefined();
    expect(core.eventsOf('tags')).toEqual([{ kind: 'tags', tags: ['t'], keys: ['a'] }]);
  });

  it('a tag invalidation while the store fails is local and still clears L1', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('a', Buffer.from('1'), plainWrite({ tags: ['t'] }));
    core.shared.entries.failNext();
    expect(await core.entries.invalidateTags(['t'])).toEqual({ localEntriesRemoved: 1, scope: 'local' });
    expect(core.l1.peek(k('a'))).toBeUndefined();
    expect(core.tiers.counters.l2Errors).toBe(1);
  });
});
