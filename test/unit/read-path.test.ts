import { describe, expect, it } from 'vitest';
import type { SessionState } from '../../src/context/session';
import { l1Key } from '../../src/model/subject';
import { coreOnFakes, fromPeer, nodeRecords, plainWrite } from '../helpers/fakes';

const k = (key: string) => l1Key('entry', key);
const s = (sessionId: string) => l1Key('session', sessionId);
const text = (value: Buffer | undefined) => value?.toString();

describe('reads while coherent', () => {
  it('fetch what L1 misses from the store in one call and fill L1 with it', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('cached', Buffer.from('c'), plainWrite());
    const version = core.shared.redis.seedEntry('remote', 'r');

    const [cached, remote, absent] = await core.entries.getMany(['cached', 'remote', 'absent']);
    expect(cached?.source).toBe('l1');
    expect(remote?.source).toBe('l2');
    expect(text(remote?.entry.value)).toBe('r');
    expect(absent).toBeUndefined();
    expect(core.shared.entries.calls).toEqual(['set', 'getMany']);
    expect(core.l1.peek(k('remote'))?.version).toBe(version);

    expect((await core.entries.get('remote'))?.source).toBe('l1');
    expect(core.shared.entries.callCount('getMany')).toBe(1);
  });

  it('are misses (not errors) for what L1 lacks when the store fails, and count an l2 error', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('cached', Buffer.from('c'), plainWrite());
    core.shared.redis.seedEntry('remote', 'r');
    core.shared.entries.failNext();
    const [cached, remote] = await core.entries.getMany(['cached', 'remote']);
    expect(cached?.source).toBe('l1');
    expect(remote).toBeUndefined();
    expect(core.tiers.counters.l2Errors).toBe(1);
  });
});

describe('reads while detached (connected, bus down)', () => {
  it('bypass L1 and go to the store, without filling L1', async () => {
    const core = coreOnFakes({ redis: true });
    const v1 = (await core.entries.set('k', Buffer.from('v1'), plainWrite())).entry.version;
    // Another sidecar wrote while this one's subscription was down: L1 never heard of it.
    core.shared.bus.unsubscribe();
    const v2 = core.shared.redis.seedEntry('k', 'v2');

    const read = await core.entries.get('k');
    expect(read?.source).toBe('l2');
    expect(text(read?.entry.value)).toBe('v2');
    expect(core.shared.entries.callCount('getMany')).toBe(1);
    expect(core.l1.peek(k('k'))?.version).toBe(v1);
    expect(v2).toBeGreaterThan(v1);
  });

  it('bypass L1 for sessions too, and answer from the store', async () => {
    const core = coreOnFakes({ redis: true });
    await core.sessions.put('s', nodeRecords('s', 2), '');
    core.shared.bus.unsubscribe();
    core.shared.redis.seedSession('s', nodeRecords('s', 3));
    const read = await core.sessions.get('s');
    expect(read?.source).toBe('l2');
    expect(read?.session.nodes).toHaveLength(3);
    expect(core.l1.peek<SessionState>(s('s'))?.value.nodes).toHaveLength(2);
  });

  it('of entries fall back to L1 when the store fails: stale at worst beats nothing', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('k', Buffer.from('v1'), plainWrite());
    core.shared.bus.unsubscribe();
    core.shared.entries.failNext();

    const [known, unknown] = await core.entries.getMany(['k', 'never-cached']);
    expect(known?.source).toBe('l1');
    expect(text(known?.entry.value)).toBe('v1');
    expect(unknown).toBeUndefined();
    expect(core.shared.entries.callCount('getMany')).toBe(1);
    expect(core.tiers.counters.l2Errors).toBe(1);
  });

  it('of sessions fall back to L1 when the store fails, exactly like entries', async () => {
    const core = coreOnFakes({ redis: true });
    const put = await core.sessions.put('s', nodeRecords('s', 2), '');
    core.shared.bus.unsubscribe();
    core.shared.sessions.failNext();

    const found = await core.sessions.getMany(['s', 'never-cached']);
    expect(found.get('s')?.source).toBe('l1');
    expect(found.get('s')?.version).toBe(put.version);
    expect(found.get('s')?.session.nodes.map((node) => node.id)).toEqual(['s/n0', 's/n1']);
    expect(found.has('never-cached')).toBe(false);
    expect(core.shared.sessions.callCount('getMany')).toBe(1);
    expect(core.tiers.counters.l2Errors).toBe(1);
  });
});

describe('reads while degraded (not connected)', () => {
  it('of entries are L1 only and never call the store', async () => {
    const core = coreOnFakes({ redis: true });
    await core.entries.set('k', Buffer.from('v1'), plainWrite());
    core.shared.redis.seedEntry('only-in-redis', 'x');
    core.shared.connected = false;

    const [known, remote] = await core.entries.getMany(['k', 'only-in-redis']);
    expect(known?.source).toBe('l1');
    expect(remote).toBeUndefined();
    expect(core.shared.entries.callCount('getMany')).toBe(0);
    expect(core.tiers.counters.l2Errors).toBe(0);
  });

  it('of sessions are L1 only and never call the store', async () => {
    const core = coreOnFakes({ redis: true });
    await core.sessions.put('s', nodeRecords('s', 1), '');
    core.shared.redis.seedSession('only-in-redis', nodeRecords('only-in-redis', 1));
    core.shared.connected = false;

    const found = await core.sessions.getMany(['s', 'only-in-redis']);
    expect(found.get('s')?.source).toBe('l1');
    expect(found.has('only-in-redis')).toBe(false);
    expect(core.shared.sessions.callCount('getMany')).toBe(0);
  });

  it('without a shared tier are L1 only', async () => {
    const core = coreOnFakes({ redis: false });
    await core.entries.set('k', Buffer.from('v'), plainWrite());
    expect((await core.entries.get('k'))?.source).toBe('l1');
    expect(await core.entries.get('other')).toBeUndefined();
  });
});

describe('a read whose answer arrives late', () => {
  it('fills L1 when nothing happened meanwhile (the control case)', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedEntry('k', 'v1');
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    hold.release();
    expect((await reading)?.source).toBe('l2');
    expect(core.l1.peek(k('k'))).toBeDefined();
  });

  it('does not fill L1 after a resync (the generation changed while it was in flight)', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedEntry('k', 'v1');
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    const generation = core.tiers.generation;
    core.tiers.resync('redis-data-lost');
    expect(core.tiers.generation).not.toBe(generation);
    hold.release();

    const read = await reading;
    expect(read?.source).toBe('l2');
    expect(text(read?.entry.value)).toBe('v1');
    expect(core.l1.peek(k('k'))).toBeUndefined();
  });

  it('does not fill L1 when the bus went down while it was in flight', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedEntry('k', 'v1');
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    core.shared.bus.unsubscribe();
    hold.release();

    expect((await reading)?.source).toBe('l2');
    expect(core.l1.peek(k('k'))).toBeUndefined();
  });

  it('does not fill L1 when the bus went down and came back while it was in flight', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedEntry('k', 'v1');
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    core.shared.bus.unsubscribe();
    core.shared.bus.subscribe();
    expect(core.tiers.mode).toBe('coherent');
    hold.release();

    expect((await reading)?.source).toBe('l2');
    expect(core.l1.peek(k('k'))).toBeUndefined();
  });

  it('does not fill L1 when Redis disconnected while it was in flight', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedEntry('k', 'v1');
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    core.shared.connected = false;
    hold.release();

    expect((await reading)?.source).toBe('l2');
    expect(core.l1.peek(k('k'))).toBeUndefined();
  });

  it('does not fill L1 after another sidecar invalidated a tag while it was in flight', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedEntry('k', 'v1', { tags: ['t'] });
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    core.shared.bus.deliver(fromPeer({ kind: 'tags', tags: ['t'], keys: ['k'] }));
    hold.release();

    expect((await reading)?.source).toBe('l2');
    expect(core.l1.peek(k('k'))).toBeUndefined();
  });

  it('does not fill L1 with a version older than one another sidecar announced meanwhile', async () => {
    const core = coreOnFakes({ redis: true });
    const v1 = core.shared.redis.seedEntry('k', 'v1');
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    core.shared.bus.deliver(fromPeer({ kind: 'key', key: 'k', change: 'set', version: v1 + 1, tags: [] }));
    hold.release();

    expect((await reading)?.entry.version).toBe(v1);
    expect(core.l1.peek(k('k'))).toBeUndefined();
  });

  it('of a session does not fill L1 after a resync either', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedSession('s', nodeRecords('s', 2));
    const hold = core.shared.sessions.holdNext();
    const reading = core.sessions.get('s');
    await hold.reached;
    core.tiers.resync('redis-data-lost');
    hold.release();

    expect((await reading)?.source).toBe('l2');
    expect(core.l1.peek(s('s'))).toBeUndefined();
  });

  it('does not overwrite a newer local write in L1, even when Redis\'s clock runs far ahead of this host', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.clock.offsetMs = 60_000;
    core.shared.redis.seedEntry('k', 'from-redis');
    const hold = core.shared.entries.holdNext({ phase: 'reply' });
    const reading = core.entries.get('k');
    await hold.reached;
    core.shared.entries.failNext(1);
    expect((await core.entries.set('k', Buffer.from('local'), plainWrite())).scope).toBe('local');
    hold.release();
    await reading;
    expect(text(core.l1.peek<Buffer>(k('k'))?.value)).toBe('local');
  });

  it('that fails after it was held counts an l2 error and is a miss', async () => {
    const core = coreOnFakes({ redis: true });
    core.shared.redis.seedEntry('k', 'v1');
    const hold = core.shared.entries.holdNext();
    const reading = core.entries.get('k');
    await hold.reached;
    hold.fail();
    expect(await reading).toBeUndefined();
    expect(core.tiers.counters.l2Errors).toBe(1);
  });
});
