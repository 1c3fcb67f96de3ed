import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheClient, ResyncReason, Status, type WatchResponse } from '../../src/client';
import { spawnSidecar, stopAllSidecarProcesses } from '../helpers/process';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { freePort, startRedis, type TestRedis } from '../helpers/redis';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { WatchRecorder } from '../helpers/watch';
import { rejectionOf, waitFor } from '../helpers/wait';

const port = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1));
const keysOf = (messages: WatchResponse[]) => messages.flatMap((m) => (m.event?.$case === 'keyInvalidated' ? [m.event.value.key] : []));
const cases = (messages: WatchResponse[]) => messages.map((m) => m.event?.$case);

describe('Watch resume on one sidecar', () => {
  let sc: TestSidecar;
  let proxy: TestProxy;
  beforeAll(async () => {
    sc = await startSidecar();
    proxy = await startProxy(port(sc.address));
  });
  afterAll(async () => {
    await proxy.close();
    await closeAllSidecars();
  });

  it('every message carries a resume token of this sidecar, with positions that only grow', async () => {
    const recorder = new WatchRecorder(sc.client.watch({ keyPrefixes: ['t/'] }));
    await recorder.started();
    await sc.client.set({ key: 't/1', value: Buffer.from('1') });
    await sc.client.set({ key: 'other/1', value: Buffer.from('1') });
    await sc.client.set({ key: 't/2', value: Buffer.from('2') });
    await recorder.waitFor((m) => m.event?.$case === 'keyInvalidated' && m.event.value.key === 't/2', 't/2');
    recorder.cancel();
    const tokens = recorder.messages.map((m) => m.resumeToken!);
    expect(tokens.every((token) => token.incarnation === sc.sidecar.sidecarId)).toBe(true);
    const positions = tokens.map((token) => token.position);
    expect(positions).toEqual([...positions].sort((x, y) => x - y));
    // The event the filter skipped still took a position: t/2 is two past t/1.
    expect(positions[2]! - positions[1]!).toBe(2);
  });

  it('resumes after a cut connection with no gap: the filtered events made meanwhile, once each, in order, no Resync', async () => {
    const client = new ContextCacheClient(`127.0.0.1:${proxy.port}`);
    const messages: WatchResponse[] = [];
    const watch = client.watchResumable({ keyPrefixes: ['r/'] }, (message) => messages.push(message), { initialBackoffMs: 20, maxBackoffMs: 100 });
    try {
      await waitFor(() => watch.state === 'live', 'the stream to start');
      await sc.client.set({ key: 'r/before', value: Buffer.from('x') });
      await waitFor(() => keysOf(messages).includes('r/before'), 'r/before');
      proxy.cut('reset');
      await waitFor(() => watch.state !== 'live', 'the stream to notice the cut');
      for (const key of ['r/1', 'elsewhere/1', 'r/2', 'r/3']) await sc.client.set({ key, value: Buffer.from(key) });
      proxy.heal();
      await waitFor(() => keysOf(messages).includes('r/3'), 'the events missed during the cut', 10_000);
      expect(keysOf(messages)).toEqual(['r/before', 'r/1', 'r/2', 'r/3']);
      expect(cases(messages).filter((c) => c === 'resync')).toEqual([]);
      const restarted = messages.filter((m) => m.event?.$case === 'started');
      expect(restarted.length).toBe(2);
      expect(restarted[1]!.event).toMatchObject({ value: { resumed: true, replayedEvents: 3 } });
      // Attempts while the proxy refused connections failed before any `started`: one resume in all.
      expect(watch.counters).toMatchObject({ resumed: 1, gaps: 0 });
      expect(watch.counters.reconnects).toBeGreaterThanOrEqual(1);
    } finally {
      watch.close();
      client.close();
    }
  });

  it('a token of another sidecar process starts the stream with a Resync (RESUME_GAP)', async () => {
    const recorder = new WatchRecorder(sc.client.watch({ resumeAfter: { incarnation: 'some-other-sidecar', position: 3 } }));
    const gap = await recorder.waitFor((m) => m.event?.$case === 'resync', 'the Resync');
    recorder.cancel();
    expect(recorder.messages[0]!.event).toMatchObject({ $case: 'started', value: { resumed: false } });
    expect(gap.event).toEqual({ $case: 'resync', value: { reason: ResyncReason.RESYNC_REASON_RESUME_GAP } });
  });

  it('a token past this sidecar\'s last event is refused with INVALID_ARGUMENT naming the field', async () => {
    const stream = sc.client.watch({ resumeAfter: { incarnation: sc.sidecar.sidecarId, position: 1e12 } });
    const error = await rejectionOf(
      (async () => {
        for await (const message of stream) void message;
      })(),
    );
    expect(error).toMatchObject({ code: Status.INVALID_ARGUMENT });
    expect(error.details).toMatch(/^resume_after.position 1000000000000 is past this sidecar's last event/);
  });
});

describe('Watch resume past what the sidecar keeps', () => {
  afterEach(closeAllSidecars);

  it('a ring of 0 bytes resumes only when nothing happened since; otherwise RESUME_GAP', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_WATCH_RESUME_BUFFER: '0' });
    const first = new WatchRecorder(sc.client.watch({}));
    const started = await first.started();
    first.cancel();
    const quiet = new WatchRecorder(sc.client.watch({ resumeAfter: started.resumeToken }));
    expect((await quiet.started()).event).toMatchObject({ value: { resumed: true, replayedEvents: 0 } });
    quiet.cancel();
    await sc.client.set({ key: 'k', value: Buffer.from('v') });
    const late = new WatchRecorder(sc.client.watch({ resumeAfter: started.resumeToken }));
    await late.waitFor((m) => m.event?.$case === 'resync', 'RESUME_GAP');
    late.cancel();
  });
});

describe('a resume that replays more than the stream buffer holds', () => {
  afterEach(closeAllSidecars);

  it('is paced by the buffer, not cut short: 300 missed events arrive in order, and no Resync', async () => {
    const sc = await startSidecar({ CONTEXT_CACHE_WATCH_BUFFER: '4KiB' });
    const first = new WatchRecorder(sc.client.watch({ keyPrefixes: ['p/'] }));
    const started = await first.started();
    first.cancel();
    const keys = Array.from({ length: 300 }, (_, i) => `p/${String(i).padStart(3, '0')}/${'x'.repeat(60)}`);
    for (const key of keys) await sc.client.set({ key, value: Buffer.from('v') });
    const resumed = new WatchRecorder(sc.client.watch({ keyPrefixes: ['p/'], resumeAfter: started.resumeToken }));
    await resumed.waitFor((m) => m.event?.$case === 'keyInvalidated' && m.event.value.key === keys.at(-1), 'the last missed event');
    resumed.cancel();
    expect(resumed.messages[0]!.event).toMatchObject({ $case: 'started', value: { resumed: true, replayedEvents: 300 } });
    expect(keysOf(resumed.messages)).toEqual(keys);
    expect(cases(resumed.messages)).not.toContain('resync');
  });
});

describe('after the sidecar restarts', () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await stopAllSidecarProcesses();
    await redis.stop();
  });

  it('the resumable Watch and the near cache reconnect by themselves; the new process cannot resume, so a Resync (RESUME_GAP) flushes the near cache', async () => {
    const address = `127.0.0.1:${await freePort()}`;
    const env = { CONTEXT_CACHE_LISTEN: address, REDIS_URL: redis.url, CONTEXT_CACHE_LOG_LEVEL: 'warn', CONTEXT_CACHE_NAMESPACE: 'restart' };
    let sidecar = spawnSidecar(env);
    await sidecar.waitUntilServing(address);
    const client = new ContextCacheClient(address, { nearCache: { maxBytes: 1 << 20 }, watchBackoff: { initialBackoffMs: 50, maxBackoffMs: 300 } });
    const messages: WatchResponse[] = [];
    const watch = client.watchResumable({}, (message) => messages.push(message), { initialBackoffMs: 50, maxBackoffMs: 300 });
    try {
      await client.ready(20_000);
      await client.set({ key: 'restart/k', value: Buffer.from('v') });
      expect((await client.get({ key: 'restart/k' })).fromNearCache).toBe(true);

      await sidecar.stop();
      await waitFor(() => !client.nearCache!.live, 'the near cache to notice the sidecar is gone');
      sidecar = spawnSidecar(env);
      await sidecar.waitUntilServing(address);

      await waitFor(() => messages.some((m) => m.event?.$case === 'resync' && m.event.value.reason === ResyncReason.RESYNC_REASON_RESUME_GAP), 'RESUME_GAP', 20_000);
      expect(watch.counters).toMatchObject({ gaps: 1, resumed: 0 });
      await client.ready(20_000);
      expect(client.nearCache!.has('restart/k')).toBe(false);
      expect(client.nearCache!.stats().flushes).toBeGreaterThanOrEqual(1);
      // The value is still in Redis: the next read reaches the new sidecar and is kept again.
      const again = await client.get({ key: 'restart/k' });
      expect(again.fromNearCache).toBeUndefined();
      expect(Buffer.from(again.value).toString()).toBe('v');
    } finally {
      watch.close();
      client.close();
    }
  }, 60_000);
});
