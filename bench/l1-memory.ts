/**
 * l1-memory: does L1's byte bound hold in real memory? A sidecar as deployed
 * (dist/main.js in its own process, L1-only, CONTEXT_CACHE_L1_MAX_BYTES=64MiB)
 * is overfilled three times over with ASCII sessions, emoji sessions and
 * 8 MiB values; its RSS and V8 heap are read from outside after each phase.
 * The bound holds when the growth over the empty sidecar stays within 2x the
 * configured bytes.
 */
import { ContextCacheClient, Role } from '../src/client';
import { startDeployedSidecar } from './deployed';
import type { Bench, BenchReport } from './lib';

const MiB = 1024 * 1024;
const BOUND = 64 * MiB;

/**
 * RSS once the sidecar is idle again: V8's memory reducer runs full GCs a
 * few seconds after allocation stops, and the allocator returns what they
 * free. Read every second until it has not fallen by more than 1 MiB for
 * 5 s (at most 40 s): the footprint an operator sees, not a transient.
 */
async function settledRss(read: () => number): Promise<number> {
  const readings = [read()];
  for (let i = 0; i < 40; i++) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    readings.push(read());
    const recent = readings.slice(-6);
    if (recent.length === 6 && recent[0]! - Math.min(...recent) < 1024 * 1024) break;
  }
  return readings.at(-1)!;
}

export const l1Memory: Bench = {
  name: 'l1-memory',
  async run(): Promise<BenchReport> {
    const sidecar = await startDeployedSidecar({ CONTEXT_CACHE_L1_MAX_BYTES: '64MiB', CONTEXT_CACHE_MAX_VALUE_BYTES: '8MiB' }, { inspect: true });
    const client = new ContextCacheClient(sidecar.address);
    const notes: string[] = [];
    const figures: Record<string, number> = {};
    try {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const base = sidecar.rss();
      figures.idleRss = base;
      let worst = 0;
      const phase = async (name: string, short: string, fill: () => Promise<void>) => {
        await fill();
        const rssBeforeGc = await settledRss(() => sidecar.rss());
        await sidecar.collectGarbage();
        const rss = await settledRss(() => sidecar.rss());
        const l1Bytes = await sidecar.metric('context_cache_l1_bytes');
        const heapUsed = await sidecar.metric('nodejs_heap_size_used_bytes');
        const heapTotal = await sidecar.metric('nodejs_heap_size_total_bytes');
        const external = await sidecar.metric('nodejs_external_memory_bytes');
        const growth = rss - base;
        worst = Math.max(worst, growth / BOUND);
        Object.assign(figures, { [`${short}.rss`]: rss, [`${short}.growthRatio`]: growth / BOUND, [`${short}.l1Bytes`]: l1Bytes, [`${short}.heapUsed`]: heapUsed, [`${short}.heapTotal`]: heapTotal, [`${short}.external`]: external });
        figures[`${short}.rssBeforeGc`] = rssBeforeGc;
        notes.push(
          `${name}: L1 ${(l1Bytes / MiB).toFixed(1)} MiB accounted; RSS +${((rssBeforeGc - base) / MiB).toFixed(1)} MiB, after a full GC +${(growth / MiB).toFixed(1)} MiB (${(growth / BOUND).toFixed(2)}x the 64 MiB bound); V8 heap used ${(heapUsed / MiB).toFixed(0)} of ${(heapTotal / MiB).toFixed(0)} MiB, external ${(external / MiB).toFixed(0)} MiB`,
        );
      };
      const sessions = async (prefix: string, text: string) => {
        for (let s = 0; s < 600; s++) {
          const nodes = Array.from({ length: 100 }, (_, n) => ({ id: `n${n}`, role: Role.ROLE_USER, content: text }));
          await client.putSessionNodes({ sessionId: `${prefix}${s}`, nodes });
          await client.getSessionNodes({ sessionId: `${prefix}${s}` });
        }
      };
      await phase('ASCII sessions (600 x 100 nodes x 1,000 chars, ~60 MB of text, 3x overfilled)', 'ascii', () => sessions('ascii-', 'a'.repeat(1000)));
      await phase('emoji sessions (600 x 100 nodes x 500 emoji, ~120 MB as UTF-8)', 'emoji', () => sessions('emoji-', '😀'.repeat(500)));
      await phase('8 MiB values (24, 192 MiB)', 'large', async () => {
        for (let i = 0; i < 24; i++) await client.set({ key: `big-${i}`, value: Buffer.alloc(8 * MiB, i) }, { deadline: 30_000 });
      });
      figures.worstGrowthRatio = worst;
      notes.push(`worst growth: ${worst.toFixed(2)}x the bound (goal: within 2x)`);
    } finally {
      client.close();
      await sidecar.close();
    }
    return { title: `L1 in real memory, sidecar as deployed (Node ${process.version}; L1 bound 64 MiB)`, results: [], notes, figures };
  },
};
