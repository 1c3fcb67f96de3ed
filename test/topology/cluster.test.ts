import { status } from '@grpc/grpc-js';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyChange, RedisMode, RedisNodeRole, Role, WriteScope } from '../../src/client';
import { bucketOf, CLUSTER_BUCKETS } from '../../src/redis/keys';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { startCluster, type TestCluster } from '../helpers/topology';
import { rejectionOf, waitFor } from '../helpers/wait';
import { WatchRecorder } from '../helpers/watch';
import { coherent, TopologyLoad } from './load';

/**
 * The sidecar on a real Redis Cluster (3 primaries, 3 replicas, started by
 * the harness): every RPC family through two sidecars, then faults under
 * concurrent load — a primary killed (its replica promoted), slots resharded
 * with their keys (MOVED and ASK) — judged by the end state: no crash, no
 * read older than an answered write once every sidecar is coherent again,
 * all sidecars agreeing after a fill.
 */
let cluster: TestCluster;
let a: TestSidecar;
let b: TestSidecar;

beforeAll(async () => {
  cluster = await startCluster();
  const env = { REDIS_CLUSTER_NODES: cluster.seedList, CONTEXT_CACHE_NAMESPACE: 'cl', CONTEXT_CACHE_PUBSUB_HEARTBEAT: '500ms', CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: '1s' };
  [a, b] = await Promise.all([startSidecar(env), startSidecar(env)]);
  await coherent(a, b);
}, 60_000);

afterAll(async () => {
  await closeAllSidecars();
  await cluster?.stop();
});

describe('on a Redis Cluster', () => {
  it('reports the topology: three reachable primaries serving every slot, and their replicas', async () => {
    await waitFor(async () => (await a.client.getStats()).l2!.topology!.nodes.length === 6, 'all six nodes to be known');
    const topology = (await a.client.getStats()).l2!.topology!;
    expect(topology.mode).toBe(RedisMode.REDIS_MODE_CLUSTER);
    expect(topology.allSlotsServed).toBe(true);
    const primaries = topology.nodes.filter((n) => n.role === RedisNodeRole.REDIS_NODE_ROLE_PRIMARY);
    expect(primaries).toHaveLength(3);
    expect(primaries.reduce((sum, n) => sum + n.slots, 0)).toBe(16384);
    expect(primaries.every((n) => n.reachable)).toBe(true);
    // Replicas are known from the slot map; the sidecar sends them nothing.
    expect(topology.nodes.filter((n) => n.role === RedisNodeRole.REDIS_NODE_ROLE_REPLICA)).toHaveLength(3);
  });

  it('spreads generic entries over every primary (hash-tagged buckets)', async () => {
    const keys = Array.from({ length: 200 }, (_, i) => `spread-${i}`);
    for (const key of keys) await a.client.set({ key, value: Buffer.from(key) });
    const perPrimary = await Promise.all(
      cluster.masters().map(async (master) => Number((await master.command('EVAL', "return #redis.call('KEYS', 'cc:cl:e:*')", 0)) as number)),
    );
    expect(perPrimary.every((count) => count > 0)).toBe(true);
    expect(perPrimary.reduce((x, y) => x + y, 0)).toBe(200);
    expect(CLUSTER_BUCKETS).toBeGreaterThanOrEqual(cluster.masters().length);
  });

  it('serves the cache family across slots: Set/Get/GetMany/Delete, conditional writes, tags, leases — coherent on the other sidecar', async () => {
    const keys = Array.from({ length: 30 }, (_, i) => `family-${i}`);
    for (const key of keys) expect((await a.client.set({ key, value: Buffer.from(`v-${key}`), tags: ['family'] })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    const many = await b.client.getMany({ keys });
    expect(many.results.map((r) => r.value.toString())).toEqual(keys.map((k) => `v-${k}`));
    // Conditional write on another sidecar.
    const current = await b.client.get({ key: keys[0]! });
    await b.client.set({ key: keys[0]!, value: Buffer.from('cas'), ifVersion: current.info!.version });
    await waitFor(async () => (await a.client.get({ key: keys[0]! })).value.toString() === 'cas', 'A to see B\'s conditional write');
    // Delete across slots, in one call.
    const deleted = await a.client.delete({ keys: keys.slice(0, 10) });
    expect(deleted.deleted).toBe(10);
    await waitFor(async () => (await b.client.getMany({ keys: keys.slice(0, 10) })).results.every((r) => !r.found), 'B to drop the deleted keys');
    // Tags whose members span every bucket.
    expect((await b.client.invalidateTags({ tags: ['family'] })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    await waitFor(async () => (await a.client.getMany({ keys })).results.every((r) => !r.found), 'every tagged key to be gone on A');
    expect((await b.client.getMany({ keys })).results.every((r) => !r.found)).toBe(true);
    // A lease fill, and a stale fill refused.
    const miss = await a.client.get({ key: 'leased', leaseOnMiss: true });
    expect(miss.lease?.token).toBeTruthy();
    await a.client.set({ key: 'leased', value: Buffer.from('filled'), leaseToken: miss.lease!.token });
    expect((await b.client.get({ key: 'leased' })).value.toString()).toBe('filled');
  });

  it('delivers Watch events from the other sidecar', async () => {
    const watch = new WatchRecorder(b.client.watch({ keyPrefixes: ['watched-'] }));
    await watch.started();
    await a.client.set({ key: 'watched-1', value: Buffer.from('x') });
    const event = await watch.waitFor((m) => m.event?.$case === 'keyInvalidated', 'the key event');
    expect(event.event?.$case === 'keyInvalidated' && event.event.value).toMatchObject({ key: 'watched-1', change: KeyChange.KEY_CHANGE_SET });
    watch.cancel();
  });

  it('serves sessions: put, append, short IDs, BuildContext with references, invalidate', async () => {
    const put = await a.client.putSessionNodes({
      sessionId: 'conv-1',
      nodes: [
        { id: 'conv-1/n0', sessionId: 'conv-1', shortId: 'c1a', role: Role.ROLE_SYSTEM, content: 'system' },
        { id: 'conv-1/n1', sessionId: 'conv-1', shortId: 'c1b', parentId: 'conv-1/n0', role: Role.ROLE_USER, content: 'hello' },
      ],
    });
    expect(put.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    await b.client.putSessionNodes({ sessionId: 'conv-2', nodes: [{ id: 'conv-2/n0', sessionId: 'conv-2', shortId: 'c2a', role: Role.ROLE_USER, content: 'elsewhere' }] });
    await b.client.appendNode({ node: { id: 'conv-1/n2', sessionId: 'conv-1', parentId: 'conv-1/n1', role: Role.ROLE_ASSISTANT, content: 'hi', refs: ['c2a'] } });
    const resolved = await a.client.resolveShortIds({ shortIds: ['c1a', 'c1b', 'c2a'] });
    expect(resolved.nodes.map((n) => n.sessionId)).toEqual(['conv-1', 'conv-1', 'conv-2']);
    expect(resolved.unresolvedShortIds).toEqual([]);
    await waitFor(async () => (await a.client.getSessionNodes({ sessionId: 'conv-1' })).nodes.length === 3, 'A to see the append');
    const built = await a.client.buildContext({ sessionId: 'conv-1', includeRefs: true });
    expect(built.nodes.map((n) => n.node!.id)).toEqual(expect.arrayContaining(['conv-1/n0', 'conv-1/n1', 'conv-1/n2', 'conv-2/n0']));
    await a.client.invalidateSession({ sessionId: 'conv-1' });
    await waitFor(async () => !(await b.client.getSessionNodes({ sessionId: 'conv-1' })).found, 'B to drop the session');
  });

  it('grants locks with rising fencing tokens from either sidecar', async () => {
    const first = await a.client.acquireLock({ resource: 'orders', ttl: { seconds: 5 } });
    expect(first.token).toBeTruthy();
    const busy = await rejectionOf(b.client.acquireLock({ resource: 'orders', ttl: { seconds: 5 } }));
    expect(busy.code).toBe(status.ABORTED);
    await a.client.releaseLock({ resource: 'orders', token: first.token });
    const second = await b.client.acquireLock({ resource: 'orders', ttl: { seconds: 5 }, waitTimeout: { seconds: 1 } });
    expect(second.fencingToken).toBeGreaterThan(first.fencingToken);
    await b.client.releaseLock({ resource: 'orders', token: second.token });
  });

  it('survives a primary killed under load: writes resume, no read older than an answered write, all agree after a fill', async () => {
    const load = new TopologyLoad([a.client, b.client], 'failover');
    load.start();
    await waitFor(() => load.counters.writes > 200, 'load to run');
    const victim = await cluster.masterOf('cc:cl:e:{b0}:x');
    const recoveriesBefore = a.sidecar.redis!.recoveries.flushed + b.sidecar.redis!.recoveries.flushed;
    const killedAt = Date.now();
    const failover = await cluster.killMaster(victim);
    // Writes through both sidecars reach Redis again.
    const writesAfter = load.counters.writes;
    await waitFor(() => load.counters.writes > writesAfter + 100, 'writes to resume', 30_000);
    await coherent(a, b);
    const coherentAfterMs = Date.now() - killedAt;
    await load.stop();
    await coherent(a, b);
    // The promoted replica is another process: one sidecar flushed the namespace (the data may be older than what was answered).
    await waitFor(() => a.sidecar.redis!.recoveries.flushed + b.sidecar.redis!.recoveries.flushed > recoveriesBefore, 'a recovery flush');
    // Recovered also means each sidecar's slot map has moved off the dead primary (ioredis refreshes it
    // on errors and every 5 s; until then that shard's keys are misses there, never stale values).
    await waitFor(
      async () =>
        (await Promise.all([a, b].map((s) => s.client.getStats()))).every(({ l2 }) => l2!.topology!.allSlotsServed && !l2!.topology!.nodes.some((n) => n.address === victim.address && n.role === RedisNodeRole.REDIS_NODE_ROLE_PRIMARY)),
      'both sidecars to see every slot served by a live primary',
      30_000,
    );
    await coherent(a, b);
    expect(await load.staleReads()).toEqual([]);
    expect(await load.disagreements()).toEqual([]);
    expect(load.counters.writes).toBeGreaterThan(300);
    console.info(`cluster failover: promoted after ${failover.elapsedMs} ms, both sidecars coherent ${coherentAfterMs} ms after the kill; ${JSON.stringify(load.counters)}`);
    await cluster.restartKilled(victim);
  }, 90_000);

  it('follows a resharding under load (MOVED and ASK): no read older than an answered write', async () => {
    const load = new TopologyLoad([a.client, b.client], 'reshard');
    load.start();
    await waitFor(() => load.counters.writes > 200, 'load to run');
    const [from, to] = cluster.masters();
    // The slots of a few buckets, so keys of the load move.
    const slots = [...new Set(await Promise.all(load.keys.slice(0, 12).map((key) => cluster.keySlot(`cc:cl:e:{b${bucketOfKey(key)}}:${key}`))))].filter((slot) => cluster.masterOfSlot(slot) === from);
    const moved = await cluster.reshard(slots.length, from!, to!, { slots });
    await waitFor(() => load.counters.writes > 400, 'load to continue after the resharding');
    await load.stop();
    await coherent(a, b);
    expect(await load.staleReads()).toEqual([]);
    expect(await load.disagreements()).toEqual([]);
    console.info(`cluster resharding: ${moved.slots.length} slots, ${moved.keysMoved} keys moved in ${moved.elapsedMs} ms under load; ${JSON.stringify(load.counters)}`);
  }, 90_000);

  it('the raw cluster holds nothing outside the namespace', async () => {
    const raw = new Redis(cluster.masters()[0]!.port, '127.0.0.1');
    try {
      const keys = (await Promise.all(cluster.masters().map((m) => m.command('KEYS', '*') as Promise<unknown[]>))).flat().map(String);
      expect(keys.length).toBeGreaterThan(0);
      expect(keys.filter((key) => !key.startsWith('cc:cl:'))).toEqual([]);
    } finally {
      raw.disconnect();
    }
  });
});

const bucketOfKey = (key: string) => bucketOf(key, CLUSTER_BUCKETS);
