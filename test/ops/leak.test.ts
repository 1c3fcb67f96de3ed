import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { ContextCacheClient, Role } from '../../src/client';
import { spawnSidecar, stopAllSidecarProcesses } from '../helpers/process';
import { freePort } from '../helpers/redis';

/**
 * A regression guard against leaks, not a timing test: the sidecar in its
 * own process takes a warm-up, then two equal rounds of the same work (Get,
 * Set, GetSessionNodes, BuildContext, a Watch event per Set); whatever the
 * heap's growth policy takes, it takes in the warm-up and the first round.
 * A leak keeps growing: the second round may add at most a small bound.
 * The sidecar runs with the image's V8 setting (Dockerfile NODE_OPTIONS).
 */
const MiB = 1024 * 1024;

function rss(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'));
  return Number(line!.split(/\s+/)[1]) * 1024;
}

afterAll(() => stopAllSidecarProcesses());

describe('memory under steady work', () => {
  it('does not keep growing: the second of two equal rounds adds at most 12 MiB of RSS', async () => {
    const port = await freePort();
    const address = `127.0.0.1:${port}`;
    const admin = `127.0.0.1:${await freePort()}`;
    const proc = spawnSidecar({ CONTEXT_CACHE_LISTEN: address, CONTEXT_CACHE_ADMIN_LISTEN: admin, CONTEXT_CACHE_LOG_LEVEL: 'warn', CONTEXT_CACHE_L1_MAX_BYTES: '8MiB', NODE_OPTIONS: '--max-semi-space-size=16' });
    await proc.waitUntilServing(address);
    const heap = async () => {
      const text = await (await fetch(`http://${admin}/metrics`)).text();
      const gauge = (name: string) => Number(text.split('\n').find((l) => l.startsWith(`${name} `))!.split(' ')[1]);
      return `V8 heap ${(gauge('nodejs_heap_size_used_bytes') / MiB).toFixed(1)} of ${(gauge('nodejs_heap_size_total_bytes') / MiB).toFixed(1)} MiB`;
    };
    const client = new ContextCacheClient(address);
    const watch = client.watch({ keyPrefixes: ['leak-'] });
    watch.call.on('data', () => undefined);
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
      const afterFirst = rss(proc.pid);
      await round(3000);
      const afterSecond = rss(proc.pid);
      const growth = afterSecond - afterFirst;
      console.info(`leak guard: RSS ${(afterFirst / MiB).toFixed(1)} -> ${(afterSecond / MiB).toFixed(1)} MiB over the second round; ${await heap()}`);
      expect(growth, `RSS ${(afterFirst / MiB).toFixed(1)} -> ${(afterSecond / MiB).toFixed(1)} MiB over the second round`).toBeLessThan(12 * MiB);
    } finally {
      watch.call.cancel();
      client.close();
      await proc.stop();
    }
  }, 180_000);
});
