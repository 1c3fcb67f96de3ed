import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContextCacheClient } from '../../src/client';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';
import { WatchRecorder } from '../helpers/watch';

/** Issue 12's Watch defects: memory and filters are bounded, and the bound is enforced with a clear status. */
describe('Watch bounds', () => {
  let sc: TestSidecar;
  beforeAll(async () => {
    sc = await startSidecar({ CONTEXT_CACHE_WATCH_BUFFER: '64KiB', CONTEXT_CACHE_WATCH_TOTAL_BUFFER: '256KiB', CONTEXT_CACHE_WATCH_MAX_STREAMS: '20' });
  });
  afterAll(closeAllSidecars);

  it('holds at most the total byte budget for streams that never read, however much is written', async () => {
    // Small HTTP/2 windows, so that paused readers push back into the sidecar's buffers quickly.
    const clients = Array.from({ length: 10 }, () => new ContextCacheClient(sc.address, { 'grpc-node.flow_control_window': 65_535 }));
    const watchers = clients.map((client) => new WatchRecorder(client.watch({})));
    try {
      for (const watcher of watchers) await watcher.started();
      for (const watcher of watchers) watcher.stream.call.pause();
      const value = Buffer.alloc(1000, 1);
      let peak = 0;
      for (let i = 0; i < 400; i++) {
        await sc.client.set({ key: `k${i % 50}:${'x'.repeat(900)}`, value });
        peak = Math.max(peak, sc.sidecar.watch.bufferedBytes);
      }
      await waitFor(() => sc.sidecar.watchCounters.dropped > 0, 'the paused streams to drop events');
      expect(peak).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(256 * 1024);
    } finally {
      watchers.forEach((watcher) => watcher.cancel());
      clients.forEach((client) => client.close());
    }
    await waitFor(() => sc.sidecar.watchCounters.open === 0, 'the streams to close');
    await waitFor(() => sc.sidecar.watch.bufferedBytes === 0, 'the budget to be given back');
  });

  it('refuses streams past CONTEXT_CACHE_WATCH_MAX_STREAMS with RESOURCE_EXHAUSTED', async () => {
    const open = Array.from({ length: 20 }, () => new WatchRecorder(sc.client.watch({})));
    try {
      for (const watcher of open) await watcher.started();
      const refused = new WatchRecorder(sc.client.watch({}));
      await expect(refused.started()).rejects.toThrow(/RESOURCE_EXHAUSTED.*CONTEXT_CACHE_WATCH_MAX_STREAMS/);
    } finally {
      open.forEach((watcher) => watcher.cancel());
    }
    await waitFor(() => sc.sidecar.watchCounters.open === 0, 'the streams to close');
  });

  it('refuses filter lists longer than 1,000 entries or larger than 64 KiB in all', async () => {
    const tooMany = new WatchRecorder(sc.client.watch({ keyPrefixes: Array.from({ length: 1001 }, (_, i) => `p${i}`) }));
    await expect(tooMany.started()).rejects.toThrow(/INVALID_ARGUMENT: key_prefixes has 1001 entries; the limit is 1000/);
    const tooLarge = new WatchRecorder(sc.client.watch({ sessionIds: Array.from({ length: 100 }, (_, i) => `${i}`.padEnd(1000, 's')) }));
    await expect(tooLarge.started()).rejects.toThrow(/INVALID_ARGUMENT: the filters hold 100000 bytes; the limit is 65536 in all/);
  });

  it('matches 1,000 prefixes per stream without scanning them per event', async () => {
    const watcher = new WatchRecorder(sc.client.watch({ keyPrefixes: Array.from({ length: 1000 }, (_, i) => `prefix-${i}/`) }));
    await watcher.started();
    await sc.client.set({ key: 'prefix-999/x', value: Buffer.from('v') });
    const event = await watcher.waitFor((m) => m.event?.$case === 'keyInvalidated', 'the event for the last prefix');
    expect(event.event?.$case === 'keyInvalidated' && event.event.value.key).toBe('prefix-999/x');
    watcher.cancel();
  });
});
