import { describe, expect, it } from 'vitest';
import { LeaseManager } from '../../src/cache/leases';
import { PendingInvalidations, type PendingBatch } from '../../src/cache/pending';
import type { SessionState } from '../../src/context/session';
import { isCacheError } from '../../src/errors';
import type { CacheEvent } from '../../src/model/events';
import { l1Key } from '../../src/model/subject';
import { coreOnFakes, FakeRedis, leaseRequest, nodeRecord, nodeRecords, plainWrite, type CoreOnFakes, type CoreOptions } from '../helpers/fakes';
import { rejectionOf, waitFor } from '../helpers/wait';

/**
 * Recovery after Redis was away: writes that stayed local are recorded
 * (`tiers.pending`) and replayed as invalidations — never as values — once
 * the shared tier answers again; until then the sidecar is degraded, and its
 * L1 reads are marked and capped.
 */

const k = (key: string) => l1Key('entry', key);
const s = (sessionId: string) => l1Key('session', sessionId);
const text = (value: Buffer | undefined) => value?.toString();
const value = (content: string) => Buffer.from(content);

type Core = CoreOnFakes & { shared: NonNullable<CoreOnFakes['shared']> };

/** What the pending set names right now, sorted (read by taking it all and putting it back). */
function pendingNames(core: Core): PendingBatch {
  const batch = core.tiers.pending.take(Number.POSITIVE_INFINITY);
  core.tiers.pending.restore(batch);
  return { entry: [...batch.entry].sort(), session: [...batch.session].sort(), tag: [...batch.tag].sort() };
}

const none: PendingBatch = { entry: [], session: [], tag: [] };

/** Waits until the replay is done: nothing pending, nothing in flight, coherent again. */
async function replayDone(core: Core, timeoutMs = 5_000): Promise<void> {
  await waitFor(() => core.tiers.mode === 'coherent' && core.tiers.pending.empty, `${core.origin} to replay and be coherent again`, timeoutMs, 2);
}

/** Lets every timer that is due run (to show that nothing happened, which no poll can observe). */
const timersRun = () => new Promise((resolve) => setTimeout(resolve, 25));

/** The events this sidecar announced itself (not other sidecars' events it relayed), after `from`. */
function ownEvents(core: Core, from = 0): CacheEvent[] {
  return core.events
    .slice(from)
    .filter((envelope) => envelope.origin === core.origin)
    .map((envelope) => envelope.event);
}

/** The events of `origin` that reached this sidecar from the bus. */
function eventsFrom(core: Core, origin: string): CacheEvent[] {
  return core.events.filter((envelope) => envelope.origin === origin).map((envelope) => envelope.event);
}

/** Sidecars a and b on one FakeRedis. */
function twoSidecars(options: Partial<CoreOptions> = {}): { redis: FakeRedis; a: Core; b: Core } {
  const redis = new FakeRedis();
  const a = coreOnFakes({ ...options, redis, origin: 'a' });
  const b = coreOnFakes({ redis, origin: 'b' });
  return { redis, a, b };
}

async function expectStale(promise: Promise<unknown>): Promise<void> {
  const error = await rejectionOf(promise);
  expect(isCacheError(error, 'E_CONFLICT'), `expected E_CONFLICT, got ${String(error)}`).toBe(true);
}

describe('writes while the shared tier is not connected', () => {
  const writes: [string, (core: Core) => Promise<{ scope: string }>, PendingBatch][] = [
    ['Set', (core) => core.entries.set('k', value('local'), plainWrite({ tags: ['t'] })), { ...none, entry: ['k'] }],
    ['Delete', (core) => core.entries.delete(['k', 'other', 'k']), { ...none, entry: ['k', 'other'] }],
    ['InvalidateTags', (core) => core.entries.invalidateTags(['t', 'u']), { ...none, tag: ['t', 'u'] }],
    ['PutSessionNodes', (core) => core.sessions.put('s', nodeRecords('s', 2), ''), { ...none, session: ['s'] }],
    ['AppendNode', (core) => core.sessions.append(nodeRecord('s', 0)), { ...none, session: ['s'] }],
    ['InvalidateSession', (core) => core.sessions.invalidate('s'), { ...none, session: ['s'] }],
  ];

  it.each(writes)('%s is answered local, adds its subjects to the pending set, and nothing is replayed while disconnected', async (_, write, expected) => {
    const core = coreOnFakes({ redis: true });
    // Something of each kind in Redis and L1 first, so the write supersedes a shared state.
    await core.entries.set('k', value('shared'), plainWrite({ tags: ['t'] }));
    await core.sessions.put('s', nodeRecords('s', 1), '');
    const callsBefore = core.shared.entries.callCount() + core.shared.sessions.callCount();
    const publishedBefore = core.shared.redis.published.length;
    core.shared.connected = false;

    expect((await write(core)).scope).toBe('local');
    expect(pendingNames(core)).toEqual(expected);
    expect(core.tiers.pending.size).toBe(expected.entry.length + expected.session.length + expected.tag.length);
    expect(core.tiers.pending.empty).toBe(false);

    await timersRun();
    expect(core.tiers.counters.replayed).toBe(0);
    expect(core.shared.entries.callCount() + core.shared.sessions.callCount()).toBe(callsBefore);
    expect(core.shared.redis.published.length).toBe(publishedBefore);
    expect(pendingNames(core)).toEqual(expected);
    expect(core.tiers.mode).toBe('degraded');
  });

  it('records each subject once however often it is written, across kinds', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.connected = false;
    await core.entries.set('k', value('1'), plainWrite());
    await core.entries.set('k', value('2'), plainWrite());
    await core.entries.delete(['k']);
    await core.sessions.put('s', nodeRecords('s', 1), '');
    await core.sessions.append(nodeRecord('s', 1));
    await core.entries.invalidateTags(['t']);
    await core.entries.invalidateTags(['t']);
    expect(pendingNames(core)).toEqual({ entry: ['k'], session: ['s'], tag: ['t'] });
    expect(core.tiers.pending.size).toBe(3);
  });

  it('without a shared tier records nothing (there is nothing to replay into)', async () => {
    const core = coreOnFakes({ redis: false });
    await core.entries.set('k', value('v'), plainWrite());
    await core.sessions.put('s', nodeRecords('s', 1), '');
    expect(core.tiers.pending.empty).toBe(true);
  });
});

describe('the replay when the shared tier connects again', () => {
  /**
   * a and b both hold e1, e2, `tagged` (tag T), `kept`, s1 and `kept-session`
   * in L1 (a wrote them, b read them from Redis); then a, disconnected,
   * writes e1, deletes e2, invalidates T and appends to s1.
   */
  async function localWritesOnA() {
    const { redis, a, b } = twoSidecars();
    await a.entries.set('e1', value('v1'), plainWrite());
    await a.entries.set('e2', value('v2'), plainWrite());
    await a.entries.set('tagged', value('t'), plainWrite({ tags: ['T'] }));
    await a.entries.set('kept', value('k'), plainWrite());
    await a.sessions.put('s1', nodeRecords('s1', 2), '');
    await a.sessions.put('kept-session', nodeRecords('kept-session', 1), '');
    const reads = await b.entries.getMany(['e1', 'e2', 'tagged', 'kept']);
    expect(reads.map((read) => read?.source)).toEqual(['l2', 'l2', 'l2', 'l2']);
    const sessions = await b.sessions.getMany(['s1', 'kept-session']);
    expect([...sessions.values()].map((read) => read.source)).toEqual(['l2', 'l2']);
    for (const key of [k('e1'), k('e2'), k('tagged'), k('kept'), s('s1'), s('kept-session')]) expect(b.l1.peek(key), key).toBeDefined();

    a.shared.connected = false;
    expect((await a.entries.set('e1', value('local e1'), plainWrite())).scope).toBe('local');
    expect((await a.entries.delete(['e2'])).scope).toBe('local');
    expect((await a.entries.invalidateTags(['T'])).scope).toBe('local');
    expect((await a.sessions.append(nodeRecord('s1', 2))).scope).toBe('local');
    expect(pendingNames(a)).toEqual({ entry: ['e1', 'e2'], session: ['s1'], tag: ['T'] });
    // a's own L1 holds what it wrote locally.
    expect(text(a.l1.peek<Buffer>(k('e1'))?.value)).toBe('local e1');
    expect(a.l1.peek<SessionState>(s('s1'))?.value.nodes).toHaveLength(3);
    // Nothing of it reached Redis or b.
    expect(text(redis.entry('e1')?.value)).toBe('v1');
    expect(redis.entry('e2')).toBeDefined();
    expect(redis.entry('tagged')).toBeDefined();
    expect(redis.session('s1')?.nodes).toHaveLength(2);
    expect(text(b.l1.peek<Buffer>(k('e1'))?.value)).toBe('v1');
    return { redis, a, b, aEventsBefore: a.events.length, bEventsBefore: b.events.length };
  }

  it('invalidates the pending subjects in Redis: entries deleted, tag-carrying entries gone, sessions gone; the rest stays', async () => {
    const { redis, a } = await localWritesOnA();
    a.shared.connected = true;
    await replayDone(a);

    expect(redis.entry('e1')).toBeUndefined();
    expect(redis.entry('e2')).toBeUndefined();
    expect(redis.entry('tagged')).toBeUndefined();
    expect(redis.session('s1')).toBeUndefined();
    expect(text(redis.entry('kept')?.value)).toBe('k');
    expect(redis.session('kept-session')).toBeDefined();
    expect(a.shared.entries.callCount('delete')).toBe(1);
    expect(a.shared.entries.callCount('invalidateTags')).toBe(1);
    expect(a.shared.sessions.callCount('invalidate')).toBe(1);
  });

  it("reaches the other sidecar: b receives the invalidation events and drops its L1 copies", async () => {
    const { a, b, bEventsBefore } = await localWritesOnA();
    a.shared.connected = true;
    await replayDone(a);

    for (const key of [k('e1'), k('e2'), k('tagged'), s('s1')]) expect(b.l1.peek(key), key).toBeUndefined();
    expect(b.l1.peek(k('kept'))).toBeDefined();
    expect(b.l1.peek(s('kept-session'))).toBeDefined();

    const received = b.events.slice(bEventsBefore).filter((envelope) => envelope.origin === 'a').map((envelope) => envelope.event);
    expect(received).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ kind: 'key', key: 'e1', change: 'deleted' }),
        expect.objectContaining({ kind: 'key', key: 'e2', change: 'deleted' }),
        { kind: 'tags', tags: ['T'], keys: ['tagged'] },
        expect.objectContaining({ kind: 'session', sessionId: 's1', change: 'invalidated' }),
      ]),
    );
    expect(received).toHaveLength(4);
    // What b reads now comes from nowhere: the app refills from its source of truth.
    expect(await b.entries.getMany(['e1', 'e2', 'tagged'])).toEqual([undefined, undefined, undefined]);
    expect(await b.sessions.get('s1')).toBeUndefined();
  });

  it("drops a's own L1 copies of the subjects, announces the events on a's hub, counts them, and returns to coherent", async () => {
    const { a, aEventsBefore } = await localWritesOnA();
    expect(a.tiers.mode).toBe('degraded');
    a.shared.connected = true;
    await replayDone(a);

    expect(a.l1.peek(k('e1'))).toBeUndefined();
    expect(a.l1.peek(k('e2'))).toBeUndefined();
    expect(a.l1.peek(s('s1'))).toBeUndefined();
    expect(a.l1.peek(k('kept'))).toBeDefined();
    expect(a.l1.peek(s('kept-session'))).toBeDefined();

    const announced = ownEvents(a, aEventsBefore);
    expect(announced).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ kind: 'key', key: 'e1', change: 'deleted' }),
        expect.objectContaining({ kind: 'key', key: 'e2', change: 'deleted' }),
        expect.objectContaining({ kind: 'tags', tags: ['T'] }),
        expect.objectContaining({ kind: 'session', sessionId: 's1', change: 'invalidated' }),
      ]),
    );
    expect(announced).toHaveLength(4);

    expect(a.tiers.counters.replayed).toBe(4);
    expect(a.tiers.pending.empty).toBe(true);
    expect(a.tiers.pending.size).toBe(0);
    expect(a.tiers.mode).toBe('coherent');
    expect(a.tiers.counters.l2Errors).toBe(0);
    // Coherent again: a miss goes to Redis, and a write is shared.
    expect(await a.entries.get('e1')).toBeUndefined();
    expect(a.shared.entries.callCount('getMany')).toBe(1);
    expect((await a.entries.set('after', value('x'), plainWrite())).scope).toBe('shared');
  });

  it('replays the tombstones above the versions every copy had, so no older copy can come back into L1', async () => {
    const { redis, a, b } = await localWritesOnA();
    const shared = b.l1.peek(k('e1'))!.version;
    const local = a.l1.peek(k('e1'))!.version;
    a.shared.connected = true;
    await replayDone(a);
    const tombstone = redis.published.find((envelope) => envelope.event.kind === 'key' && envelope.event.key === 'e1' && envelope.event.change === 'deleted')!;
    expect(tombstone.origin).toBe('a');
    const version = (tombstone.event as Extract<CacheEvent, { kind: 'key' }>).version;
    expect(version).toBeGreaterThan(shared);
    // A fill of b's old copy is refused by b's L1.
    expect(b.l1.set(k('e1'), { value: value('v1'), version: shared, tags: [], expiresAt: 0 })).toBe(false);
    // a's own local copy (version `local`) is gone, and L1 keeps the tombstone as a floor.
    expect(a.l1.peek(k('e1'))).toBeUndefined();
    expect(a.l1.knownVersion(k('e1'))).toBeGreaterThanOrEqual(version);
    expect(local).toBeGreaterThan(shared);
  });
});

describe('until the replay has finished', () => {
  it('the sidecar is degraded: writes are local and recorded, reads do not go to the store; what was recorded meanwhile is replayed too', async () => {
    const { redis, a, b } = twoSidecars();
    await a.entries.set('during', value('shared'), plainWrite());
    await a.sessions.put('s-during', nodeRecords('s-during', 1), '');
    expect((await b.entries.get('during'))?.source).toBe('l2');
    expect((await b.sessions.get('s-during'))?.source).toBe('l2');

    a.shared.connected = false;
    await a.entries.set('before', value('local'), plainWrite());
    const hold = a.shared.entries.holdNext({ operation: 'delete', phase: 'request' });
    a.shared.connected = true;
    await hold.reached;

    // Connected, but the replay is in flight.
    expect(a.shared.connected).toBe(true);
    expect(a.tiers.mode).toBe('degraded');
    expect(a.tiers.sharedUsable()).toBe(false);
    const getsBefore = a.shared.entries.callCount('getMany');
    const sessionGetsBefore = a.shared.sessions.callCount('getMany');
    const setsBefore = a.shared.entries.callCount('set');

    expect((await a.entries.set('during', value('local during'), plainWrite())).scope).toBe('local');
    expect((await a.sessions.append(nodeRecord('s-during', 1))).scope).toBe('local');
    expect((await a.entries.invalidateTags(['late'])).scope).toBe('local');
    expect(pendingNames(a)).toEqual({ entry: ['during'], session: ['s-during'], tag: ['late'] });
    expect(a.shared.entries.callCount('set')).toBe(setsBefore);

    expect(await a.entries.get('not-in-l1')).toBeUndefined();
    expect(await a.sessions.get('not-in-l1')).toBeUndefined();
    const during = await a.entries.get('during');
    expect(during?.source).toBe('l1');
    expect(during?.degraded).toBe(true);
    expect(a.shared.entries.callCount('getMany')).toBe(getsBefore);
    expect(a.shared.sessions.callCount('getMany')).toBe(sessionGetsBefore);
    // Still in flight: the first batch is not counted yet.
    expect(a.tiers.counters.replayed).toBe(0);

    hold.release();
    await replayDone(a);
    expect(a.tiers.counters.replayed).toBe(4); // 'before', then 'during', 's-during' and 'late'.
    expect(a.shared.entries.callCount('delete')).toBe(2);
    expect(redis.entry('during')).toBeUndefined();
    expect(redis.session('s-during')).toBeUndefined();
    expect(b.l1.peek(k('during'))).toBeUndefined();
    expect(b.l1.peek(s('s-during'))).toBeUndefined();
    expect(a.l1.peek(k('during'))).toBeUndefined();
    expect(a.tiers.mode).toBe('coherent');
  });
});

describe('a replay that fails', () => {
  it('puts the batch back and is retried until it succeeds; the sidecar stays degraded meanwhile and l2Errors counts the failure', async () => {
    const { redis, a } = twoSidecars();
    await a.entries.set('k', value('shared'), plainWrite());
    await a.sessions.put('s', nodeRecords('s', 1), '');
    a.shared.connected = false;
    await a.entries.set('k', value('local'), plainWrite());
    await a.sessions.append(nodeRecord('s', 1));
    a.shared.entries.failNext();
    a.shared.connected = true;

    await waitFor(() => a.tiers.counters.l2Errors >= 1, 'the replay to fail', 2_000, 1);
    expect(a.tiers.counters.l2Errors).toBe(1);
    // The whole batch is back (the session's invalidation too), and nothing was counted as replayed.
    expect(pendingNames(a)).toEqual({ entry: ['k'], session: ['s'], tag: [] });
    expect(a.tiers.counters.replayed).toBe(0);
    expect(a.tiers.mode).toBe('degraded');
    expect(text(redis.entry('k')?.value)).toBe('shared');

    await replayDone(a);
    expect(a.shared.entries.callCount('delete')).toBe(2);
    expect(a.tiers.counters.l2Errors).toBe(1);
    expect(a.tiers.counters.replayed).toBe(2);
    expect(redis.entry('k')).toBeUndefined();
    expect(redis.session('s')).toBeUndefined();
  });

  it('is retried with backoff: three failures in a row take at least the three lower bounds of the jittered delays (50 + 100 + 200 ms)', async () => {
    const { redis, a } = twoSidecars();
    a.shared.connected = false;
    await a.entries.set('k', value('local'), plainWrite());
    a.shared.entries.failNext(3);
    const started = Date.now();
    a.shared.connected = true;

    await waitFor(() => a.tiers.counters.l2Errors >= 1, 'the first failure', 2_000, 1);
    // Degraded between the attempts: a write is local (and recorded), and does not cut the backoff short.
    expect(a.tiers.mode).toBe('degraded');
    expect((await a.entries.set('between', value('local'), plainWrite())).scope).toBe('local');
    expect(a.tiers.pending.size).toBe(2);

    await replayDone(a, 10_000);
    const took = Date.now() - started;
    expect(a.shared.entries.callCount('delete')).toBe(4);
    expect(a.tiers.counters.l2Errors).toBe(3);
    expect(took).toBeGreaterThanOrEqual(330);
    expect(a.tiers.counters.replayed).toBe(2);
    expect(redis.entry('k')).toBeUndefined();
  });

  it('while disconnected again is taken up on the next reconnection', async () => {
    const { a } = twoSidecars();
    a.shared.connected = false;
    await a.entries.set('k', value('local'), plainWrite());
    const hold = a.shared.entries.holdNext({ operation: 'delete', phase: 'request' });
    a.shared.connected = true;
    await hold.reached;
    a.shared.connected = false;
    hold.fail();
    await waitFor(() => a.tiers.counters.l2Errors >= 1, 'the replay to fail');
    await timersRun();
    expect(a.tiers.mode).toBe('degraded');
    expect(pendingNames(a)).toEqual({ ...none, entry: ['k'] });
    expect(a.shared.entries.callCount('delete')).toBe(1);

    a.shared.connected = true;
    await replayDone(a);
    expect(a.shared.entries.callCount('delete')).toBe(2);
    expect(a.tiers.counters.replayed).toBe(1);
  });
});

describe('a write that fails under a connected shared tier', () => {
  it('is local, recorded, and replayed at once without a reconnection', async () => {
    const { redis, a, b } = twoSidecars();
    await a.entries.set('k', value('v1'), plainWrite());
    expect((await b.entries.get('k'))?.source).toBe('l2');
    a.shared.entries.failNext();

    const written = await a.entries.set('k', value('v2'), plainWrite());
    expect(written.scope).toBe('local');
    expect(a.tiers.counters.l2Errors).toBe(1);
    expect(pendingNames(a)).toEqual({ ...none, entry: ['k'] });
    expect(a.tiers.mode).toBe('degraded');

    await replayDone(a, 2_000);
    expect(a.shared.connected).toBe(true);
    expect(a.tiers.counters.replayed).toBe(1);
    expect(redis.entry('k')).toBeUndefined();
    expect(b.l1.peek(k('k'))).toBeUndefined();
    expect(a.l1.peek(k('k'))).toBeUndefined();
    expect(await b.entries.get('k')).toBeUndefined();
  });

  it('of a session (the append failed) is replayed at once too', async () => {
    const { redis, a, b } = twoSidecars();
    await a.sessions.put('s', nodeRecords('s', 2), '');
    expect((await b.sessions.get('s'))?.source).toBe('l2');
    a.shared.sessions.failNext();
    expect((await a.sessions.append(nodeRecord('s', 2))).scope).toBe('local');

    await replayDone(a, 2_000);
    expect(a.tiers.counters.replayed).toBe(1);
    expect(redis.session('s')).toBeUndefined();
    expect(b.l1.peek(s('s'))).toBeUndefined();
    expect(a.l1.peek(s('s'))).toBeUndefined();
  });
});

describe('a fill lease held by another sidecar across the replay', () => {
  it("b's fill under a lease granted before a's replayed append is refused as stale, and the session is not in Redis", async () => {
    const { redis, a, b } = twoSidecars();
    const leased = await b.sessions.getOrLease('s', leaseRequest());
    expect(leased.read).toBeUndefined();
    const token = leased.lease!.token;
    expect(LeaseManager.isLocal(token)).toBe(false);
    expect(redis.leaseHolds({ kind: 'session', id: 's' }, token)).toBe(true);

    a.shared.connected = false;
    expect((await a.sessions.append(nodeRecord('s', 0))).scope).toBe('local');
    // Redis never heard of the append: b's lease still holds.
    expect(redis.leaseHolds({ kind: 'session', id: 's' }, token)).toBe(true);
    a.shared.connected = true;
    await replayDone(a);
    expect(redis.leaseHolds({ kind: 'session', id: 's' }, token)).toBe(false);

    // b loaded the session from its database before a's node: its fill must not land.
    await expectStale(b.sessions.put('s', nodeRecords('s', 0), token));
    expect(b.tiers.leases.counters.staleFillsRefused).toBe(1);
    expect(redis.session('s')).toBeUndefined();
    expect(b.l1.peek(s('s'))).toBeUndefined();

    // The next read misses, and the refill (with a's node now in the database) lands.
    const again = await b.sessions.getOrLease('s', leaseRequest());
    expect(again.read).toBeUndefined();
    expect(again.lease).toBeDefined();
    const refilled = await b.sessions.put('s', nodeRecords('s', 1), again.lease!.token);
    expect(refilled.scope).toBe('shared');
    expect(redis.session('s')?.nodes.map((node) => node.id)).toEqual(['s/n0']);
  });

  it("b's fill that landed before a reconnected is invalidated by the replay: gone from Redis and from b's L1", async () => {
    const { redis, a, b } = twoSidecars();
    const leased = await b.sessions.getOrLease('s', leaseRequest());
    a.shared.connected = false;
    expect((await a.sessions.append(nodeRecord('s', 0))).scope).toBe('local');

    // b fills without a's node (its database read raced a's write): Redis accepts it.
    const filled = await b.sessions.put('s', [], leased.lease!.token);
    expect(filled.scope).toBe('shared');
    expect(redis.session('s')?.nodes).toEqual([]);
    expect(b.l1.peek(s('s'))?.version).toBe(filled.version);

    a.shared.connected = true;
    await replayDone(a);
    expect(redis.session('s')).toBeUndefined();
    expect(b.l1.peek(s('s'))).toBeUndefined();
    expect(await b.sessions.get('s')).toBeUndefined();
    expect(eventsFrom(b, 'a')).toEqual([expect.objectContaining({ kind: 'session', sessionId: 's', change: 'invalidated' })]);
  });

  it("the same holds for an entry: b's fill under a lease granted before a's replayed Set is refused", async () => {
    const { redis, a, b } = twoSidecars();
    const leased = await b.entries.getOrLease('k', leaseRequest());
    a.shared.connected = false;
    expect((await a.entries.set('k', value('from a'), plainWrite())).scope).toBe('local');
    a.shared.connected = true;
    await replayDone(a);
    await expectStale(b.entries.set('k', value('old load'), plainWrite({ leaseToken: leased.lease!.token })));
    expect(redis.entry('k')).toBeUndefined();
  });
});

describe('values are never replayed', () => {
  it('after the replay the key a wrote locally is absent from Redis, not a\'s value; nor is a local session', async () => {
    const { redis, a, b } = twoSidecars();
    await a.entries.set('k', value('old'), plainWrite());
    const setsBefore = a.shared.entries.callCount('set');
    const publishedBefore = redis.published.length;
    a.shared.connected = false;
    await a.entries.set('k', value('from a'), plainWrite());
    await a.entries.set('new', value('from a too'), plainWrite());
    await a.sessions.put('s', nodeRecords('s', 2), '');
    await a.sessions.append(nodeRecord('s', 2));

    a.shared.connected = true;
    await replayDone(a);
    expect(redis.entry('k')).toBeUndefined();
    expect(redis.entry('new')).toBeUndefined();
    expect(redis.session('s')).toBeUndefined();
    for (const stored of redis.entries.values()) expect(text(stored.value)).not.toMatch(/from a/);
    // No write of a value went to Redis, and nothing announced a set or a fill.
    expect(a.shared.entries.callCount('set')).toBe(setsBefore);
    expect(a.shared.sessions.callCount('put')).toBe(0);
    expect(a.shared.sessions.callCount('append')).toBe(0);
    const replayedEvents = redis.published.slice(publishedBefore).map((envelope) => envelope.event);
    expect(replayedEvents.length).toBeGreaterThan(0);
    for (const event of replayedEvents) {
      expect(event.kind === 'key' ? event.change : event.kind === 'session' ? event.change : event.kind).toMatch(/^(deleted|invalidated|tags)$/);
    }
    expect(await b.entries.get('k')).toBeUndefined();
    expect(await a.entries.get('k')).toBeUndefined();
  });
});

describe('a pending set that overflowed', () => {
  it('becomes one namespace flush on reconnection: Redis is emptied, and both sidecars resync', async () => {
    const { redis, a, b } = twoSidecars({ pending: { maxCount: 3 } });
    await b.entries.set('b1', value('1'), plainWrite());
    await b.entries.set('b2', value('2'), plainWrite({ tags: ['t'] }));
    await b.sessions.put('bs', nodeRecords('bs', 2), '');
    redis.seedEntry('seeded', 'x');
    redis.seedSession('seeded-session', nodeRecords('seeded-session', 1));
    expect(b.l1.entries).toBe(3);

    a.shared.connected = false;
    await a.entries.set('x1', value('1'), plainWrite());
    await a.entries.set('x2', value('2'), plainWrite());
    await a.sessions.put('xs', nodeRecords('xs', 1), '');
    expect(a.tiers.pending.overflowed).toBe(false);
    expect(a.tiers.pending.size).toBe(3);
    await a.entries.delete(['b1']);
    expect(a.tiers.pending.overflowed).toBe(true);
    expect(a.tiers.pending.size).toBe(0);
    expect(a.tiers.pending.empty).toBe(false);
    expect(a.l1.entries).toBeGreaterThan(0);
    const aEvents = a.events.length;
    const bEvents = b.events.length;

    a.shared.connected = true;
    await replayDone(a);

    expect(a.shared.flushes).toBe(1);
    expect(b.shared.flushes).toBe(0);
    expect(redis.entries.size).toBe(0);
    expect(redis.sessions.size).toBe(0);
    expect(a.tiers.counters.namespaceFlushes).toBe(1);
    // Nothing was replayed by name.
    expect(a.shared.entries.callCount('delete')).toBe(0);
    expect(a.shared.sessions.callCount('invalidate')).toBe(0);

    // a resyncs on its own: L1 flushed, its watchers told.
    expect(a.l1.entries).toBe(0);
    expect(ownEvents(a, aEvents)).toEqual([{ kind: 'resync', reason: 'namespace-flushed' }]);
    expect(a.tiers.counters.resyncs).toBe(1);

    // b resyncs on the remote event: its L1 flushed, its own hub has the resync.
    await waitFor(() => b.tiers.counters.resyncs === 1, 'b to resync');
    expect(b.l1.entries).toBe(0);
    expect(ownEvents(b, bEvents)).toEqual([{ kind: 'resync', reason: 'namespace-flushed' }]);
    expect(await b.entries.getMany(['b1', 'b2', 'seeded'])).toEqual([undefined, undefined, undefined]);
    expect(await b.sessions.get('bs')).toBeUndefined();

    expect(a.tiers.pending.overflowed).toBe(false);
    expect(a.tiers.mode).toBe('coherent');
  });

  // The pending set is cleared before the flush is awaited, so what is recorded while the flush runs is replayed
  // after it (clearing it afterwards would forget such a write while the sidecar returns to coherent).
  it('a write that stays local while the namespace flush is in flight is still invalidated in Redis afterwards', async () => {
    const { redis, a, b } = twoSidecars({ pending: { maxCount: 1 } });
    a.shared.connected = false;
    await a.entries.set('x1', value('1'), plainWrite());
    await a.entries.set('x2', value('2'), plainWrite());
    expect(a.tiers.pending.overflowed).toBe(true);
    // The flush has passed every key (as a SCAN has) and is finishing when the writes below happen.
    let finish!: () => void;
    const finishing = new Promise<void>((resolve) => (finish = resolve));
    let reached!: () => void;
    const flushReached = new Promise<void>((resolve) => (reached = resolve));
    const flush = a.shared.flushNamespace.bind(a.shared);
    a.shared.flushNamespace = async () => {
      await flush();
      reached();
      await finishing;
    };
    a.shared.connected = true;
    await flushReached;

    // b writes k through Redis, then a writes k (it supersedes b's value): a's write stays local, the replay is in flight.
    expect((await b.entries.set('k', value('from b'), plainWrite())).scope).toBe('shared');
    expect((await a.entries.set('k', value('from a'), plainWrite())).scope).toBe('local');
    finish();
    await replayDone(a);

    // Redis must not keep the value a's write superseded.
    expect(text(redis.entry('k')?.value)).toBeUndefined();
  });

  it('overflows by bytes too (long names), with the same outcome', async () => {
    const core = coreOnFakes({ redis: true, pending: { maxCount: 1000, maxBytes: 1024 } });
    core.shared.connected = false;
    await core.entries.set('a'.repeat(300), value('1'), plainWrite());
    expect(core.tiers.pending.overflowed).toBe(false);
    await core.entries.set('b'.repeat(300), value('2'), plainWrite());
    expect(core.tiers.pending.overflowed).toBe(true);
    core.shared.connected = true;
    await replayDone(core);
    expect(core.shared.flushes).toBe(1);
    expect(core.tiers.counters.namespaceFlushes).toBe(1);
  });

  it('a namespace flush that fails is retried', async () => {
    const core = coreOnFakes({ redis: true, pending: { maxCount: 1 } });
    core.shared.redis.seedEntry('old', 'x');
    core.shared.connected = false;
    await core.entries.set('x1', value('1'), plainWrite());
    await core.entries.set('x2', value('2'), plainWrite());
    expect(core.tiers.pending.overflowed).toBe(true);
    // The flush fails once (the link dropped and came back): the next attempt runs it.
    let failures = 1;
    const flush = core.shared.flushNamespace.bind(core.shared);
    core.shared.flushNamespace = async () => {
      if (failures-- > 0) throw new Error('fake redis: injected failure (flushNamespace)');
      return flush();
    };
    core.shared.connected = true;
    await replayDone(core);
    expect(core.tiers.counters.l2Errors).toBe(1);
    expect(core.shared.flushes).toBe(1);
    expect(core.shared.redis.entry('old')).toBeUndefined();
  });
});

describe('degraded reads', () => {
  it('while coherent are not marked degraded', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('k', value('v'), plainWrite());
    await core.sessions.put('s', nodeRecords('s', 1), '');
    const entry = await core.entries.get('k');
    expect(entry?.source).toBe('l1');
    expect(entry?.degraded).toBe(false);
    const session = await core.sessions.get('s');
    expect(session?.source).toBe('l1');
    expect(session?.degraded).toBe(false);
    core.shared.redis.seedEntry('remote', 'r');
    const remote = await core.entries.get('remote');
    expect(remote?.source).toBe('l2');
    expect(remote?.degraded).toBe(false);
  });

  it('while disconnected: an L1 hit is returned marked degraded (entries and sessions)', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('k', value('v'), plainWrite());
    await core.sessions.put('s', nodeRecords('s', 1), '');
    core.shared.connected = false;

    const entry = await core.entries.get('k');
    expect(entry?.source).toBe('l1');
    expect(entry?.degraded).toBe(true);
    expect(text(entry?.entry.value)).toBe('v');
    const many = await core.entries.getMany(['k', 'absent']);
    expect(many[0]?.degraded).toBe(true);
    expect(many[1]).toBeUndefined();
    const session = await core.sessions.get('s');
    expect(session?.source).toBe('l1');
    expect(session?.degraded).toBe(true);
    expect(core.shared.entries.callCount('getMany')).toBe(0);
  });

  it('with degradedMaxAgeMs 0: an L1 hit while disconnected is a miss (L1 keeps it for later)', async () => {
    const core = coreOnFakes({ redis: true, degradedMaxAgeMs: 0 });
    await core.entries.set('k', value('v'), plainWrite());
    await core.sessions.put('s', nodeRecords('s', 1), '');
    expect((await core.entries.get('k'))?.degraded).toBe(false);
    core.shared.connected = false;

    expect(await core.entries.get('k')).toBeUndefined();
    expect(await core.sessions.get('s')).toBeUndefined();
    expect(core.l1.peek(k('k'))).toBeDefined();
    expect(core.shared.entries.callCount('getMany')).toBe(0);

    core.shared.connected = true;
    await replayDone(core);
    const entry = await core.entries.get('k');
    expect(entry?.source).toBe('l1');
    expect(entry?.degraded).toBe(false);
  });

  it('with a small cap: hits are served at first and become misses once the cap has passed; after reconnection and replay they are not degraded', async () => {
    const capMs = 200;
    const core = coreOnFakes({ redis: true, degradedMaxAgeMs: capMs });
    await core.entries.set('k', value('v'), plainWrite());
    await core.sessions.put('s', nodeRecords('s', 1), '');
    core.shared.connected = false;
    const down = core.shared.downSince!;
    await core.entries.set('w', value('local'), plainWrite()); // something to replay

    expect((await core.entries.get('k'))?.degraded).toBe(true);
    expect((await core.sessions.get('s'))?.degraded).toBe(true);
    await waitFor(async () => (await core.entries.get('k')) === undefined, 'degraded L1 reads to be refused past the cap', 5_000, 5);
    expect(Date.now() - down).toBeGreaterThanOrEqual(capMs);
    expect(await core.sessions.get('s')).toBeUndefined();
    expect(await core.entries.get('w')).toBeUndefined();

    core.shared.connected = true;
    await replayDone(core);
    expect(core.tiers.counters.replayed).toBe(1);
    const entry = await core.entries.get('k');
    expect(entry?.source).toBe('l1');
    expect(entry?.degraded).toBe(false);
    const session = await core.sessions.get('s');
    expect(session?.degraded).toBe(false);
  });

  // The outage's start is taken when the link goes down and forgotten when it is back with nothing to replay,
  // even with no read or write in between.
  it('a second outage measures the cap from its own start, not from the first one', async () => {
    const capMs = 200;
    const core = coreOnFakes({ redis: true, degradedMaxAgeMs: capMs });
    await core.entries.set('k', value('v'), plainWrite());
    core.shared.connected = false;
    expect((await core.entries.get('k'))?.degraded).toBe(true);
    const firstOutage = Date.now();
    core.shared.connected = true;
    // Coherent for longer than the cap, with no traffic at all.
    await waitFor(() => Date.now() - firstOutage > capMs + 50, 'the cap to pass since the first outage');

    core.shared.connected = false;
    const read = await core.entries.get('k');
    expect(read?.source).toBe('l1');
    expect(read?.degraded).toBe(true);
  });

  // With no degraded read during the outage, the cap still counts from the outage's start (taken when the link went
  // down), not from the first read during the replay.
  it('the cap counts from the start of the outage, also while the replay runs after reconnection', async () => {
    const capMs = 200;
    const core = coreOnFakes({ redis: true, degradedMaxAgeMs: capMs });
    await core.entries.set('k', value('v'), plainWrite());
    core.shared.connected = false;
    const down = core.shared.downSince!;
    await core.entries.set('w', value('local'), plainWrite());
    // No reads during the outage; it lasts longer than the cap.
    await waitFor(() => Date.now() - down > capMs + 50, 'the outage to outlast the cap');
    const hold = core.shared.entries.holdNext({ operation: 'delete', phase: 'request' });
    core.shared.connected = true;
    await hold.reached;
    expect(core.tiers.mode).toBe('degraded');
    // L1 has been unusable for longer than the cap: its hit is refused.
    expect(await core.entries.get('k')).toBeUndefined();
    hold.release();
    await replayDone(core);
    expect((await core.entries.get('k'))?.degraded).toBe(false);
  });
});

describe('PendingInvalidations', () => {
  const cost = (name: string) => 64 + name.length * 2;

  it('is bounded by count: past maxCount it overflows, forgets the names and ignores further adds', () => {
    const pending = new PendingInvalidations(3, 1 << 20);
    expect(pending.empty).toBe(true);
    pending.add('entry', 'a');
    pending.add('tag', 't');
    pending.add('session', 's');
    pending.add('entry', 'a'); // already named: no cost
    expect(pending.size).toBe(3);
    expect(pending.bytes).toBe(cost('a') + cost('t') + cost('s'));
    expect(pending.overflowed).toBe(false);
    expect(pending.empty).toBe(false);

    pending.add('entry', 'b');
    expect(pending.overflowed).toBe(true);
    expect(pending.size).toBe(0);
    expect(pending.bytes).toBe(0);
    expect(pending.empty).toBe(false);
    pending.add('entry', 'c');
    expect(pending.size).toBe(0);
    expect(pending.take(10)).toEqual({ entry: [], session: [], tag: [] });
    expect(pending.overflowed).toBe(true);
  });

  it('is bounded by bytes: long names overflow it before the count does', () => {
    const long = 'x'.repeat(400);
    const pending = new PendingInvalidations(1000, 1000);
    pending.add('entry', long);
    expect(pending.bytes).toBe(cost(long));
    expect(pending.overflowed).toBe(false);
    pending.add('session', 'y'.repeat(100)); // 864 + 264 > 1000
    expect(pending.overflowed).toBe(true);
    expect(pending.bytes).toBe(0);

    // Exactly at the bound is still within it.
    const exact = new PendingInvalidations(1000, cost('abc') + cost('de'));
    exact.add('entry', 'abc');
    exact.add('tag', 'de');
    expect(exact.overflowed).toBe(false);
    expect(exact.bytes).toBe(cost('abc') + cost('de'));
  });

  it('take removes up to max names of each kind and frees their bytes; restore puts them back', () => {
    const pending = new PendingInvalidations();
    for (const name of ['e1', 'e2', 'e3']) pending.add('entry', name);
    pending.add('tag', 't1');
    pending.add('session', 's1');
    pending.add('session', 's2');
    const full = pending.bytes;

    const batch = pending.take(2);
    expect(batch).toEqual({ entry: ['e1', 'e2'], session: ['s1', 's2'], tag: ['t1'] });
    expect(pending.size).toBe(1);
    expect(pending.bytes).toBe(cost('e3'));
    expect(pending.take(2)).toEqual({ entry: ['e3'], session: [], tag: [] });
    expect(pending.empty).toBe(true);
    expect(pending.bytes).toBe(0);

    pending.add('entry', 'e2'); // written again while its batch was in flight
    pending.restore(batch);
    expect(pending.size).toBe(5);
    expect(pending.bytes).toBe(full - cost('e3'));
    expect(pending.take(100)).toEqual({ entry: ['e2', 'e1'], session: ['s1', 's2'], tag: ['t1'] });
  });

  it('restore may overflow the set', () => {
    const pending = new PendingInvalidations(2);
    pending.add('entry', 'a');
    pending.add('entry', 'b');
    const batch = pending.take(10);
    pending.add('entry', 'c');
    pending.restore(batch);
    expect(pending.overflowed).toBe(true);
  });

  it('clear empties it and ends an overflow', () => {
    const pending = new PendingInvalidations(1);
    pending.add('entry', 'a');
    pending.add('entry', 'b');
    expect(pending.overflowed).toBe(true);
    pending.clear();
    expect(pending.overflowed).toBe(false);
    expect(pending.empty).toBe(true);
    expect(pending.size).toBe(0);
    expect(pending.bytes).toBe(0);
    pending.add('tag', 't');
    expect(pending.size).toBe(1);
    expect(pending.bytes).toBe(cost('t'));

    const named = new PendingInvalidations();
    named.add('entry', 'a');
    named.add('session', 's');
    named.clear();
    expect(named.empty).toBe(true);
    expect(named.take(10)).toEqual({ entry: [], session: [], tag: [] });
  });
});
