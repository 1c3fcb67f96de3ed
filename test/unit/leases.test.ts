import { describe, expect, it } from 'vitest';
import { isCacheError } from '../../src/errors';
import { coreOnFakes, fromPeer, leaseRequest, nodeRecords, plainWrite, type CoreOnFakes } from '../helpers/fakes';
import { rejectionOf, waitFor } from '../helpers/wait';

const text = (value: Buffer | undefined) => value?.toString();

/**
 * Starts a second caller and resolves once it is waiting for the first
 * caller's fill (its answer is wrapped: an async function would adopt it).
 */
async function secondCallerWaiting<T>(core: CoreOnFakes, start: () => Promise<T>): Promise<{ answer: Promise<T> }> {
  const waitsBefore = core.tiers.leases.counters.waits;
  const answer = start();
  await waitFor(() => core.tiers.leases.counters.waits > waitsBefore, 'the second caller to wait for the fill', 2000, 1);
  return { answer };
}

async function expectStale(promise: Promise<unknown>): Promise<void> {
  const error = await rejectionOf(promise);
  expect(isCacheError(error, 'E_CONFLICT'), `expected E_CONFLICT, got ${String(error)}`).toBe(true);
  expect(error.message).toMatch(/lease is stale/);
}

/** The three situations where leases come from this sidecar's memory. */
const withoutSharedLeases: [string, () => CoreOnFakes][] = [
  ['without a shared tier', () => coreOnFakes({ redis: false })],
  [
    'with the shared tier not connected',
    () => {
      const core = coreOnFakes({ redis: true });
      core.shared.connected = false;
      return core;
    },
  ],
  [
    'with the shared lease store failing (E_UNAVAILABLE)',
    () => {
      const core = coreOnFakes({ redis: true });
      core.shared.leases.failAlways();
      return core;
    },
  ],
];

describe.each(withoutSharedLeases)('leases from memory %s', (_, makeCore) => {
  it('one caller gets a local lease and a second waits, then receives the value the first filled', async () => {
    const core = makeCore();
    const first = await core.entries.getOrLease('k', leaseRequest());
    expect(first.read).toBeUndefined();
    expect(first.lease?.token).toMatch(/^local\./);

    const second = await secondCallerWaiting(core, () => core.entries.getOrLease('k', leaseRequest()));
    // A lease fill while Redis is usable goes to Redis, which never accepts a memory lease: fill locally here.
    if (core.shared !== undefined) core.shared.connected = false;
    const filled = await core.entries.set('k', Buffer.from('from the database'), plainWrite({ leaseToken: first.lease!.token }));
    expect(filled.scope).toBe('local');

    const result = await second.answer;
    expect(result.waited).toBe(true);
    expect(result.lease).toBeUndefined();
    expect(text(result.read?.entry.value)).toBe('from the database');
    expect(core.tiers.leases.counters).toMatchObject({ granted: 1, waits: 1, staleFillsRefused: 0 });
  });

  it('a fill with a lease after a write of the same key is refused as stale, and the write stays', async () => {
    const core = makeCore();
    const first = await core.entries.getOrLease('k', leaseRequest());
    if (core.shared !== undefined) core.shared.connected = false;
    await core.entries.set('k', Buffer.from('newer write'), plainWrite());
    await expectStale(core.entries.set('k', Buffer.from('old load'), plainWrite({ leaseToken: first.lease!.token })));
    expect(core.tiers.leases.counters.staleFillsRefused).toBe(1);
    expect(text((await core.entries.get('k'))?.entry.value)).toBe('newer write');
  });
});

describe('leases from memory', () => {
  it('a fill with a lease granted before one of its tags was invalidated is refused as stale', async () => {
    const core = coreOnFakes({ redis: false });
    const first = await core.entries.getOrLease('k', leaseRequest());
    await core.entries.invalidateTags(['t']);
    await expectStale(core.entries.set('k', Buffer.from('old load'), plainWrite({ tags: ['t'], leaseToken: first.lease!.token })));
    // Without the tag, the same lease would have been good: the first refusal consumed it, so get a new one.
    const again = await core.entries.getOrLease('k', leaseRequest());
    expect((await core.entries.set('k', Buffer.from('v'), plainWrite({ tags: ['u'], leaseToken: again.lease!.token }))).scope).toBe('local');
  });

  it('a lease can be used once: a second fill with the same token is refused', async () => {
    const core = coreOnFakes({ redis: false });
    const { lease } = await core.entries.getOrLease('k', leaseRequest());
    await core.entries.set('k', Buffer.from('1'), plainWrite({ leaseToken: lease!.token }));
    await expectStale(core.entries.set('k', Buffer.from('2'), plainWrite({ leaseToken: lease!.token })));
  });

  it('a waiter that runs out of time gives up with neither a value nor a lease', async () => {
    const core = coreOnFakes({ redis: false });
    await core.entries.getOrLease('k', leaseRequest());
    const gaveUp = await core.entries.getOrLease('k', leaseRequest(0));
    expect(gaveUp).toEqual({ read: undefined, lease: undefined, waited: true });
  });

  it('a lease granted after the caller deadline is given back at once, so the next caller gets it', async () => {
    const core = coreOnFakes({ redis: false });
    const late = await core.entries.getOrLease('k', { ...leaseRequest(), callDeadline: Date.now() - 1 });
    expect(late.lease).toBeUndefined();
    const next = await core.entries.getOrLease('k', leaseRequest(0));
    expect(next.lease?.token).toMatch(/^local\./);
    expect(next.waited).toBe(false);
  });

  it('a waiter takes over the lease once the holder lets it lapse', async () => {
    const core = coreOnFakes({ redis: false });
    const holder = await core.entries.getOrLease('k', leaseRequest(5_000, 20));
    const waiter = await core.entries.getOrLease('k', leaseRequest(2_000));
    expect(waiter.lease?.token).toMatch(/^local\./);
    expect(waiter.lease?.token).not.toBe(holder.lease?.token);
    expect(waiter.waited).toBe(false);
    expect((await core.entries.set('k', Buffer.from('new'), plainWrite({ leaseToken: waiter.lease!.token }))).scope).toBe('local');
  });

  // Redis (entry-set / session-put: `if not lease_holds(...) then return -3`) leaves the current
  // holder's lease alone when a fill comes with another token; the memory leases do the same.
  it("a lapsed holder's late fill is refused and the new holder's fill is still taken", async () => {
    const core = coreOnFakes({ redis: false });
    const holder = await core.entries.getOrLease('k', leaseRequest(5_000, 20));
    const waiter = await core.entries.getOrLease('k', leaseRequest(2_000));
    expect(waiter.lease?.token).toMatch(/^local\./);
    await expectStale(core.entries.set('k', Buffer.from('late'), plainWrite({ leaseToken: holder.lease!.token })));
    expect((await core.entries.set('k', Buffer.from('new'), plainWrite({ leaseToken: waiter.lease!.token }))).scope).toBe('local');
  });

  // The same without timing: a refused fill (a forged or foreign token) must not free the subject
  // for the next caller, or a third caller would get a second lease and go to the database as well.
  it('a refused fill with a token that is not the lease leaves the holder lease in place', async () => {
    const core = coreOnFakes({ redis: false });
    const holder = await core.entries.getOrLease('k', leaseRequest());
    await expectStale(core.entries.set('k', Buffer.from('x'), plainWrite({ leaseToken: 'local.someone-else.1' })));
    const third = await core.entries.getOrLease('k', leaseRequest(0));
    expect(third.lease).toBeUndefined();
    expect((await core.entries.set('k', Buffer.from('v'), plainWrite({ leaseToken: holder.lease!.token }))).scope).toBe('local');
  });

  it("another sidecar's write voids a memory lease granted before it (Redis commands down, the bus still up)", async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.connected = false;
    const holder = await core.entries.getOrLease('k', leaseRequest());
    expect(holder.lease?.token).toMatch(/^local\./);
    core.shared.bus.deliver([fromPeer({ kind: 'key', key: 'k', change: 'set', version: Date.now() * 1000 + 10, tags: [] })]);
    await expectStale(core.entries.set('k', Buffer.from('loaded before the write'), plainWrite({ leaseToken: holder.lease!.token })));
  });

  it("another sidecar's tag invalidation voids a memory lease of an entry carrying the tag", async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.connected = false;
    const holder = await core.entries.getOrLease('k', leaseRequest());
    core.shared.bus.deliver([fromPeer({ kind: 'tags', tags: ['t'], keys: [] })]);
    await expectStale(core.entries.set('k', Buffer.from('v'), plainWrite({ tags: ['t'], leaseToken: holder.lease!.token })));
  });

  it('the same protection holds for a session: one caller loads, the other waits for the fill', async () => {
    const core = coreOnFakes({ redis: false });
    const first = await core.sessions.getOrLease('s', leaseRequest());
    expect(first.lease?.token).toMatch(/^local\./);
    const second = await secondCallerWaiting(core, () => core.sessions.getOrLease('s', leaseRequest()));
    await core.sessions.put('s', nodeRecords('s', 3), first.lease!.token);
    const result = await second.answer;
    expect(result.waited).toBe(true);
    expect(result.read?.session.nodes).toHaveLength(3);
  });

  it('an append to a session revokes its lease: the fill that loaded before it is refused', async () => {
    const core = coreOnFakes({ redis: false });
    const first = await core.sessions.getOrLease('s', leaseRequest());
    await core.sessions.append(nodeRecords('s', 1)[0]!);
    await expectStale(core.sessions.put('s', nodeRecords('s', 3), first.lease!.token));
    expect(core.tiers.leases.counters.staleFillsRefused).toBe(1);
  });
});

describe('leases from the shared tier', () => {
  it('one caller gets the shared lease, a second waits and receives the value the first filled; the fill frees the lease', async () => {
    const core = coreOnFakes({ redis: true });
    const first = await core.entries.getOrLease('k', leaseRequest());
    expect(first.lease?.token).toBeDefined();
    expect(first.lease!.token.startsWith('local.')).toBe(false);
    expect(core.shared.redis.leases.size).toBe(1);

    const second = await secondCallerWaiting(core, () => core.entries.getOrLease('k', leaseRequest()));
    const filled = await core.entries.set('k', Buffer.from('from the database'), plainWrite({ leaseToken: first.lease!.token }));
    expect(filled.scope).toBe('shared');
    expect(core.shared.redis.leases.size).toBe(0);

    const result = await second.answer;
    expect(result).toMatchObject({ waited: true, lease: undefined });
    expect(text(result.read?.entry.value)).toBe('from the database');
  });

  it('a fill with a lease after a write of the same key is refused as stale by the store, and counted', async () => {
    const core = coreOnFakes({ redis: true });
    const first = await core.entries.getOrLease('k', leaseRequest());
    await core.entries.set('k', Buffer.from('newer write'), plainWrite());
    await expectStale(core.entries.set('k', Buffer.from('old load'), plainWrite({ leaseToken: first.lease!.token })));
    expect(core.tiers.leases.counters.staleFillsRefused).toBe(1);
    expect(core.shared.redis.entry('k')?.value.toString()).toBe('newer write');
    expect(text(core.l1.peek<Buffer>('k:k')?.value)).toBe('newer write');
  });

  it('a fill with a lease granted before one of its tags was invalidated is refused by the store', async () => {
    const core = coreOnFakes({ redis: true });
    const first = await core.entries.getOrLease('k', leaseRequest());
    await core.entries.invalidateTags(['t']);
    await expectStale(core.entries.set('k', Buffer.from('old load'), plainWrite({ tags: ['t'], leaseToken: first.lease!.token })));
    expect(core.shared.redis.entry('k')).toBeUndefined();
  });

  it("a lapsed holder's late fill is refused by the store and the new holder's fill is taken", async () => {
    const core = coreOnFakes({ redis: true });
    const holder = await core.entries.getOrLease('k', leaseRequest(5_000, 20));
    const waiter = await core.entries.getOrLease('k', leaseRequest(2_000));
    expect(waiter.lease?.token).toBeDefined();
    expect(waiter.lease?.token).not.toBe(holder.lease?.token);
    await expectStale(core.entries.set('k', Buffer.from('late'), plainWrite({ leaseToken: holder.lease!.token })));
    expect((await core.entries.set('k', Buffer.from('new'), plainWrite({ leaseToken: waiter.lease!.token }))).scope).toBe('shared');
  });

  it('falls back to a memory lease when Redis TIME fails, counting the failure', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.time.failNext();
    const first = await core.entries.getOrLease('k', leaseRequest());
    expect(first.lease?.token).toMatch(/^local\./);
    expect(core.tiers.counters.l2Errors).toBe(1);
    expect(core.shared.leases.callCount()).toBe(0);
  });

  it('a memory lease handed out while Redis was away is refused by Redis once it is back (Redis never accepts it)', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.connected = false;
    const first = await core.entries.getOrLease('k', leaseRequest());
    core.shared.connected = true;
    await expectStale(core.entries.set('k', Buffer.from('v'), plainWrite({ leaseToken: first.lease!.token })));
  });

  it('the same protection holds for a session filled through the store', async () => {
    const core = coreOnFakes({ redis: true });
    const first = await core.sessions.getOrLease('s', leaseRequest());
    const second = await secondCallerWaiting(core, () => core.sessions.getOrLease('s', leaseRequest()));
    const put = await core.sessions.put('s', nodeRecords('s', 2), first.lease!.token);
    expect(put.scope).toBe('shared');
    const result = await second.answer;
    expect(result.waited).toBe(true);
    expect(result.read?.version).toBe(put.version);
  });

  it('a session fill after an invalidation of the session is refused by the store as stale', async () => {
    const core = coreOnFakes({ redis: true });
    const first = await core.sessions.getOrLease('s', leaseRequest());
    await core.sessions.invalidate('s');
    await expectStale(core.sessions.put('s', nodeRecords('s', 2), first.lease!.token));
    expect(core.shared.redis.session('s')).toBeUndefined();
  });
});

describe('waiters on one subject', () => {
  it('share one wait per sidecar: 500 waiters cost the shared tier what a few do, and all get the fill', async () => {
    const core = coreOnFakes({ redis: true });
    const holder = await core.entries.getOrLease('hot', leaseRequest());
    expect(holder.lease).toBeDefined();
    const before = core.shared.leases.callCount('tryAcquire');
    const waiting = Array.from({ length: 500 }, () => core.entries.getOrLease('hot', leaseRequest(5_000)));
    await waitFor(() => core.shared.leases.callCount('tryAcquire') - before >= 510, 'every waiter to try once');
    const tried = core.shared.leases.callCount('tryAcquire');
    // Three poll intervals later, the shared wait has tried a handful of times, not 500 per poll.
    const until = Date.now() + 160;
    await waitFor(() => Date.now() >= until, 'three poll intervals');
    expect(core.shared.leases.callCount('tryAcquire') - tried).toBeLessThan(10);
    await core.entries.set('hot', Buffer.from('filled'), plainWrite({ leaseToken: holder.lease!.token }));
    const reads = await Promise.all(waiting);
    expect(reads.every((read) => read.read?.entry.value.toString() === 'filled' && read.waited)).toBe(true);
  });

  it('hands a lapsed lease to the longest waiter only; the others keep waiting for its fill', async () => {
    const core = coreOnFakes({ redis: false });
    await core.entries.getOrLease('k', leaseRequest(5_000, 100));
    const first = core.entries.getOrLease('k', leaseRequest(5_000));
    const second = core.entries.getOrLease('k', leaseRequest(5_000));
    const granted = await first;
    expect(granted.lease?.token).toMatch(/^local\./);
    await core.entries.set('k', Buffer.from('v'), plainWrite({ leaseToken: granted.lease!.token }));
    expect((await second).read?.entry.value.toString()).toBe('v');
  });
});

