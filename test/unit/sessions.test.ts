import { describe, expect, it } from 'vitest';
import { appendToSession, buildSession, type SessionState } from '../../src/context/session';
import { isCacheError } from '../../src/errors';
import { l1Key } from '../../src/model/subject';
import { coreOnFakes, nodeRecord, nodeRecords } from '../helpers/fakes';
import { rejectionOf, waitFor } from '../helpers/wait';

const s = (sessionId: string) => l1Key('session', sessionId);
const ids = (state: SessionState | undefined) => state?.nodes.map((node) => node.id);

describe('putting a session', () => {
  it('while connected is shared: the store and L1 hold it, one filled event is announced, and its short IDs are indexed', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 3), '');
    expect(put.scope).toBe('shared');

    const stored = core.shared.redis.session('s');
    expect(stored?.version).toBe(put.version);
    expect(stored?.nodes.map((node) => node.id)).toEqual(['s/n0', 's/n1', 's/n2']);
    const cached = core.l1.peek<SessionState>(s('s'));
    expect(cached?.version).toBe(put.version);
    expect(ids(cached?.value)).toEqual(['s/n0', 's/n1', 's/n2']);

    expect(core.eventsOf('session')).toEqual([{ kind: 'session', sessionId: 's', change: 'filled', version: put.version }]);
    expect(core.tiers.counters.published).toBe(1);
    expect([...core.shared.redis.shortIds.keys()].sort()).toEqual(['s-0', 's-1', 's-2']);
    expect((await core.sessions.get('s'))?.source).toBe('l1');
  });

  it('when the store rejects is local, counts an l2 error, and is served from L1', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.sessions.failNext();
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    expect(put.scope).toBe('local');
    expect(core.tiers.counters.l2Errors).toBe(1);
    expect(core.shared.redis.session('s')).toBeUndefined();
    const read = await core.sessions.get('s');
    expect(read?.source).toBe('l1');
    expect(read?.version).toBe(put.version);
  });

  it('while degraded is local and the store is not called', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.connected = false;
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    expect(put.scope).toBe('local');
    expect(core.shared.sessions.callCount()).toBe(0);
    expect(core.eventsOf('session')).toEqual([{ kind: 'session', sessionId: 's', change: 'filled', version: put.version }]);
  });

  it('that stays local gets a version above the shared one L1 held', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.clock.offsetMs = 3_600_000;
    const shared = await core.sessions.put('s', nodeRecords('s', 1), '');
    core.shared.sessions.failNext();
    const local = await core.sessions.put('s', nodeRecords('s', 2), '');
    expect(local.scope).toBe('local');
    expect(local.version).toBeGreaterThan(shared.version);
    expect(ids((await core.sessions.get('s'))?.session)).toEqual(['s/n0', 's/n1']);
  });

  it('a failure to index short IDs after the write does not fail the put', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.sessions.holdNext({ operation: 'indexShortIds', phase: 'request' }).fail();
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    expect(put.scope).toBe('shared');
    expect(core.shared.redis.shortIds.size).toBe(0);
    expect(core.tiers.counters.l2Errors).toBe(1);
  });

  it('with a stale lease is refused with E_CONFLICT on the shared path and on the local path', async () => {
    const core = coreOnFakes({ redis: true });
    const shared = await rejectionOf(core.sessions.put('s', nodeRecords('s', 1), 'not-a-lease.1'));
    expect(isCacheError(shared, 'E_CONFLICT')).toBe(true);
    core.shared.connected = false;
    const local = await rejectionOf(core.sessions.put('s', nodeRecords('s', 1), 'local.not-a-lease.1'));
    expect(isCacheError(local, 'E_CONFLICT')).toBe(true);
    expect(core.l1.peek(s('s'))).toBeUndefined();
    expect(core.tiers.leases.counters.staleFillsRefused).toBe(2);
  });
});

describe('appending to a session', () => {
  it('while connected and cached keeps L1 in step with the store: same version, node appended in place', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    const appended = await core.sessions.append(nodeRecord('s', 2));
    expect(appended).toMatchObject({ appended: true, scope: 'shared' });
    expect(appended.version).toBeGreaterThan(put.version);

    const cached = core.l1.peek<SessionState>(s('s'));
    expect(cached?.version).toBe(appended.version);
    expect(core.shared.redis.session('s')?.version).toBe(appended.version);
    expect(ids(cached?.value)).toEqual(['s/n0', 's/n1', 's/n2']);
    expect(cached?.value.byShortId.get('s-2')?.id).toBe('s/n2');
    expect(core.eventsOf('node')).toEqual([{ kind: 'node', node: nodeRecord('s', 2), sessionVersion: appended.version, previousVersion: put.version }]);

    const read = await core.sessions.get('s');
    expect(read?.source).toBe('l1');
    expect(core.shared.sessions.callCount('getMany')).toBe(0);
    // The short ID of the appended node is indexed too (best effort, after the answer).
    await waitFor(() => core.shared.redis.shortIds.has('s-2'), 'the appended node to be indexed', 1000, 1);
  });

  it('while connected but not cached anywhere is not appended, and L1 stays empty', async () => {
    const core = coreOnFakes({ redis: true });
    const appended = await core.sessions.append(nodeRecord('s', 0));
    expect(appended).toMatchObject({ appended: false, scope: 'shared' });
    expect(core.l1.peek(s('s'))).toBeUndefined();
    expect(core.shared.redis.session('s')).toBeUndefined();
  });

  it('drops the L1 copy instead of guessing when Redis held a version L1 did not know (an append it missed)', async () => {
    const core = coreOnFakes({ redis: true });
    await core.sessions.put('s', nodeRecords('s', 2), '');
    // Somebody appended behind this sidecar's back: Redis's previous version is not L1's.
    core.shared.redis.seedSession('s', nodeRecords('s', 3));
    const appended = await core.sessions.append(nodeRecord('s', 3));
    expect(appended.appended).toBe(true);
    expect(core.l1.peek(s('s'))).toBeUndefined();
    expect(ids((await core.sessions.get('s'))?.session)).toEqual(['s/n0', 's/n1', 's/n2', 's/n3']);
  });

  it('while the store fails is local and still visible from L1', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    core.shared.sessions.failNext();
    const appended = await core.sessions.append(nodeRecord('s', 2));
    expect(appended).toMatchObject({ appended: true, scope: 'local' });
    expect(appended.version).toBeGreaterThan(put.version);
    expect(core.tiers.counters.l2Errors).toBe(1);

    const read = await core.sessions.get('s');
    expect(read?.source).toBe('l1');
    expect(read?.version).toBe(appended.version);
    expect(ids(read?.session)).toEqual(['s/n0', 's/n1', 's/n2']);
    expect(core.shared.redis.session('s')?.nodes).toHaveLength(2);
    expect(core.eventsOf('node').at(-1)).toMatchObject({ sessionVersion: appended.version, previousVersion: put.version });
  });

  it('without a shared tier to a session L1 does not hold is not appended', async () => {
    const core = coreOnFakes({ redis: false });
    const appended = await core.sessions.append(nodeRecord('s', 0));
    expect(appended).toMatchObject({ appended: false, scope: 'local' });
    expect(await core.sessions.get('s')).toBeUndefined();
  });

  it('twice with the same node (a retried append) keeps the node once', async () => {
    const core = coreOnFakes({ redis: false });
    await core.sessions.put('s', nodeRecords('s', 1), '');
    await core.sessions.append(nodeRecord('s', 1));
    await core.sessions.append(nodeRecord('s', 1));
    expect(ids((await core.sessions.get('s'))?.session)).toEqual(['s/n0', 's/n1']);
  });
});

describe('invalidating a session', () => {
  it('while connected is shared: it is gone from the store and L1, and a tombstone is announced', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    const invalidated = await core.sessions.invalidate('s');
    expect(invalidated).toEqual({ existed: true, scope: 'shared' });
    expect(core.shared.redis.session('s')).toBeUndefined();
    expect(core.l1.peek(s('s'))).toBeUndefined();
    const event = core.eventsOf('session').at(-1);
    expect(event).toMatchObject({ sessionId: 's', change: 'invalidated' });
    expect(event?.kind === 'session' && event.version).toBeGreaterThan(put.version);
  });

  it('while the store fails is local: L1 drops it, and the older copy in Redis is invalidated by the replay, never read back', async () => {
    const core = coreOnFakes({ redis: true });
    await core.sessions.put('s', nodeRecords('s', 2), '');
    core.shared.sessions.failNext();
    expect(await core.sessions.invalidate('s')).toEqual({ existed: true, scope: 'local' });
    expect(core.l1.peek(s('s'))).toBeUndefined();

    expect(await core.sessions.get('s')).toBeUndefined();
    await waitFor(() => core.tiers.mode === 'coherent', 'the replay');
    expect(core.shared.redis.session('s')).toBeUndefined();
    expect(await core.sessions.get('s')).toBeUndefined();
    expect(core.l1.peek(s('s'))).toBeUndefined();
  });

  it('of a session nobody holds reports that it did not exist', async () => {
    const core = coreOnFakes({ redis: false });
    expect(await core.sessions.invalidate('nope')).toEqual({ existed: false, scope: 'local' });
  });
});

describe('short IDs across sessions', () => {
  it('resolve through the shared index to a session another sidecar stored', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedSession('other', nodeRecords('other', 2));
    core.shared.redis.shortIds.set('other-1', { sessionId: 'other', expiresAt: Date.now() + 60_000 });
    const resolved = await core.sessions.resolveShortIds(['other-1', 'missing-9']);
    expect(resolved.nodes.get('other-1')?.id).toBe('other/n1');
    expect(resolved.unresolved).toEqual(['missing-9']);
    expect(resolved.missingSessions).toEqual([]);
  });

  it('referenced the first time, a session not held is picked (only its referenced nodes, not kept); referenced again, it is read whole into L1', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedSession('other', nodeRecords('other', 4));
    for (const n of [1, 2]) core.shared.redis.shortIds.set(`other-${n}`, { sessionId: 'other', expiresAt: Date.now() + 60_000 });

    const first = await core.sessions.resolveShortIds(['other-1']);
    expect(first.nodes.get('other-1')?.id).toBe('other/n1');
    expect(first.unresolved).toEqual([]);
    expect(core.shared.sessions.calls.filter((call) => call === 'pickMany' || call === 'getMany')).toEqual(['pickMany']);
    expect(core.sessions.cached('other')).toBeUndefined();

    // Another node of it: now read whole, and held.
    const second = await core.sessions.resolveShortIds(['other-2']);
    expect(second.nodes.get('other-2')?.id).toBe('other/n2');
    expect(core.shared.sessions.calls.filter((call) => call === 'pickMany' || call === 'getMany')).toEqual(['pickMany', 'getMany']);
    expect(ids(core.sessions.cached('other'))).toEqual(['other/n0', 'other/n1', 'other/n2', 'other/n3']);

    // Held: no Redis call at all.
    const calls = core.shared.sessions.callCount();
    expect((await core.sessions.resolveShortIds(['other-1', 'other-2'])).nodes.size).toBe(2);
    expect(core.shared.sessions.callCount()).toBe(calls);
  });

  it('a pick that finds the session gone reports it missing; a failed pick leaves the references unresolved and counts an l2 error', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.shortIds.set('gone-0', { sessionId: 'gone', expiresAt: Date.now() + 60_000 });
    const gone = await core.sessions.resolveShortIds(['gone-0']);
    expect(gone.unresolved).toEqual(['gone-0']);
    expect(gone.missingSessions).toEqual(['gone']);

    core.shared.redis.seedSession('other', nodeRecords('other', 2));
    core.shared.redis.shortIds.set('other-1', { sessionId: 'other', expiresAt: Date.now() + 60_000 });
    core.shared.sessions.holdNext({ operation: 'pickMany', phase: 'request' }).fail();
    const failed = await core.sessions.resolveShortIds(['other-1']);
    expect(failed.unresolved).toEqual(['other-1']);
    expect(failed.missingSessions).toEqual([]);
    expect(core.tiers.counters.l2Errors).toBe(1);
  });

  it('resolve what L1 holds when the index lookup fails, and leave the rest unresolved', async () => {
    const core = coreOnFakes({ redis: true });
    await core.sessions.put('mine', nodeRecords('mine', 2), '');
    core.shared.sessions.failAlways();
    const resolved = await core.sessions.resolveShortIds(['mine-1', 'theirs-0']);
    expect(resolved.nodes.get('mine-1')?.id).toBe('mine/n1');
    expect(resolved.unresolved).toEqual(['theirs-0']);
    expect(core.tiers.counters.l2Errors).toBe(1);
  });
});

describe('a session state', () => {
  it('appended to is the state built from the longer list (nodes, indexes, size), and the state it came from is unchanged', () => {
    const nodes = nodeRecords('s', 5).map((node, n) => (n === 2 ? { ...node, shortId: '' } : node));
    const before = buildSession('s', nodes.slice(0, 4));
    const after = appendToSession(before, nodes[4]!);
    expect(after).toEqual(buildSession('s', nodes));
    expect(ids(before)).toEqual(['s/n0', 's/n1', 's/n2', 's/n3']);
    expect([before.byId.size, before.byShortId.size]).toEqual([4, 3]);
    // A node it holds already (an append retried): the same state.
    expect(appendToSession(after, { ...nodes[1]!, content: 'again' })).toBe(after);
    // A node without a short ID leaves the short-ID index as it was.
    expect(appendToSession(after, { ...nodeRecord('s', 9), shortId: '' }).byShortId).toBe(after.byShortId);
  });
});
