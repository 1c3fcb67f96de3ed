/**
 * l1-memory: does L1's byte bound hold in real memory? A sidecar (L1-only,
 * CONTEXT_CACHE_L1_MAX_BYTES=64MiB, in this process) is overfilled three
 * times over with ASCII sessions, emoji sessions and 8 MiB values; the
 * process's RSS and V8 heap are read after each phase (after a full GC when
 * node runs with --expose-gc, as `npm run bench` does not by default: set
 * NODE_OPTIONS=--expose-gc for the steadiest figures). The bound holds when
 * the growth over the empty sidecar stays within 2x the configured bytes.
 */
import { Role } from '../src/client';
import { startBenchSidecar } from './harness';
import type { Bench, BenchReport } from './lib';

const MiB = 1024 * 1024;
const BOUND = 64 * MiB;

function sample(): { rss: number; heap: number; buffers: number } {
  (globalThis as { gc?: () => void }).gc?.();
  const { rss, heapUsed, arrayBuffers } = process.memoryUsage();
  return { rss, heap: heapUsed, buffers: arrayBuffers };
}

export const l1Memory: Bench = {
  name: 'l1-memory',
  async run(): Promise<BenchReport> {
    const sc = await startBenchSidecar({ CONTEXT_CACHE_L1_MAX_BYTES: '64MiB', CONTEXT_CACHE_MAX_VALUE_BYTES: '8MiB' });
    const notes: string[] = [];
    try {
      const base = sample();
      const phase = async (name: string, fill: () => Promise<void>) => {
        await fill();
        const now = sample();
        const growth = now.rss - base.rss;
        notes.push(
          `${name}: L1 ${(sc.sidecar.l1.bytes / MiB).toFixed(1)} MiB accounted in ${sc.sidecar.l1.entries} entries; RSS +${(growth / MiB).toFixed(1)} MiB (${(growth / BOUND).toFixed(2)}x the 64 MiB bound), heap +${((now.heap - base.heap) / MiB).toFixed(1)} MiB, buffers +${((now.buffers - base.buffers) / MiB).toFixed(1)} MiB`,
        );
      };
      const sessions = async (prefix: string, text: string) => {
        for (let s = 0; s < 600; s++) {
          const nodes = Array.from({ length: 100 }, (_, n) => ({ id: `n${n}`, role: Role.ROLE_USER, content: text }));
          await sc.client.putSessionNodes({ sessionId: `${prefix}${s}`, nodes });
          await sc.client.getSessionNodes({ sessionId: `${prefix}${s}` });
        }
      };
      await phase('ASCII sessions (600 x 100 nodes x 1,000 chars, ~60 MB of text, 3x overfilled)', () => sessions('ascii-', 'a'.repeat(1000)));
      await phase('emoji sessions (600 x 100 nodes x 500 emoji, ~120 MB as UTF-8)', () => sessions('emoji-', '😀'.repeat(500)));
      await phase('8 MiB values (24, 192 MiB)', async () => {
        for (let i = 0; i < 24; i++) await sc.client.set({ key: `big-${i}`, value: Buffer.alloc(8 * MiB, i) }, { deadline: 30_000 });
      });
    } finally {
      await sc.close();
    }
    return { title: `L1 in real memory (Node ${process.version}; L1 bound 64 MiB)`, results: [], notes };
  },
};
