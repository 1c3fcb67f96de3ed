import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ResyncReason, Source, WriteScope } from '../../src/client';
import { HEALTH_COMPONENT_LOCKS, HEALTH_COMPONENT_PUBSUB, HEALTH_COMPONENT_REDIS } from '../../src/ops/health';
import { checkHealth, healthClient, ServingStatus } from '../helpers/health';
import { startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { WatchRecorder } from '../helpers/watch';

const text = (value: Uint8Array) => Buffer.from(value).toString();

describe('Redis trouble: degradation, recovery and resync', () => {
  let redis: TestRedis;
  let a: TestSidecar;
  let b: TestSidecar;

  beforeEach(async () => {
    redis = await startRedis();
    const env = { REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'deg', CONTEXT_CACHE_REDIS_RECONNECT_MAX: '200ms' };
    a = await startSidecar(env);
    b = await startSidecar(env);
    await waitFor(() => a.sidecar.tiers.mode === 'coherent' && b.sidecar.tiers.mode === 'coherent', 'both sidecars subscribed');
  });
  afterEach(async () => {
    await closeAllSidecars();
    await redis.stop();
  });
  afterAll(closeAllSidecars);

  it('keeps serving L1 hits, takes writes locally and reports degraded health while Redis is dead', async () => {
    await a.client.set({ key: 'warm', value: Buffer.from('cached') });
    expect((await b.client.get({ key: 'warm' })).info?.source).toBe(Source.SOURCE_L2);

    await redis.kill();
    await waitFor(() => b.sidecar.tiers.mode === 'degraded', 'B to notice Redis is gone');

    const hit = await b.client.get({ key: 'warm' });
    expect(hit.found).toBe(true);
    expect(hit.info?.source).toBe(Source.SOURCE_L1);
    expect(text(hit.value)).toBe('cached');

    const started = Date.now();
    const write = await b.client.set({ key: 'offline', value: Buffer.from('local') });
    expect(Date.now() - started).toBeLessThan(1000);
    expect(write.scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);
    expect(text((await b.client.get({ key: 'offline' })).value)).toBe('local');
    expect((await b.client.delete({ keys: ['offline'] })).scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);

    const health = healthClient(b.address);
    try {
      expect(await checkHealth(health, '')).toBe(ServingStatus.SERVING);
      expect(await checkHealth(health, HEALTH_COMPONENT_REDIS)).toBe(ServingStatus.NOT_SERVING);
      expect(await checkHealth(health, HEALTH_COMPONENT_PUBSUB)).toBe(ServingStatus.NOT_SERVING);
      expect(await checkHealth(health, HEALTH_COMPONENT_LOCKS)).toBe(ServingStatus.NOT_SERVING);
    } finally {
      health.close();
    }
    const stats = await b.client.getStats();
    expect(stats.l2?.state).toBeGreaterThan(0);
    expect(stats.l2?.errors ?? 0).toBeGreaterThanOrEqual(0);
  });

  it('recovers unaided after a restart, flushes L1 and serves no stale value', async () => {
    await a.client.set({ key: 'k', value: Buffer.from('v1') });
    await b.client.get({ key: 'k' });
    expect((await b.client.get({ key: 'k' })).info?.source).toBe(Source.SOURCE_L1);
    const watcher = new WatchRecorder(b.client.watch({}));
    await watcher.started();

    await redis.kill();
    await waitFor(() => a.sidecar.tiers.mode === 'degraded', 'A to notice Redis is gone');
    // Written while Redis is away: only A knows. B must not keep serving v1 afterwards.
    expect((await a.client.set({ key: 'k', value: Buffer.from('v2') })).scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);

    await redis.restart();
    await waitFor(() => a.sidecar.tiers.mode === 'coherent' && b.sidecar.tiers.mode === 'coherent', 'both sidecars to recover');
    await watcher.waitFor(
      (m) => m.event?.$case === 'resync' && m.event.value.reason === ResyncReason.RESYNC_REASON_REDIS_DATA_LOST,
      'a data-lost resync on B',
    );
    const after = await b.client.get({ key: 'k' });
    expect(after.found).toBe(false);

    const health = healthClient(b.address);
    try {
      await waitFor(async () => (await checkHealth(health, HEALTH_COMPONENT_REDIS)) === ServingStatus.SERVING, 'redis component SERVING');
      await waitFor(async () => (await checkHealth(health, HEALTH_COMPONENT_LOCKS)) === ServingStatus.SERVING, 'locks component SERVING');
    } finally {
      health.close();
    }
    const write = await b.client.set({ key: 'k', value: Buffer.from('v3') });
    expect(write.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    expect(text((await a.client.get({ key: 'k' })).value)).toBe('v3');
    watcher.cancel();
  });

  it('resyncs after its subscription is killed while writes continue elsewhere', async () => {
    await a.client.set({ key: 'p', value: Buffer.from('old') });
    await b.client.get({ key: 'p' });
    expect((await b.client.get({ key: 'p' })).info?.source).toBe(Source.SOURCE_L1);
    const watcher = new WatchRecorder(b.client.watch({}));
    await watcher.started();

    const killed = Number(await redis.command('CLIENT', 'KILL', 'TYPE', 'pubsub'));
    expect(killed).toBeGreaterThanOrEqual(2);
    // A's write is published while nobody is subscribed: B never hears of it.
    await a.client.set({ key: 'p', value: Buffer.from('new') });

    await watcher.waitFor(
      (m) => m.event?.$case === 'resync' && m.event.value.reason === ResyncReason.RESYNC_REASON_SUBSCRIPTION_RESTORED,
      'a subscription-restored resync on B',
    );
    const after = await b.client.get({ key: 'p' });
    expect(text(after.value)).toBe('new');
    expect((await b.client.getStats()).pubsub?.resyncs).toBeGreaterThanOrEqual(1);
    watcher.cancel();
  });

  it('never serves a stale L1 value while detached from Pub/Sub', async () => {
    await a.client.set({ key: 'd', value: Buffer.from('old') });
    await b.client.get({ key: 'd' });
    // Keep B's subscriber from coming back quickly: kill it, then write on A while B is detached.
    await redis.command('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await waitFor(() => b.sidecar.tiers.mode !== 'coherent' || b.sidecar.tiers.counters.resyncs > 0, 'B to lose its subscription');
    await a.client.set({ key: 'd', value: Buffer.from('new') });
    const read = await b.client.get({ key: 'd' });
    expect(text(read.value)).toBe('new');
  });

  it('fails fast instead of hanging when Redis stops answering', async () => {
    await a.client.set({ key: 'h', value: Buffer.from('cached') });
    await redis.pause();
    try {
      const started = Date.now();
      const write = await a.client.set({ key: 'h2', value: Buffer.from('x') });
      expect(write.scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);
      expect(Date.now() - started).toBeLessThan(2000);
      await waitFor(() => a.sidecar.tiers.mode === 'degraded', 'A to treat the hung Redis as down');
      const quick = Date.now();
      expect(text((await a.client.get({ key: 'h' })).value)).toBe('cached');
      expect(Date.now() - quick).toBeLessThan(200);
    } finally {
      await redis.resume();
    }
    await waitFor(() => a.sidecar.tiers.mode === 'coherent', 'A to reconnect after Redis resumes');
  });

  it('a heartbeat against a healthy Redis keeps the subscription (and L1) as they are', async () => {
    const calm = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'deg', CONTEXT_CACHE_PUBSUB_HEARTBEAT: '100ms' });
    await waitFor(() => calm.sidecar.tiers.mode === 'coherent', 'subscribed');
    await calm.client.set({ key: 'calm', value: Buffer.from('v') });
    const resyncs = calm.sidecar.tiers.counters.resyncs;
    const started = Date.now();
    // Ten heartbeats; each PING is answered (in subscribe mode Redis answers ["pong", ""]).
    await waitFor(() => Date.now() - started > 1000, 'ten heartbeats');
    expect(calm.sidecar.tiers.counters.resyncs).toBe(resyncs);
    expect(calm.sidecar.tiers.mode).toBe('coherent');
    expect((await calm.client.get({ key: 'calm' })).info?.source).toBe(Source.SOURCE_L1);
    await calm.close();
  });

  it('notices a silent subscription by its heartbeat, re-subscribes and resyncs', async () => {
    const quiet = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'deg', CONTEXT_CACHE_PUBSUB_HEARTBEAT: '200ms', CONTEXT_CACHE_REDIS_RECONNECT_MAX: '200ms' });
    await waitFor(() => quiet.sidecar.tiers.mode === 'coherent', 'subscribed');
    await quiet.client.set({ key: 'q', value: Buffer.from('v') });
    const resyncsBefore = quiet.sidecar.tiers.counters.resyncs;
    await redis.pause();
    try {
      // No call is made: only the heartbeat can find out that nothing arrives any more.
      await waitFor(() => !quiet.sidecar.redis!.bus.subscribed, 'the heartbeat to drop the silent subscription', 5000);
    } finally {
      await redis.resume();
    }
    await waitFor(() => quiet.sidecar.tiers.mode === 'coherent', 'the subscription to come back');
    await waitFor(() => quiet.sidecar.tiers.counters.resyncs > resyncsBefore, 'a resync after re-subscribing');
    await quiet.close();
  });

  it('notices a FLUSHALL (no connection drops) and resyncs', async () => {
    const watched = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'deg', CONTEXT_CACHE_PUBSUB_HEARTBEAT: '200ms' });
    await waitFor(() => watched.sidecar.tiers.mode === 'coherent', 'subscribed');
    const watcher = new WatchRecorder(watched.client.watch({}));
    await watcher.started();
    await watched.client.set({ key: 'f', value: Buffer.from('v') });
    await redis.command('FLUSHALL');
    await watcher.waitFor(
      (m) => m.event?.$case === 'resync' && m.event.value.reason === ResyncReason.RESYNC_REASON_REDIS_DATA_LOST,
      'a data-lost resync after FLUSHALL',
    );
    expect((await watched.client.get({ key: 'f' })).found).toBe(false);
    watcher.cancel();
    await watched.close();
  });
});
