import { describe, expect, it } from 'vitest';
import { Role, Source, WriteScope } from '../../src/client';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { session } from '../helpers/nodes';
import { waitFor } from '../helpers/wait';
import { WatchRecorder } from '../helpers/watch';

/** Regression tests of issue 12's first two defects: the bus is a hint, never state, and never carries values. */
describe('the Pub/Sub bus as an attacker with PUBLISH rights sees it', () => {
  // The fixture starts both sidecars subscribed, and closes them and Redis after the suite.
  // A 6 MiB append takes Redis well over the default 500 ms command timeout on a loaded CI machine; this file is not about timeouts.
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'bus', CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: '5s' });

  it('cannot pin a forged session: an append event with a version near 2^53 only makes L1 forget, and the next fill is cached', async () => {
    const [a] = fixture.sidecars;
    await a!.client.putSessionNodes({ sessionId: 'victim', nodes: session('victim', 2) });
    const before = await a!.client.getSessionNodes({ sessionId: 'victim' });
    expect(before.info?.source).toBe(Source.SOURCE_L1);
    await fixture.redis.command('PUBLISH', 'cc:bus:events', `{"o":"evil","e":"n","s":"victim","i":"forged","v":"9007199254740991","p":"${before.info!.version}"}`);
    await waitFor(() => a!.sidecar.tiers.implausibleEvents === 1, 'the forged event to be refused');
    expect(Number((await a!.client.getStats()).pubsub?.malformedMessages)).toBeGreaterThanOrEqual(1);
    const after = await a!.client.getSessionNodes({ sessionId: 'victim' });
    expect(after.nodes.map((n) => n.id)).toEqual(['victim/n0', 'victim/n1']);
    expect(after.info?.source).toBe(Source.SOURCE_L2);
    // No forged floor: a fill lands in L1 again, and an invalidation removes it.
    expect((await a!.client.putSessionNodes({ sessionId: 'victim', nodes: session('victim', 3) })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    expect((await a!.client.getSessionNodes({ sessionId: 'victim' })).info?.source).toBe(Source.SOURCE_L1);
    expect((await a!.client.invalidateSession({ sessionId: 'victim' })).existed).toBe(true);
    expect((await a!.client.getSessionNodes({ sessionId: 'victim' })).found).toBe(false);
  });

  it('cannot make a sidecar serve a forged node: append events name nodes, and only Redis supplies them', async () => {
    const [a] = fixture.sidecars;
    await a!.client.putSessionNodes({ sessionId: 'chat', nodes: session('chat', 1) });
    const version = (await a!.client.getSessionNodes({ sessionId: 'chat' })).info!.version;
    await fixture.redis.command('PUBLISH', 'cc:bus:events', `{"o":"evil","e":"n","s":"chat","i":"chat/forged","v":"${version + 1}","p":"${version}","n":{"id":"chat/forged"}}`);
    await waitFor(async () => (await a!.client.getSessionNodes({ sessionId: 'chat' })).info?.source === Source.SOURCE_L2, 'the copy to be dropped');
    expect((await a!.client.getSessionNodes({ sessionId: 'chat' })).nodes.map((n) => n.id)).toEqual(['chat/n0']);
  });

  it('one large append does not flush the other sidecars: the event names the node, the watcher still gets it from Redis', async () => {
    const [a, b] = fixture.sidecars;
    await b!.client.putSessionNodes({ sessionId: 'big', nodes: session('big', 1) });
    await a!.client.getSessionNodes({ sessionId: 'big' });
    const watcher = new WatchRecorder(a!.client.watch({ sessionIds: ['big'] }));
    await watcher.started();
    const resyncsBefore = a!.sidecar.tiers.counters.resyncs;
    // 6 MiB of control characters: 36 MiB as JSON, over Redis's 32 MiB pub/sub output limit were it in the event.
    const content = '\u0001'.repeat(6 * 1024 * 1024);
    const appended = await b!.client.appendNode({ node: { id: 'big/n1', sessionId: 'big', parentId: 'big/n0', role: Role.ROLE_USER, content } }, { deadline: 30_000 });
    expect(appended.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    const event = await watcher.waitFor((m) => m.event?.$case === 'nodeAppended', 'the appended node on the other sidecar', 20_000);
    expect(event.event?.$case === 'nodeAppended' && event.event.value.node?.content.length).toBe(content.length);
    watcher.cancel();
    expect(a!.sidecar.tiers.mode).toBe('coherent');
    expect(a!.sidecar.tiers.counters.resyncs).toBe(resyncsBefore);
    const read = await a!.client.getSessionNodes({ sessionId: 'big' }, { deadline: 30_000 });
    expect(read.nodes.map((n) => n.id)).toEqual(['big/n0', 'big/n1']);
  }, 60_000);
});
