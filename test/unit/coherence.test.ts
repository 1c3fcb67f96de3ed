import { describe, expect, it } from 'vitest';
import type { SessionState } from '../../src/context/session';
import { l1Key } from '../../src/model/subject';
import { coreOnFakes, FakeRedis, fromPeer, nodeRecord, nodeRecords, PEER, plainWrite } from '../helpers/fakes';
import { waitFor } from '../helpers/wait';

const k = (key: string) => l1Key('entry', key);
const s = (sessionId: string) => l1Key('session', sessionId);
const text = (value: Buffer | undefined) => value?.toString();

describe("other sidecars' key and tag events", () => {
  it('a key event with a higher version drops L1 copy, and a later older fill is refused', async () => {
    const core = coreOnFakes({ redis: true });
    const v1 = (await core.entries.set('k', Buffer.from('v1'), plainWrite())).entry.version;
    core.shared.bus.deliver(fromPeer({ kind: 'key', key: 'k', change: 'set', version: v1 + 10, tags: [] }));
    expect(core.l1.peek(k('k'))).toBeUndefined();

    // The store (a lagging copy, say) still answers v1: served, but never back into L1.
    const read = await core.entries.get('k');
    expect(read?.source).toBe('l2');
    expect(read?.entry.version).toBe(v1);
    expect(core.l1.peek(k('k'))).toBeUndefined();
    expect(core.l1.set(k('k'), { value: Buffer.from('v1'), version: v1, tags: [], expiresAt: 0 })).toBe(false);
  });

  it('a key event with an older version leaves L1 copy alone', async () => {
    const core = coreOnFakes({ redis: true });
    const v1 = (await core.entries.set('k', Buffer.from('v1'), plainWrite())).entry.version;
    core.shared.bus.deliver(fromPeer({ kind: 'key', key: 'k', change: 'set', version: v1 - 1, tags: [] }));
    expect(core.l1.peek(k('k'))?.version).toBe(v1);
  });

  it('a key event reaches this sidecar watchers after L1 applied it, with the other sidecar as origin', async () => {
    const core = coreOnFakes({ redis: true });
    const v1 = (await core.entries.set('k', Buffer.from('v1'), plainWrite())).entry.version;
    let l1HeldItWhenHeard: boolean | undefined;
    core.hub.subscribe((envelope) => {
      if (envelope.origin === PEER) l1HeldItWhenHeard = core.l1.peek(k('k')) !== undefined;
    });
    core.shared.bus.deliver(fromPeer({ kind: 'key', key: 'k', change: 'deleted', version: v1 + 1, tags: [] }));
    expect(l1HeldItWhenHeard).toBe(false);
    expect(core.events.at(-1)?.origin).toBe(PEER);
  });

  it('a tags event drops the entries carrying any of the tags and keeps the others', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('a', Buffer.from('1'), plainWrite({ tags: ['t1'] }));
    await core.entries.set('b', Buffer.from('2'), plainWrite({ tags: ['t2'] }));
    await core.entries.set('c', Buffer.from('3'), plainWrite({ tags: ['t2', 't3'] }));
    await core.entries.set('d', Buffer.from('4'), plainWrite());
    core.shared.bus.deliver(fromPeer({ kind: 'tags', tags: ['t1', 't3'], keys: ['a', 'c'] }));
    expect(core.l1.peek(k('a'))).toBeUndefined();
    expect(core.l1.peek(k('b'))).toBeDefined();
    expect(core.l1.peek(k('c'))).toBeUndefined();
    expect(core.l1.peek(k('d'))).toBeDefined();
  });

  it('a tags event spares an entry that was rewritten without the tag', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('a', Buffer.from('tagged'), plainWrite({ tags: ['t'] }));
    await core.entries.set('a', Buffer.from('untagged'), plainWrite());
    core.shared.bus.deliver(fromPeer({ kind: 'tags', tags: ['t'], keys: [] }));
    expect(text(core.l1.peek<Buffer>(k('a'))?.value)).toBe('untagged');
  });
});

describe("other sidecars' events racing this sidecar's own write", () => {
  it('a newer write announced while our shared write awaited its reply keeps our older version out of L1', async () => {
    const redis = new FakeRedis();
    const a = coreOnFakes({ redis, origin: 'a' });
    const b = coreOnFakes({ redis, origin: 'b' });
    const hold = a.shared.entries.holdNext({ operation: 'set' });
    const writing = a.entries.set('k', Buffer.from('from a'), plainWrite());
    await hold.reached; // Redis has applied a's write; its reply is still on the way.
    const fromB = await b.entries.set('k', Buffer.from('from b'), plainWrite());
    hold.release();

    const fromA = await writing;
    expect(fromA.scope).toBe('shared');
    expect(fromA.entry.version).toBeLessThan(fromB.entry.version);
    expect(a.l1.peek(k('k'))).toBeUndefined();
    expect(text((await a.entries.get('k'))?.entry.value)).toBe('from b');
  });
});

describe("other sidecars' session events", () => {
  it('a forged event with a version far ahead of Redis\'s clock only makes L1 forget: no floor, so the next fill is cached again', async () => {
    const core = coreOnFakes({ redis: true });
    await core.sessions.put('s', nodeRecords('s', 2), '');
    core.shared.bus.deliver(fromPeer({ kind: 'appended', sessionId: 's', nodeId: 'forged', sessionVersion: Number.MAX_SAFE_INTEGER, previousVersion: 1 }));
    expect(core.l1.peek(s('s'))).toBeUndefined();
    expect(core.tiers.implausibleEvents).toBe(1);
    expect(core.l1.knownVersion(s('s'))).toBeLessThan(Number.MAX_SAFE_INTEGER);
    await core.sessions.put('s', nodeRecords('s', 3), '');
    expect(core.l1.peek<SessionState>(s('s'))?.value.nodes).toHaveLength(3);
  });


  it('an append event whose previous version is L1 version appends in place, with the node fetched from Redis', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    const next = nodeRecord('s', 2);
    core.shared.redis.lastAppended.set('s', { version: put.version + 5, node: next });
    core.shared.bus.deliver(fromPeer({ kind: 'appended', sessionId: 's', nodeId: next.id, sessionVersion: put.version + 5, previousVersion: put.version }));
    await waitFor(() => core.l1.peek(s('s'))?.version === put.version + 5, 'the fetched append to land in L1');

    const cached = core.l1.peek<SessionState>(s('s'));
    expect(cached?.version).toBe(put.version + 5);
    expect(cached?.value.nodes.map((node) => node.id)).toEqual(['s/n0', 's/n1', 's/n2']);
    expect(cached?.value.byShortId.get('s-2')?.id).toBe('s/n2');
    const read = await core.sessions.get('s');
    expect(read?.source).toBe('l1');
    expect(core.shared.sessions.callCount('getMany')).toBe(0);
  });

  it('an append event whose node Redis no longer holds (a later append replaced it) drops the copy: the bus is never trusted for data', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    core.shared.bus.deliver(fromPeer({ kind: 'appended', sessionId: 's', nodeId: 's/n2', sessionVersion: put.version + 5, previousVersion: put.version }));
    await waitFor(() => core.l1.peek(s('s')) === undefined, 'the copy to be dropped');
    expect(core.l1.knownVersion(s('s'))).toBe(put.version + 5);
  });

  it('an append event whose previous version is not L1 version drops the copy (a missed append in between)', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    core.shared.bus.deliver(fromPeer({ kind: 'appended', sessionId: 's', nodeId: 's/n3', sessionVersion: put.version + 9, previousVersion: put.version + 4 }));
    await waitFor(() => core.l1.peek(s('s')) === undefined, 'the copy to be dropped');
    // …and the copy it replaced cannot come back.
    expect(core.l1.knownVersion(s('s'))).toBe(put.version + 9);
  });

  it('a session invalidated or filled elsewhere drops the older copy', async () => {
    const core = coreOnFakes({ redis: true });
    const a = await core.sessions.put('a', nodeRecords('a', 1), '');
    const b = await core.sessions.put('b', nodeRecords('b', 1), '');
    core.shared.bus.deliver([
      fromPeer({ kind: 'session', sessionId: 'a', change: 'invalidated', version: a.version + 1 }),
      fromPeer({ kind: 'session', sessionId: 'b', change: 'filled', version: b.version + 1 }),
    ]);
    expect(core.l1.peek(s('a'))).toBeUndefined();
    expect(core.l1.peek(s('b'))).toBeUndefined();
  });
});

describe('resynchronization', () => {
  it('a restored subscription flushes L1 and announces a resync', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('k', Buffer.from('v'), plainWrite());
    await core.sessions.put('s', nodeRecords('s', 1), '');
    core.shared.bus.unsubscribe();
    core.shared.bus.subscribe(true);

    expect(core.l1.entries).toBe(0);
    expect(core.eventsOf('resync')).toEqual([{ kind: 'resync', reason: 'subscription-restored' }]);
    expect(core.tiers.counters.resyncs).toBe(1);
    expect((await core.entries.get('k'))?.source).toBe('l2');
  });

  it('a first subscription with an empty L1 announces nothing', () => {
    const core = coreOnFakes({ redis: true, subscribed: false });
    core.shared.bus.subscribe(false);
    expect(core.eventsOf('resync')).toEqual([]);
    expect(core.tiers.counters.resyncs).toBe(0);
  });

  it('a first subscription after writes made while detached flushes them (they may be stale)', async () => {
    const core = coreOnFakes({ redis: true, subscribed: false });
    await core.entries.set('k', Buffer.from('v'), plainWrite());
    expect(core.l1.entries).toBe(1);
    core.shared.bus.subscribe(false);
    expect(core.l1.entries).toBe(0);
    expect(core.eventsOf('resync')).toEqual([{ kind: 'resync', reason: 'subscription-restored' }]);
  });

  it('data loss in Redis flushes L1 with reason redis-data-lost', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('k', Buffer.from('v'), plainWrite());
    await core.sessions.put('s', nodeRecords('s', 1), '');
    core.shared.loseData();

    expect(core.l1.entries).toBe(0);
    expect(core.eventsOf('resync')).toEqual([{ kind: 'resync', reason: 'redis-data-lost' }]);
    expect(await core.entries.get('k')).toBeUndefined();
    expect(await core.sessions.get('s')).toBeUndefined();
  });
});

describe('two sidecars on one Redis', () => {
  function pair() {
    const redis = new FakeRedis();
    return { redis, a: coreOnFakes({ redis, origin: 'a' }), b: coreOnFakes({ redis, origin: 'b' }) };
  }

  it("a write on one sidecar drops the other's L1 copy, which then reads the new value from the store", async () => {
    const { a, b } = pair();
    await a.entries.set('k', Buffer.from('v1'), plainWrite());
    expect((await b.entries.get('k'))?.source).toBe('l2');
    expect((await b.entries.get('k'))?.source).toBe('l1');

    await a.entries.set('k', Buffer.from('v2'), plainWrite());
    expect(b.l1.peek(k('k'))).toBeUndefined();
    const read = await b.entries.get('k');
    expect(read?.source).toBe('l2');
    expect(text(read?.entry.value)).toBe('v2');
    // Each sidecar heard its own write once, from itself, and not its echo.
    expect(a.eventsOf('key')).toHaveLength(2);
    expect(a.events.every((envelope) => envelope.origin === 'a')).toBe(true);
    expect(b.events.filter((envelope) => envelope.origin === 'a')).toHaveLength(2);
  });

  it("an append on one sidecar extends the other's cached session in place", async () => {
    const { a, b } = pair();
    await a.sessions.put('s', nodeRecords('s', 2), '');
    await b.sessions.get('s');
    const appended = await a.sessions.append(nodeRecord('s', 2));
    expect(appended).toMatchObject({ appended: true, scope: 'shared' });

    const cached = b.l1.peek<SessionState>(s('s'));
    expect(cached?.version).toBe(appended.version);
    expect(cached?.value.nodes).toHaveLength(3);
  });

  it('a sidecar whose subscription dropped misses the write, then resynchronizes when it comes back', async () => {
    const { a, b } = pair();
    await a.entries.set('k', Buffer.from('v1'), plainWrite());
    await b.entries.get('k');
    b.shared.bus.unsubscribe();
    await a.entries.set('k', Buffer.from('v2'), plainWrite());
    // Missed: L1 still holds v1, but detached reads go to the store.
    expect(text(b.l1.peek<Buffer>(k('k'))?.value)).toBe('v1');
    expect(text((await b.entries.get('k'))?.entry.value)).toBe('v2');

    b.shared.bus.subscribe();
    expect(b.l1.peek(k('k'))).toBeUndefined();
    expect(text((await b.entries.get('k'))?.entry.value)).toBe('v2');
  });

  it("a local write on a sidecar cut off from Redis stays its own: the other sidecar keeps the shared value", async () => {
    const { a, b } = pair();
    await a.entries.set('k', Buffer.from('shared'), plainWrite());
    b.shared.connected = false;
    const local = await b.entries.set('k', Buffer.from('local'), plainWrite());
    expect(local.scope).toBe('local');
    expect(text((await a.entries.get('k'))?.entry.value)).toBe('shared');
    expect(text((await b.entries.get('k'))?.entry.value)).toBe('local');
  });
});
