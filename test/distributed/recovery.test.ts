import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KeyChange, Source, WriteScope } from '../../src/client';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { WatchRecorder } from '../helpers/watch';
import { session } from '../helpers/nodes';

const text = (value: Uint8Array) => Buffer.from(value).toString();

describe('one sidecar cut off from Redis, then back: the replay of its local writes', () => {
  let redis: TestRedis;
  let proxy: TestProxy;
  let cut: TestSidecar;
  let other: TestSidecar;

  beforeEach(async () => {
    redis = await startRedis();
    proxy = await startProxy(redis.port);
    const env = { CONTEXT_CACHE_NAMESPACE: 'recovery', CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: '200ms', CONTEXT_CACHE_PUBSUB_HEARTBEAT: '300ms' };
    cut = await startSidecar({ ...env, REDIS_URL: proxy.url });
    other = await startSidecar({ ...env, REDIS_URL: redis.url });
    await waitFor(() => cut.sidecar.tiers.mode === 'coherent' && other.sidecar.tiers.mode === 'coherent', 'both sidecars coherent');
  });
  afterEach(async () => {
    await closeAllSidecars();
    await proxy.close();
    await redis.stop();
  });
  afterAll(closeAllSidecars);

  it('marks L1 hits degraded while cut off, and replays its local writes as invalidations every sidecar and watcher sees', async () => {
    await other.client.set({ key: 'k', value: Buffer.from('v1') });
    expect(text((await cut.client.get({ key: 'k' })).value)).toBe('v1');
    expect((await cut.client.get({ key: 'k' })).info?.degraded).toBe(false);
    const watcher = new WatchRecorder(other.client.watch({ keyPrefixes: ['k'] }));
    await watcher.started();

    proxy.cut('blackhole');
    await waitFor(async () => (await cut.client.set({ key: 'probe', value: Buffer.from('x') })).scope === WriteScope.WRITE_SCOPE_LOCAL, 'the cut sidecar to write locally');
    const hit = await cut.client.get({ key: 'k' });
    expect(hit.info?.source).toBe(Source.SOURCE_L1);
    expect(hit.info?.degraded).toBe(true);
    expect((await cut.client.set({ key: 'k', value: Buffer.from('v2-local') })).scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);
    // The others still serve the value the local write superseded, until the replay.
    expect(text((await other.client.get({ key: 'k' })).value)).toBe('v1');
    expect(Number((await cut.client.getStats()).l2?.pendingInvalidations)).toBeGreaterThanOrEqual(2);

    proxy.heal();
    await waitFor(() => cut.sidecar.tiers.mode === 'coherent', 'the cut sidecar to replay and be coherent again');
    // Nobody serves v1 (superseded) any more, nor the local value (never replayed): a miss, refilled by the app.
    expect((await other.client.get({ key: 'k' })).found).toBe(false);
    expect((await cut.client.get({ key: 'k' })).found).toBe(false);
    const deleted = await watcher.waitFor(
      (m) => m.event?.$case === 'keyInvalidated' && m.event.value.key === 'k' && m.event.value.change === KeyChange.KEY_CHANGE_DELETED,
      'the replayed invalidation of k on the other sidecar',
    );
    expect(deleted.originSidecarId).toBe(cut.sidecar.sidecarId);
    watcher.cancel();

    const stats = await cut.client.getStats();
    expect(Number(stats.l2?.pendingInvalidations)).toBe(0);
    expect(Number(stats.l2?.replayedInvalidations)).toBeGreaterThanOrEqual(2);
    const metrics = await (await fetch(`http://${cut.sidecar.adminAddress}/metrics`)).text();
    expect(metrics).toMatch(/^context_cache_invalidations_replayed_total [1-9]/m);
    expect(metrics).toMatch(/^context_cache_pending_invalidations 0$/m);
    expect((await cut.client.set({ key: 'k', value: Buffer.from('v3') })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
  });

  it('never lets a fill resurrect a session without the append the cut sidecar could not announce', async () => {
    const sessionId = 'chat';
    const miss = await other.client.getSessionNodes({ sessionId, leaseOnMiss: true });
    expect(miss.lease).toBeDefined();

    proxy.cut('blackhole');
    await waitFor(async () => (await cut.client.set({ key: 'probe', value: Buffer.from('x') })).scope === WriteScope.WRITE_SCOPE_LOCAL, 'the cut sidecar to write locally');
    const [appended] = session(sessionId, 3).slice(2);
    expect((await cut.client.appendNode({ node: appended })).scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);

    // The other sidecar fills from a database read made before the append: it lacks the node.
    const stale = await other.client.putSessionNodes({ sessionId, nodes: session(sessionId, 2), leaseToken: miss.lease!.token });
    expect(stale.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);

    proxy.heal();
    await waitFor(() => cut.sidecar.tiers.mode === 'coherent', 'the cut sidecar to replay and be coherent again');
    // The replay invalidated the session: the next read misses, and the app refills it with the node.
    expect((await other.client.getSessionNodes({ sessionId })).found).toBe(false);
    expect((await cut.client.getSessionNodes({ sessionId })).found).toBe(false);
  });
});

describe('CONTEXT_CACHE_DEGRADED_MAX_AGE', () => {
  let redis: TestRedis;
  afterEach(async () => {
    await closeAllSidecars();
    await redis.stop();
  });

  it('0 refuses degraded L1 hits: a miss sends the app to its source of truth', async () => {
    redis = await startRedis();
    const sc = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'cap', CONTEXT_CACHE_DEGRADED_MAX_AGE: '0' });
    await waitFor(() => sc.sidecar.tiers.mode === 'coherent', 'coherent');
    await sc.client.set({ key: 'k', value: Buffer.from('v') });
    expect((await sc.client.get({ key: 'k' })).info?.source).toBe(Source.SOURCE_L1);
    await redis.kill();
    await waitFor(() => sc.sidecar.tiers.mode === 'degraded', 'degraded');
    expect((await sc.client.get({ key: 'k' })).found).toBe(false);
  });

  it('a short cap serves degraded hits at first, then misses', async () => {
    redis = await startRedis();
    // Long enough for the first read to come within it when killing Redis takes a container engine's round trip.
    const sc = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'cap', CONTEXT_CACHE_DEGRADED_MAX_AGE: '1s' });
    await waitFor(() => sc.sidecar.tiers.mode === 'coherent', 'coherent');
    await sc.client.set({ key: 'k', value: Buffer.from('v') });
    await redis.kill();
    await waitFor(() => sc.sidecar.tiers.mode === 'degraded', 'degraded');
    const first = await sc.client.get({ key: 'k' });
    expect(first.found && first.info?.degraded).toBe(true);
    await waitFor(async () => !(await sc.client.get({ key: 'k' })).found, 'the cap to pass', 5000);
  });
});

describe('a Watch opened before its sidecar first reaches Redis', () => {
  it('gets a Resync when the sidecar turns coherent: what was published before its first subscription never reached it', async () => {
    const redis = await startRedis();
    const proxy = await startProxy(redis.port);
    try {
      proxy.cut('reset');
      const env = { CONTEXT_CACHE_NAMESPACE: 'first-subscription', CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: '200ms', CONTEXT_CACHE_PUBSUB_HEARTBEAT: '300ms' };
      const late = await startSidecar({ ...env, REDIS_URL: proxy.url });
      const other = await startSidecar({ ...env, REDIS_URL: redis.url });
      const watcher = new WatchRecorder(late.client.watch({ keyPrefixes: ['k'] }));
      const started = await watcher.waitFor((m) => m.event?.$case === 'started', 'the stream to start');
      expect(started.event?.$case === 'started' && started.event.value.coherent).toBe(false);
      // Published while the late sidecar cannot hear it: nothing but a Resync can tell its watcher.
      await other.client.set({ key: 'k', value: Buffer.from('v1') });
      proxy.heal();
      const coherent = await watcher.waitFor((m) => m.event?.$case === 'coherenceChanged' && m.event.value.coherent, 'coherence');
      const resync = watcher.messages.findIndex((m) => m.event?.$case === 'resync');
      expect(resync, JSON.stringify(watcher.messages.map((m) => m.event?.$case))).toBeGreaterThan(0);
      expect(resync).toBeLessThan(watcher.messages.indexOf(coherent));
      watcher.stream.call.cancel();
    } finally {
      await closeAllSidecars();
      await proxy.close();
      await redis.stop();
    }
  });
});
