import { beforeAll, describe, expect, it } from 'vitest';
import { KeyChange, ResyncReason, Source } from '../../src/client';
import { ContextCacheClient } from '../../src/client';
import { startRedis, type TestRedis } from '../helpers/redis';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { WatchRecorder } from '../helpers/watch';

const text = (value: Uint8Array) => Buffer.from(value).toString();

describe('three sidecars, compression, corrupt values and many watchers', () => {
  const fixture = sidecarsOnRedis(3, { CONTEXT_CACHE_NAMESPACE: 'three', CONTEXT_CACHE_COMPRESSION_THRESHOLD: '256' });
  let redis: TestRedis;
  let a: TestSidecar;
  let b: TestSidecar;
  let c: TestSidecar;
  beforeAll(() => void ({ redis, sidecars: [a, b, c] } = fixture));

  it('a write on A reaches watchers on B and C, and drops their L1 copies', async () => {
    await a.client.set({ key: 'shared', value: Buffer.from('one') });
    for (const s of [b, c]) {
      await s.client.get({ key: 'shared' });
      expect((await s.client.get({ key: 'shared' })).info?.source).toBe(Source.SOURCE_L1);
    }
    const watchers = [new WatchRecorder(b.client.watch({ keyPrefixes: ['sha'] })), new WatchRecorder(c.client.watch({ keyPrefixes: ['sha'] }))];
    await Promise.all(watchers.map((w) => w.started()));

    const written = await a.client.set({ key: 'shared', value: Buffer.from('two') });
    for (const w of watchers) {
      const event = await w.waitFor((m) => m.event?.$case === 'keyInvalidated', 'the key event');
      expect(event.event?.$case === 'keyInvalidated' && event.event.value.version).toBe(written.info?.version);
      expect(event.originSidecarId).toBe(a.sidecar.sidecarId);
    }
    for (const s of [b, c]) expect(text((await s.client.get({ key: 'shared' })).value)).toBe('two');
    watchers.forEach((w) => w.cancel());
  });

  it('deletes and tag invalidations on one sidecar clear every L1', async () => {
    await a.client.set({ key: 'doc:1', value: Buffer.from('x'), tags: ['docs'] });
    await a.client.set({ key: 'doc:2', value: Buffer.from('y'), tags: ['docs', 'other'] });
    await a.client.set({ key: 'keep', value: Buffer.from('z'), tags: ['other'] });
    for (const s of [a, b, c]) await s.client.getMany({ keys: ['doc:1', 'doc:2', 'keep'] });
    const watcher = new WatchRecorder(a.client.watch({ tags: ['docs'] }));
    await watcher.started();

    const byPrefix = new WatchRecorder(b.client.watch({ keyPrefixes: ['doc:'] }));
    await byPrefix.started();
    await c.client.invalidateTags({ tags: ['docs'] });
    await watcher.waitFor((m) => m.event?.$case === 'tagsInvalidated', 'the tags event on A');
    // A watcher of key prefixes hears of the tag invalidation too, with the keys it removed.
    const event = await byPrefix.waitFor((m) => m.event?.$case === 'tagsInvalidated', 'the tags event for doc: on B');
    expect(event.event?.$case === 'tagsInvalidated' && [...event.event.value.keys].sort()).toEqual(['doc:1', 'doc:2']);
    byPrefix.cancel();
    for (const s of [a, b, c]) {
      const [one, two, keep] = (await s.client.getMany({ keys: ['doc:1', 'doc:2', 'keep'] })).results;
      expect(one?.found).toBe(false);
      expect(two?.found).toBe(false);
      expect(keep?.found).toBe(true);
    }

    await b.client.delete({ keys: ['keep'] });
    await waitFor(async () => !(await a.client.get({ key: 'keep' })).found, 'the delete to reach A');
    expect((await c.client.get({ key: 'keep' })).found).toBe(false);
    watcher.cancel();
  });

  it('an entry rewritten without a tag survives the invalidation of that tag', async () => {
    await a.client.set({ key: 'retag', value: Buffer.from('1'), tags: ['old'] });
    await a.client.set({ key: 'retag', value: Buffer.from('2'), tags: ['new'] });
    await b.client.invalidateTags({ tags: ['old'] });
    expect(text((await c.client.get({ key: 'retag' })).value)).toBe('2');
  });

  it('prunes expired members from a tag set on every write, so it does not grow without bound', async () => {
    for (let i = 0; i < 50; i++) await a.client.set({ key: `churn:${i}`, value: Buffer.from('x'), tags: ['churn'], ttl: { seconds: 0, nanos: 100e6 } });
    expect(Number(await redis.command('ZCARD', 'cc:three:tz:churn'))).toBeGreaterThan(0);
    await waitFor(async () => (await redis.command('EXISTS', 'cc:three:e:churn:49')) === 0, 'the short-lived entries to expire');
    await a.client.set({ key: 'churn:last', value: Buffer.from('x'), tags: ['churn'] });
    // 51 keys carried the tag; only the live one is left in its set.
    expect(await redis.command('ZRANGE', 'cc:three:tz:churn', 0, -1)).toEqual([Buffer.from('churn:last')]);
  });

  it('compresses values at or above the threshold in Redis and round-trips them', async () => {
    const big = Buffer.from('The assistant replied with a long and repetitive answer. '.repeat(200));
    const small = Buffer.from('short value under the threshold');
    await a.client.set({ key: 'big', value: big });
    await a.client.set({ key: 'small', value: small });
    const storedBig = (await redis.command('HGET', 'cc:three:e:big', 'd')) as Buffer;
    const storedSmall = (await redis.command('HGET', 'cc:three:e:small', 'd')) as Buffer;
    expect(storedBig[0]).toBe(0xcc);
    expect(storedBig[2]! & 1).toBe(1);
    expect(storedBig.length).toBeLessThan(big.length * 0.2);
    expect(storedSmall[2]! & 1).toBe(0);
    expect(storedSmall.length).toBe(small.length + 3);
    const read = await b.client.get({ key: 'big' });
    expect(read.info?.source).toBe(Source.SOURCE_L2);
    expect(Buffer.from(read.value).equals(big)).toBe(true);
    expect((await a.client.getStats()).l2?.compressionRatio).toBeLessThan(1);
  });

  it('treats an unreadable Redis value as a miss, deletes it and counts it', async () => {
    await a.client.set({ key: 'corrupt', value: Buffer.from('fine') });
    await redis.command('HSET', 'cc:three:e:corrupt', 'd', 'garbage that is not our format');
    await redis.command('SET', 'cc:three:e:wrongtype', 'a plain string');
    const before = (await b.client.getStats()).l2?.corruptValues ?? 0;
    expect((await b.client.get({ key: 'corrupt' })).found).toBe(false);
    expect((await b.client.get({ key: 'wrongtype' })).found).toBe(false);
    expect((await b.client.getStats()).l2?.corruptValues).toBe(before + 2);
    await waitFor(async () => (await redis.command('EXISTS', 'cc:three:e:corrupt')) === 0, 'the corrupt value to be deleted');
    // The sidecar still works for the key afterwards.
    await b.client.set({ key: 'corrupt', value: Buffer.from('repaired') });
    expect(text((await c.client.get({ key: 'corrupt' })).value)).toBe('repaired');
  });

  it('serves 1,000 Watch streams on one sidecar and delivers an event to each', async () => {
    const clients = Array.from({ length: 4 }, () => new ContextCacheClient(b.address));
    const heapBefore = process.memoryUsage().heapUsed;
    const watchers = Array.from({ length: 1000 }, (_, i) => new WatchRecorder(clients[i % clients.length]!.watch({ keyPrefixes: ['fan'] })));
    try {
      await Promise.all(watchers.map((w) => w.started()));
      expect((await b.client.getStats()).watch?.openStreams).toBeGreaterThanOrEqual(1000);
      const written = await a.client.set({ key: 'fanout', value: Buffer.from('!') });
      await Promise.all(
        watchers.map((w) =>
          w.waitFor((m) => m.event?.$case === 'keyInvalidated' && m.event.value.version === written.info?.version && m.event.value.change === KeyChange.KEY_CHANGE_SET, 'the fan-out event'),
        ),
      );
      // Client and server share this process: both sides of 1,000 streams in well under 100 MiB.
      expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(100 * 1024 * 1024);
    } finally {
      watchers.forEach((w) => w.cancel());
      clients.forEach((client) => client.close());
    }
    await waitFor(async () => ((await b.client.getStats()).watch?.openStreams ?? 0) < 10, 'streams to close');
  });

  it('gives a slow watcher a STREAM_OVERFLOW resync instead of buffering without bound', async () => {
    const slow = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'three', CONTEXT_CACHE_WATCH_BUFFER: '4KiB' });
    await waitFor(() => slow.sidecar.tiers.mode === 'coherent', 'slow sidecar subscribed');
    // A client with the smallest HTTP/2 window, so that a paused reader pushes back quickly.
    const reader = new ContextCacheClient(slow.address, { 'grpc-node.flow_control_window': 65_535 });
    const watcher = new WatchRecorder(reader.watch({ keyPrefixes: ['flood'] }));
    await watcher.started();
    watcher.stream.call.pause();
    const payloadKey = 'flood:' + 'x'.repeat(900);
    for (let i = 0; i < 600; i++) await a.client.set({ key: `${payloadKey}${i}`, value: Buffer.from('v') });
    await waitFor(() => slow.sidecar.watchCounters.dropped > 0, 'the slow stream to drop events');
    watcher.stream.call.resume();
    await watcher.waitFor(
      (m) => m.event?.$case === 'resync' && m.event.value.reason === ResyncReason.RESYNC_REASON_STREAM_OVERFLOW,
      'the overflow resync',
    );
    // The stream survives: later events still arrive.
    const later = await a.client.set({ key: 'flood:after', value: Buffer.from('v') });
    await watcher.waitFor((m) => m.event?.$case === 'keyInvalidated' && m.event.value.version === later.info?.version, 'a later event');
    watcher.cancel();
    reader.close();
    await slow.close();
  });
});

describe('hostile or malformed Pub/Sub messages', () => {
  it('are ignored and counted; the sidecars keep working', async () => {
    const redis = await startRedis();
    try {
      const sc = await startSidecar({ REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'hostile' });
      await waitFor(() => sc.sidecar.tiers.mode === 'coherent', 'subscribed');
      const watcher = new WatchRecorder(sc.client.watch({}));
      await watcher.started();
      const garbage = [
        'not json',
        'null',
        '{"o":"x","t":"abc","e":"g","g":["t"]}',
        '{"o":"x","e":"k","k":["a"],"v":["nan"]}',
        '{"o":"x","e":"k","k":["a","b"],"v":["1"]}',
        '{"o":"x","e":"k","k":["a"],"v":["1e400"]}',
        '{"o":"x","e":"s","v":"1"}',
        '{"o":"x","e":"zzz"}',
      ];
      for (const message of garbage) await redis.command('PUBLISH', 'cc:hostile:events', message);
      // A node event names a node; the bus is never trusted for it. One that Redis cannot confirm
      // (forged, or replaced by a later append) still says the session changed: the session is
      // dropped, never appended to with that node.
      await sc.client.putSessionNodes({ sessionId: 'victim', nodes: [{ id: 'n0', role: 2, content: 'fine' }] });
      const version = (await sc.client.getSessionNodes({ sessionId: 'victim' })).info!.version;
      await redis.command(
        'PUBLISH',
        'cc:hostile:events',
        `{"o":"x","e":"n","s":"victim","i":"evil","v":"${version + 1}","p":"${version}"}`,
      );
      await watcher.waitFor((m) => m.event?.$case === 'sessionInvalidated' && m.event.value.sessionId === 'victim', 'the victim session dropped');
      const reread = await sc.client.getSessionNodes({ sessionId: 'victim' });
      expect(reread.nodes.map((n) => n.id)).toEqual(['n0']);
      // A valid message after the garbage is applied: the subscriber is alive and well.
      await redis.command('PUBLISH', 'cc:hostile:events', '{"o":"other","e":"g","g":["after"]}');
      await watcher.waitFor((m) => m.event?.$case === 'tagsInvalidated' && m.event.value.tags[0] === 'after', 'the valid event');
      expect(sc.sidecar.redis!.bus.counters.malformed).toBe(garbage.length);
      await sc.client.set({ key: 'still', value: Buffer.from('works') });
      expect(Buffer.from((await sc.client.get({ key: 'still' })).value).toString()).toBe('works');
      watcher.cancel();
      await sc.close();
    } finally {
      await redis.stop();
    }
  });
});
