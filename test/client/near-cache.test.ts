import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheClient, ResyncReason, type WatchResponse } from '../../src/client';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { startProxy, type TestProxy } from '../helpers/proxy';
import type { TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

const MiB = 1024 * 1024;
const port = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1));
const text = (value: Buffer | Uint8Array) => Buffer.from(value).toString();

describe('the near cache on real sidecars', () => {
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'near' });
  let a: TestSidecar;
  let b: TestSidecar;
  const clients: ContextCacheClient[] = [];
  const nearClient = async (address: string, options = {}) => {
    const client = new ContextCacheClient(address, { nearCache: { maxBytes: 16 * MiB }, watchBackoff: { initialBackoffMs: 20, maxBackoffMs: 200 }, ...options });
    clients.push(client);
    await client.ready();
    return client;
  };
  beforeAll(() => void ([a, b] = fixture.sidecars));
  afterAll(() => clients.forEach((client) => client.close()));

  it('answers a second read from memory, and drops it when another sidecar writes the key', async () => {
    const onB = await nearClient(b.address);
    await a.client.set({ key: 'n/1', value: Buffer.from('one') });
    const first = await onB.get({ key: 'n/1' });
    expect(first.fromNearCache).toBeUndefined();
    const second = await onB.get({ key: 'n/1' });
    expect(second.fromNearCache).toBe(true);
    expect(text(second.value)).toBe('one');
    await a.client.set({ key: 'n/1', value: Buffer.from('two') });
    await waitFor(() => !onB.nearCache!.has('n/1'), 'the near cache to drop n/1');
    expect(text((await onB.get({ key: 'n/1' })).value)).toBe('two');
    expect(onB.nearCache!.stats()).toMatchObject({ hits: 1, invalidations: 1 });
  });

  it('keeps sessions and getMany results, and adds a node appended elsewhere to the session it holds', async () => {
    const onA = await nearClient(a.address);
    await b.client.putSessionNodes({ sessionId: 'near-s', nodes: [{ id: 'm1', role: 2, content: 'hi' }] });
    await b.client.set({ key: 'n/many', value: Buffer.from('m') });
    await onA.getSessionNodes({ sessionId: 'near-s' });
    expect((await onA.getSessionNodes({ sessionId: 'near-s' })).fromNearCache).toBe(true);
    await onA.getMany({ keys: ['n/many', 'n/absent'] });
    const many = await onA.getMany({ keys: ['n/many', 'n/absent'] });
    expect(many.results.map((r) => [r.key, r.found])).toEqual([
      ['n/many', true],
      ['n/absent', false],
    ]);
    expect(onA.nearCache!.has('n/many')).toBe(true);
    const appended = await b.client.appendNode({ node: { id: 'm2', sessionId: 'near-s', parentId: 'm1', role: 3, content: 'hello' } });
    await waitFor(() => onA.nearCache!.stats().appendsApplied === 1, 'the near cache to add the node');
    const after = await onA.getSessionNodes({ sessionId: 'near-s' });
    expect(after.fromNearCache).toBe(true);
    expect(after.nodes.map((n) => [n.id, n.content])).toEqual([
      ['m1', 'hi'],
      ['m2', 'hello'],
    ]);
    expect(after.info?.version).toBe(appended.sessionVersion);
    // What the sidecar itself holds.
    expect((await onA.call('getSessionNodes', { sessionId: 'near-s' })).nodes).toEqual(after.nodes);
  });

  it('keeps a complete built context, and drops it when a session it was built from changes on another sidecar', async () => {
    // Contexts kept as the sidecar answered them (the ones it cannot build itself, such as those that count tokens).
    const onA = await nearClient(a.address, { nearCache: { maxBytes: 16 * MiB, buildContexts: false } });
    const filled = new Set<string>();
    onA.nearCache!.onMessage((m) => m.event?.$case === 'sessionInvalidated' && filled.add(m.event.value.sessionId));
    await b.client.putSessionNodes({ sessionId: 'near-ref', nodes: [{ id: 'f1', shortId: 'fact1', role: 2, content: 'a fact' }] });
    await b.client.putSessionNodes({ sessionId: 'near-chat', nodes: [{ id: 'c1', role: 2, content: 'about fact1', refs: ['fact1'] }] });
    // A context built while any session changes is not kept: let the fills' events arrive first.
    await waitFor(() => filled.has('near-ref') && filled.has('near-chat'), 'the fills to reach the near cache');
    const request = { sessionId: 'near-chat', includeRefs: true };
    expect((await onA.buildContext(request)).nodes.map((n) => n.node!.id)).toEqual(['f1', 'c1']);
    const again = await onA.buildContext(request);
    expect(again.fromNearCache).toBe(true);
    // A different request is a different context.
    expect((await onA.buildContext({ sessionId: 'near-chat' })).fromNearCache).toBeUndefined();
    // The referenced session (not the one asked for) changes elsewhere: the context goes.
    await b.client.putSessionNodes({ sessionId: 'near-ref', nodes: [{ id: 'f1', shortId: 'fact1', role: 2, content: 'a corrected fact' }] });
    await waitFor(async () => (await onA.buildContext(request)).fromNearCache === undefined, 'the context to be dropped');
    const rebuilt = await onA.buildContext(request);
    expect(rebuilt.nodes[0]!.node!.content).toBe('a corrected fact');
  });

  it('builds contexts in the app\'s process once it holds the sessions: its own appends and those through another sidecar are added in place, and every context is the sidecar\'s', async () => {
    const onA = await nearClient(a.address);
    const onB = await nearClient(b.address);
    await onB.putSessionNodes({ sessionId: 'local-facts', nodes: [0, 1, 2].map((n) => ({ id: `f${n}`, shortId: `fact${n}`, role: 2, content: `fact number ${n}` })) });
    await onB.putSessionNodes({ sessionId: 'local-chat', nodes: [{ id: 'c0', shortId: 'chat0', role: 2, content: 'hello' }] });
    const first = await onA.buildContext({ sessionId: 'local-chat', includeRefs: true });
    expect(first.fromNearCache).toBeUndefined();
    await waitFor(() => onA.nearCache!.hasSession('local-chat'), 'the session to be fetched for the next context');

    // A conversation that grows through both clients, branching now and then, citing facts.
    const ids = ['c0'];
    let built = 0;
    for (let turn = 1; turn <= 30; turn++) {
      const writer = turn % 3 === 0 ? onB : onA;
      const parentId = turn % 7 === 0 ? ids[turn >> 1]! : ids.at(-1)!;
      const refs = turn % 4 === 0 ? [`fact${turn % 3}`] : [];
      const id = `c${turn}`;
      const appended = await writer.appendNode({ node: { id, shortId: `chat${turn}`, sessionId: 'local-chat', parentId, role: 2 + (turn % 2), content: `turn ${turn}`, refs } });
      ids.push(id);
      // A's near cache hears of B's appends on its stream: wait until it has this one.
      await waitFor(async () => (await onA.getSessionNodes({ sessionId: 'local-chat' })).info?.version === appended.sessionVersion, `turn ${turn} in A's near cache`);
      for (const request of [
        { sessionId: 'local-chat', headNodeId: id, includeRefs: true },
        { sessionId: 'local-chat', headNodeId: id, includeRefs: true, maxChars: 40 },
        { sessionId: 'local-chat', headNodeId: id, maxNodes: 3, extraRefs: ['fact0'] },
      ]) {
        // `source` says where the sidecar read the session when the near cache fetched it: not compared.
        const { fromNearCache, source: _local, ...context } = await onA.buildContext(request);
        const { source: _sidecar, ...answer } = await onA.call('buildContext', request);
        if (fromNearCache) built++;
        expect(context).toEqual(answer);
        // The same context without a promise, for hot paths.
        if (fromNearCache) expect(onA.nearCache!.buildContext(request)).toMatchObject(answer);
      }
    }
    // Every context after the facts' session was fetched too (the first one that cited a fact asked for it).
    expect(built).toBeGreaterThanOrEqual(80);
    expect(onA.nearCache!.stats()).toMatchObject({ sessionsFetched: 2 });
    expect(onA.nearCache!.stats().appendsApplied).toBeGreaterThanOrEqual(30);
  });

  it('reads its own writes: a Set is kept, a Delete and a tag invalidation through it drop at once', async () => {
    const client = await nearClient(a.address);
    await client.set({ key: 'n/own', value: Buffer.from('mine'), tags: ['own'] });
    expect((await client.get({ key: 'n/own' })).fromNearCache).toBe(true);
    await client.invalidateTags({ tags: ['own'] });
    expect(client.nearCache!.has('n/own')).toBe(false);
    expect((await client.get({ key: 'n/own' })).found).toBe(false);
    await client.set({ key: 'n/own', value: Buffer.from('again') });
    await client.delete({ keys: ['n/own'] });
    expect((await client.get({ key: 'n/own' })).found).toBe(false);
  });

  it('no read is older than a write acknowledged 50 ms before it began: concurrent writers on two sidecars, readers with near caches on both', async () => {
    const readers = [await nearClient(a.address), await nearClient(b.address), await nearClient(b.address)];
    const writers = [await nearClient(a.address), await nearClient(b.address)];
    const keys = ['c/0', 'c/1', 'c/2', 'c/3'];
    /** Per key, the acknowledged writes: when, and the version. */
    const acked = new Map<string, { at: number; version: number }[]>(keys.map((key) => [key, []]));
    let writes = 0;
    let reads = 0;
    // At least 2 s and 400 writes; on a loaded machine up to 12 s to get there.
    const began = Date.now();
    const running = () => Date.now() - began < 2000 || (writes < 400 && Date.now() - began < 12_000);
    const violations: string[] = [];
    const writer = async (client: ContextCacheClient, id: number) => {
      for (let n = 0; running(); n++) {
        const key = keys[(n + id) % keys.length]!;
        const response = await client.set({ key, value: Buffer.from(`${id}:${n}`) });
        acked.get(key)!.push({ at: Date.now(), version: response.info!.version });
        writes++;
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    };
    const reader = async (client: ContextCacheClient) => {
      for (let n = 0; running(); n++) {
        const key = keys[n % keys.length]!;
        const began = Date.now();
        const floor = Math.max(0, ...acked.get(key)!.filter((write) => write.at <= began - 50).map((write) => write.version));
        const read = await client.get({ key });
        reads++;
        const version = read.found ? read.info!.version : 0;
        if (version < floor) violations.push(`${key}: read version ${version} (near cache: ${read.fromNearCache === true}) but ${floor} was acknowledged 50 ms before the read began`);
        if (n % 16 === 15) await new Promise((resolve) => setImmediate(resolve));
      }
    };
    await Promise.all([...writers.map((client, id) => writer(client, id)), ...readers.map(reader)]);
    expect(violations).toEqual([]);
    expect(writes).toBeGreaterThan(150);
    // The property must have been tested on the near cache, not only on the sidecars.
    const hits = readers.reduce((sum, client) => sum + client.nearCache!.stats().hits, 0);
    expect(hits).toBeGreaterThan(reads / 4);
    expect(readers.reduce((sum, client) => sum + client.nearCache!.stats().invalidations, 0)).toBeGreaterThan(50);
  }, 30_000);

  it('is flushed by a Resync: the sidecar lost its subscription and got it back', async () => {
    const client = await nearClient(b.address);
    await a.client.set({ key: 'n/resync', value: Buffer.from('x') });
    await client.get({ key: 'n/resync' });
    expect(client.nearCache!.has('n/resync')).toBe(true);
    const messages: WatchResponse[] = [];
    client.nearCache!.onMessage((message) => messages.push(message));
    const flushes = client.nearCache!.stats().flushes;
    await fixture.redis.command('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await waitFor(() => messages.some((m) => m.event?.$case === 'resync' && m.event.value.reason === ResyncReason.RESYNC_REASON_SUBSCRIPTION_RESTORED), 'a Resync');
    expect(client.nearCache!.has('n/resync')).toBe(false);
    expect(client.nearCache!.stats().flushes).toBeGreaterThan(flushes);
    await waitFor(() => client.nearCache!.live, 'the near cache to be live again');
    await waitFor(() => a.sidecar.tiers.mode === 'coherent' && b.sidecar.tiers.mode === 'coherent', 'both sidecars coherent');
  });

  describe('behind a proxy that cuts the client off its sidecar', () => {
    let proxy: TestProxy;
    beforeAll(async () => {
      proxy = await startProxy(port(b.address));
    });
    afterAll(() => proxy.close());

    it('serves nothing from memory while its stream is down, and resumes without a gap: what changed meanwhile is dropped, the rest is kept', async () => {
      const client = await nearClient(`127.0.0.1:${proxy.port}`);
      await a.client.set({ key: 'n/cut/kept', value: Buffer.from('kept') });
      await a.client.set({ key: 'n/cut/changed', value: Buffer.from('old') });
      await client.get({ key: 'n/cut/kept' });
      await client.get({ key: 'n/cut/changed' });
      expect(client.nearCache!.stats().entries).toBe(2);

      proxy.cut('reset');
      await waitFor(() => !client.nearCache!.live, 'the near cache to notice its stream is down');
      // Down: a read goes to the sidecar (here unreachable), never to the possibly stale copy.
      await expect(client.get({ key: 'n/cut/kept' }, { deadline: 300 })).rejects.toMatchObject({ name: 'ContextCacheError' });
      await a.client.set({ key: 'n/cut/changed', value: Buffer.from('new') });
      proxy.heal();

      await waitFor(() => client.nearCache!.live, 'the near cache to resume', 10_000);
      expect(client.nearCache!.has('n/cut/changed')).toBe(false);
      expect(client.nearCache!.has('n/cut/kept')).toBe(true);
      expect((await client.get({ key: 'n/cut/kept' })).fromNearCache).toBe(true);
      expect(text((await client.get({ key: 'n/cut/changed' })).value)).toBe('new');
      expect(client.nearCache!.stats().flushes).toBe(0);
    });
  });
});

describe('the near cache when its sidecar loses Redis', () => {
  const fixture = sidecarsOnRedis(1, { CONTEXT_CACHE_NAMESPACE: 'near-down' });

  it('stops serving and is flushed when the sidecar is no longer coherent, keeps no degraded answer, and is live again once the sidecar is', async () => {
    const sc = fixture.sidecars[0]!;
    const client = new ContextCacheClient(sc.address, { nearCache: { maxBytes: 1 << 20 } });
    try {
      await client.ready();
      const coherence: boolean[] = [];
      client.nearCache!.onMessage((m) => m.event?.$case === 'coherenceChanged' && coherence.push(m.event.value.coherent));
      await client.set({ key: 'd/1', value: Buffer.from('v') });
      expect((await client.get({ key: 'd/1' })).fromNearCache).toBe(true);

      await fixture.redis.kill();
      await waitFor(() => coherence.includes(false), 'CoherenceChanged(false)');
      expect(client.nearCache!.live).toBe(false);
      expect(client.nearCache!.has('d/1')).toBe(false);
      // The sidecar answers from its L1, marked degraded: passed on, never kept.
      const degraded = await client.get({ key: 'd/1' });
      expect(degraded.info?.degraded).toBe(true);
      expect(degraded.fromNearCache).toBeUndefined();
      expect(client.nearCache!.has('d/1')).toBe(false);

      await fixture.redis.restart();
      await waitFor(() => client.nearCache!.live, 'the near cache to be live again', 20_000);
      expect(coherence.at(-1)).toBe(true);
    } finally {
      client.close();
    }
  }, 40_000);
});
