import { describe, expect, it } from 'vitest';
import { isCacheError } from '../../src/errors';
import { FakeRedis, FakeShared, plainWrite } from '../helpers/fakes';
import { rejectionOf } from '../helpers/wait';

/** The fakes stand in for the Lua scripts: their semantics are checked here, so the core's tests can trust them. */
describe('the fake shared tier', () => {
  it('issues increasing versions for a key, on the Redis clock in microseconds, even within one millisecond', async () => {
    const shared = new FakeShared();
    const versions: number[] = [];
    for (let i = 0; i < 5; i++) {
      const outcome = await shared.entries.set('k', Buffer.from(`${i}`), plainWrite());
      if (outcome.status === 'written') versions.push(outcome.version);
    }
    expect(versions).toHaveLength(5);
    for (let i = 1; i < versions.length; i++) expect(versions[i]).toBeGreaterThan(versions[i - 1]!);
    expect(versions[0]).toBeGreaterThanOrEqual((Date.now() - 1000) * 1000);
  });

  it('revokes the lease on every write, so a fill under it is stale-lease; a fill under a held lease is written', async () => {
    const shared = new FakeShared();
    const hold = await shared.leases.tryAcquire({ kind: 'entry', id: 'k' }, 10_000);
    expect(await shared.leases.tryAcquire({ kind: 'entry', id: 'k' }, 10_000)).toBeUndefined();
    const token = `${hold!.token}.${Date.now() * 1000}`;
    expect((await shared.entries.set('k', Buffer.from('fill'), plainWrite({ leaseToken: token }))).status).toBe('written');
    // The fill spent the lease.
    expect((await shared.entries.set('k', Buffer.from('again'), plainWrite({ leaseToken: token }))).status).toBe('stale-lease');

    const second = await shared.leases.tryAcquire({ kind: 'session', id: 's' }, 10_000);
    await shared.sessions.append({ id: 'n', shortId: '', sessionId: 's', parentId: '', role: 1, content: '', createdAt: 0, metadata: {}, refs: [] });
    expect(await shared.sessions.put('s', [], 10_000, `${second!.token}.1`)).toBe('stale');
  });

  it('checks if_absent and if_version like the script', async () => {
    const shared = new FakeShared();
    const first = await shared.entries.set('k', Buffer.from('1'), plainWrite());
    const version = first.status === 'written' ? first.version : 0;
    expect(await shared.entries.set('k', Buffer.from('2'), plainWrite({ ifAbsent: true }))).toEqual({ status: 'exists', version });
    expect(await shared.entries.set('k', Buffer.from('2'), plainWrite({ ifVersion: version + 1 }))).toEqual({ status: 'version-mismatch', version });
    expect(await shared.entries.set('x', Buffer.from('2'), plainWrite({ ifVersion: 7 }))).toEqual({ status: 'version-mismatch', version: 0 });
  });

  it('fails on demand with a plain Error, leases with E_UNAVAILABLE, and everything while disconnected', async () => {
    const shared = new FakeShared();
    shared.entries.failNext(2);
    for (let i = 0; i < 2; i++) {
      const error = await rejectionOf(shared.entries.getMany(['k']));
      expect(error.constructor).toBe(Error);
    }
    expect(await shared.entries.getMany(['k'])).toEqual([undefined]);
    shared.leases.failAlways();
    expect(isCacheError(await rejectionOf(shared.leases.tryAcquire({ kind: 'entry', id: 'k' }, 1000)), 'E_UNAVAILABLE')).toBe(true);
    shared.leases.failAlways(false);
    shared.connected = false;
    await rejectionOf(shared.sessions.getMany(['s']));
    await rejectionOf(shared.clockUs());
  });

  it('holds a call at a gate: at the request (sees the state at release) or at the reply (answers the state at call time)', async () => {
    const shared = new FakeShared();
    shared.redis.seedEntry('k', 'old');
    const atRequest = shared.entries.holdNext({ phase: 'request' });
    const late = shared.entries.getMany(['k']);
    await atRequest.reached;
    shared.redis.seedEntry('k', 'new');
    atRequest.release();
    expect((await late)[0]?.value.toString()).toBe('new');

    const atReply = shared.entries.holdNext({ phase: 'reply' });
    const stale = shared.entries.getMany(['k']);
    await atReply.reached;
    shared.redis.seedEntry('k', 'newer');
    atReply.release();
    expect((await stale)[0]?.value.toString()).toBe('new');
  });

  it('publishes each write to the other subscribed sidecars on the same Redis, never back to the writer', async () => {
    const redis = new FakeRedis();
    const a = redis.sidecar('a');
    const b = redis.sidecar('b');
    const c = redis.sidecar('c');
    const heard = { a: 0, b: 0, c: 0 };
    a.bus.onEvents(() => heard.a++);
    b.bus.onEvents(() => heard.b++);
    c.bus.onEvents(() => heard.c++);
    a.bus.subscribe();
    b.bus.subscribe();
    await a.entries.set('k', Buffer.from('v'), plainWrite());
    expect(heard).toEqual({ a: 0, b: 1, c: 0 });
    expect(redis.published).toHaveLength(1);
  });

  it('loses everything on loseData and tells every sidecar', async () => {
    const redis = new FakeRedis();
    const a = redis.sidecar('a');
    const b = redis.sidecar('b');
    let told = 0;
    a.onDataLost(() => told++);
    b.onDataLost(() => told++);
    await a.entries.set('k', Buffer.from('v'), plainWrite());
    a.loseData();
    expect(told).toBe(2);
    expect(await b.entries.getMany(['k'])).toEqual([undefined]);
  });
});
