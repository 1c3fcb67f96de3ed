/**
 * The client's near cache, with the sidecars in their own processes as
 * deployed: a near-cache hit next to a BentoCache L1 hit and a bare
 * lru-cache get (the floors of an in-process cache), a near-cache miss
 * (answered by the sidecar's L1) next to a plain client Get, and the time
 * from a Set on sidecar A to the near cache of a client of sidecar B
 * dropping the entry. Sidecars are dist/main.js in their own processes
 * (bench/deployed.ts); the clients, BentoCache and lru-cache share this one.
 */
import { LRUCache } from 'lru-cache';
import { ContextCacheClient } from '../src/client';
import { startDeployedSidecar } from './deployed';
import { scaled } from './harness';
import { measureLatency, ratio, runCleanup, startBenchRedis, summarize, type Bench, type BenchReport, type LatencyStats } from './lib';

const VALUE = Buffer.alloc(1024, 0x61);
const MiB = 1024 * 1024;

const noThroughput = () => ({ calls: 0, concurrency: 1, seconds: 0, callsPerSecond: Number.NaN });

/** Nanoseconds per call of a tight loop of `count` calls, median of `rounds` rounds (no per-call clock reads). */
async function perCallNs(call: () => unknown, count: number, rounds = 9, awaitEach = true): Promise<number> {
  const results: number[] = [];
  for (let round = 0; round < rounds; round++) {
    const started = process.hrtime.bigint();
    if (awaitEach) for (let i = 0; i < count; i++) await call();
    else for (let i = 0; i < count; i++) call();
    results.push(Number(process.hrtime.bigint() - started) / count);
  }
  return results.sort((x, y) => x - y)[Math.floor(rounds / 2)]!;
}

export const nearCache: Bench = {
  name: 'near-cache',
  async run(): Promise<BenchReport> {
    const cleanup: (() => unknown)[] = [];
    try {
      const redis = await startBenchRedis();
      cleanup.push(() => redis.stop());
      const env = { CONTEXT_CACHE_NAMESPACE: 'bench-near', REDIS_URL: redis.url };
      const [a, b] = await Promise.all([startDeployedSidecar(env), startDeployedSidecar(env)]);
      cleanup.push(() => a!.close(), () => b!.close());
      const nearA = new ContextCacheClient(a!.address, { nearCache: { maxBytes: 256 * MiB } });
      const plainA = new ContextCacheClient(a!.address);
      const nearB = new ContextCacheClient(b!.address, { nearCache: { maxBytes: 256 * MiB } });
      cleanup.push(() => nearA.close(), () => plainA.close(), () => nearB.close());
      await Promise.all([nearA.ready(20_000), plainA.ready(20_000), nearB.ready(20_000)]);

      // (1) Hits: the near cache, BentoCache's L1 (memory driver, bytes-bounded as ours is), lru-cache.
      const key = 'bench/near/hit';
      await plainA.set({ key, value: VALUE, ttl: { seconds: 3600 } });
      await nearA.get({ key });
      if ((await nearA.get({ key })).fromNearCache !== true) throw new Error('the near cache did not keep the value');
      const { BentoCache, bentostore } = await import('bentocache');
      const { memoryDriver } = await import('bentocache/drivers/memory');
      const bento = new BentoCache({ default: 'memory', stores: { memory: bentostore().useL1Layer(memoryDriver({ maxSize: 256 * MiB })) } });
      cleanup.push(() => bento.disconnectAll());
      const text = VALUE.toString();
      await bento.set({ key, value: text, ttl: '1h' });
      if ((await bento.get({ key })) !== text) throw new Error('BentoCache did not keep the value');
      const lru = new LRUCache<string, Buffer>({ maxSize: 256 * MiB, sizeCalculation: (value) => value.byteLength + 64 });
      lru.set(key, VALUE);

      const hitPlan = { warmup: scaled(20_000), iterations: scaled(200_000), maxMs: 8000 };
      const nearHit = await measureLatency(() => nearA.get({ key }), hitPlan);
      const bentoHit = await measureLatency(() => bento.get({ key }), hitPlan);
      const lruHit = await measureLatency(async () => lru.get(key), hitPlan);
      const loop = scaled(200_000);
      const nearNs = await perCallNs(() => nearA.get({ key }), loop);
      const bentoNs = await perCallNs(() => bento.get({ key }), loop);
      const lruNs = await perCallNs(() => lru.get(key), loop * 10, 9, false);
      const view = nearA.nearCache!;
      if (view.get(key) === undefined) throw new Error('the synchronous near-cache read missed');
      const nearSyncNs = await perCallNs(() => view.get(key), loop * 10, 9, false);

      // (2) Misses: each read a key the near cache has never seen, answered from sidecar A's L1; the same through a plain client.
      const missKeys = scaled(5_000);
      for (let i = 0; i < 2 * missKeys + 1000; i += 200) {
        await Promise.all(Array.from({ length: 200 }, (_, j) => plainA.set({ key: `bench/near/miss/${i + j}`, value: VALUE, ttl: { seconds: 3600 } })));
      }
      // The near cache's stream carries an event per Set: let it drain before the misses are timed.
      const last = `bench/near/miss/quiet`;
      const quiet = new Promise<void>((resolve) => {
        const off = nearA.nearCache!.onMessage((message) => {
          if (message.event?.$case === 'keyInvalidated' && message.event.value.key === last) {
            off();
            resolve();
          }
        });
      });
      await plainA.set({ key: last, value: VALUE });
      await quiet;
      let next = 0;
      const nearMiss = await measureLatency(() => nearA.get({ key: `bench/near/miss/${next++}` }), { warmup: 500, iterations: missKeys });
      const plainGet = await measureLatency(() => plainA.get({ key: `bench/near/miss/${next++}` }), { warmup: 500, iterations: missKeys });
      if (nearA.nearCache!.stats().hits < 2 * hitPlan.iterations) throw new Error('the near-cache hits were not all hits');

      // (3) Invalidation: a Set on A, until the near cache of a client of B has dropped the entry.
      const rounds = scaled(1_000);
      const fromCall = new Float64Array(rounds);
      const fromReply = new Float64Array(rounds);
      const fromCallRaw = new Float64Array(rounds);
      let waiting: { key: string; resolve: () => void } | undefined;
      nearB.nearCache!.onMessage(() => {
        if (waiting !== undefined && !nearB.nearCache!.has(waiting.key)) waiting.resolve();
      });
      // The baseline: the same event on a plain Watch stream of another client of B, in the same iterations.
      const plainB = new ContextCacheClient(b!.address);
      cleanup.push(() => plainB.close());
      let rawWaiting: { key: string; after: number; resolve: () => void } | undefined;
      const raw = plainB.watchResumable({ keyPrefixes: ['bench/near/inv/'] }, (message) => {
        if (rawWaiting !== undefined && message.event?.$case === 'keyInvalidated' && message.event.value.key === rawWaiting.key && message.event.value.version > rawWaiting.after) rawWaiting.resolve();
      });
      cleanup.push(() => raw.close());
      while (raw.state !== 'live') await new Promise((resolve) => setTimeout(resolve, 10));
      for (let i = 0; i < rounds + 100; i++) {
        const target = `bench/near/inv/${i}`;
        const filled = await plainA.set({ key: target, value: VALUE });
        await nearB.get({ key: target });
        if (!nearB.nearCache!.has(target)) throw new Error('the near cache of B did not keep the value');
        let at = 0n;
        let rawAt = 0n;
        const dropped = new Promise<void>((resolve) => (waiting = { key: target, resolve })).then(() => (at = process.hrtime.bigint()));
        const seen = new Promise<void>((resolve) => (rawWaiting = { key: target, after: filled.info!.version, resolve: () => resolve() })).then(() => (rawAt = process.hrtime.bigint()));
        const started = process.hrtime.bigint();
        let replied = 0n;
        const write = plainA.set({ key: target, value: Buffer.from('changed') }).then(() => (replied = process.hrtime.bigint()));
        await Promise.all([dropped, seen, write]);
        if (i >= 100) {
          fromCall[i - 100] = Number(at - started);
          fromReply[i - 100] = Math.max(0, Number(at - replied));
          fromCallRaw[i - 100] = Number(rawAt - started);
        }
      }
      const invalidation = summarize(fromCall);
      const afterReply = summarize(fromReply);
      const rawEvent = summarize(fromCallRaw);

      const row = (name: string, latency: LatencyStats) => ({ name, latency, throughput: noThroughput() });
      const hitGoal = nearHit.p50Us <= bentoHit.p50Us;
      const invalidationGoal = invalidation.p99Us <= 5000;
      return {
        title: `Near cache (1 KiB values; sidecars in their own processes; Node ${process.version}; Redis: ${redis.describe})`,
        results: [
          row('near-cache hit (get)', nearHit),
          row('BentoCache L1 hit (get)', bentoHit),
          row('lru-cache get (awaited)', lruHit),
          row('near-cache miss → sidecar L1', nearMiss),
          row('plain client Get (sidecar L1)', plainGet),
          row('Set on A → dropped on B', invalidation),
          row('  of which after Set reply', afterReply),
          row('Set on A → plain Watch event on B', rawEvent),
        ],
        notes: [
          `near-cache hit / BentoCache L1 hit: p50 ${ratio(nearHit.p50Us, bentoHit.p50Us)} (goal ≤ 1.00x: ${hitGoal ? 'met' : 'MISSED'}); tight loop ${nearNs.toFixed(0)} ns vs ${bentoNs.toFixed(0)} ns per call (${ratio(nearNs, bentoNs)})`,
          `near-cache hit / lru-cache get: p50 ${ratio(nearHit.p50Us, lruHit.p50Us)} (both awaited); tight loop ${nearNs.toFixed(0)} ns vs ${lruNs.toFixed(1)} ns per synchronous lru.get (${ratio(nearNs, lruNs)}; aim ≤ 10x)`,
          `synchronous near-cache read (nearCache.get) / lru-cache get: tight loop ${nearSyncNs.toFixed(1)} ns vs ${lruNs.toFixed(1)} ns per call (${ratio(nearSyncNs, lruNs)}; aim ≤ 10x)`,
          `near-cache miss / plain Get: p50 ${ratio(nearMiss.p50Us, plainGet.p50Us)}, p99 ${ratio(nearMiss.p99Us, plainGet.p99Us)} (what the near cache adds to a miss)`,
          `invalidation A → B's near cache: p50 ${(invalidation.p50Us / 1000).toFixed(2)} ms, p99 ${(invalidation.p99Us / 1000).toFixed(2)} ms (goal p99 ≤ 5 ms: ${invalidationGoal ? 'met' : 'MISSED'}); measured from the start of the Set on A; the same event on a plain Watch stream of B, same iterations: p50 ${(rawEvent.p50Us / 1000).toFixed(2)} ms, p99 ${(rawEvent.p99Us / 1000).toFixed(2)} ms (near cache / plain: p99 ${ratio(invalidation.p99Us, rawEvent.p99Us)})`,
          'Per-call figures time each call with process.hrtime (≈ 40-80 ns of the figure is the clock and the loop); the tight-loop figures divide a loop of calls by its length.',
        ],
      };
    } finally {
      await runCleanup(cleanup);
    }
  },
};
