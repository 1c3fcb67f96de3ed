import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { ContextCacheClient, Role } from '../../src/client';
import { spawnSidecar, stopAllSidecarProcesses } from '../helpers/process';
import { inspectorCall } from '../helpers/inspector';
import { freePort } from '../helpers/redis';

/**
 * A regression guard against leaks, not a timing test: the sidecar in its
 * own process takes a warm-up, then two equal rounds of the same work (Get,
 * Set, PutSessionNodes, BuildContext, a Watch event per Set). After each
 * round a full GC is requested through the inspector and the live V8 heap
 * and RSS are read: a leak keeps growing, so the second round may add at
 * most 4 MiB of live heap (precise) and 32 MiB of RSS (gross: RSS also
 * moves with the allocator and the heap's growth policy).
 * The sidecar runs with the image's V8 setting (Dockerfile NODE_OPTIONS).
 */
const MiB = 1024 * 1024;

function rss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'));
  return Number(line!.split(/\s+/)[1]) * 1024;
}

afterAll(() => stopAllSidecarProcesses());

describe('memory under steady work', () => {
  it('does not keep growing: the second of two equal rounds adds at most 4 MiB of live heap and 32 MiB of RSS', async () => {
    const port = await freePort();
    const address = `127.0.0.1:${port}`;
    const admin = `127.0.0.1:${await freePort()}`;
    const proc = spawnSidecar({ CONTEXT_CACHE_LISTEN: address, CONTEXT_CACHE_ADMIN_LISTEN: admin, CONTEXT_CACHE_LOG_LEVEL: 'warn', CONTEXT_CACHE_L1_MAX_BYTES: '8MiB', NODE_OPTIONS: '--max-semi-space-size=16 --inspect=127.0.0.1:0' });
    await proc.waitUntilServing(address);
    const inspector = /ws:\/\/\S+/.exec(proc.output())?.[0];
    expect(inspector, 'the inspector URL on stderr').toBeDefined();
    /** Live heap and RSS after a full GC. */
    const settled = async () => {
      await inspectorCall(inspector!, 'HeapProfiler.collectGarbage');
      const text = await (await fetch(`http://${admin}/metrics`)).text();
      return { heap: Number(text.split('\n').find((l) => l.startsWith('nodejs_heap_size_used_bytes '))!.split(' ')[1]), rss: rss(proc.pid) };
    };
    const client = new ContextCacheClient(address);
    const watch = client.watch({ keyPrefixes: ['leak-'] });
    watch.call.on('data', () => undefined);
    watch.call.on('error', () => undefined); // CANCELLED when the test ends it
    try {
      const nodes = Array.from({ length: 20 }, (_, i) => ({ id: `n${i}`, parentId: i > 0 ? `n${i - 1}` : '', role: Role.ROLE_USER, content: 'x'.repeat(200) }));
      const value = Buffer.alloc(1024, 'v');
      let serial = 0;
      const round = async (calls: number) => {
        const worker = async () => {
          for (let i = 0; i < calls / 8; i++) {
            const n = serial++;
            // Keys and sessions cycle through a fixed set, so L1 (8 MiB) holds a steady amount.
            await client.set({ key: `leak-${n % 500}`, value });
            await client.get({ key: `leak-${(n * 7) % 500}` });
            if (n % 10 === 0) {
              const sessionId = `s${n % 50}`;
              await client.putSessionNodes({ sessionId, nodes: nodes.map((node) => ({ ...node, sessionId })) });
              await client.buildContext({ sessionId, maxNodes: 10 });
            }
          }
        };
        await Promise.all(Array.from({ length: 8 }, worker));
      };
      await round(1500);
      await round(3000);
      const first = await settled();
      await round(3000);
      const second = await settled();
      const what = `live heap ${(first.heap / MiB).toFixed(1)} -> ${(second.heap / MiB).toFixed(1)} MiB, RSS ${(first.rss / MiB).toFixed(1)} -> ${(second.rss / MiB).toFixed(1)} MiB over the second round`;
      console.info(`leak guard: ${what}`);
      expect(second.heap - first.heap, what).toBeLessThan(4 * MiB);
      expect(second.rss - first.rss, what).toBeLessThan(32 * MiB);
    } finally {
      watch.call.cancel();
      client.close();
      await proc.stop();
    }
  }, 180_000);
});
