/**
 * The shared tier: a Get answered from L2 (Redis) next to a direct ioredis
 * read of the same 1 KiB, and the propagation of a Set on sidecar A to a
 * Watch event on sidecar B — alone and with 1,000 streams open on B.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import Redis from 'ioredis';
import { ContextCacheClient, Source, type WatchResponse } from '../src/client';
import { deployedClient, startDeployedSidecar, TRANSPORTS, type Transport } from './deployed';
import { startBenchSidecar, scaled } from './harness';
import { measureLatency, ratio, runCleanup, startBenchRedis, summarize, type Bench, type BenchReport, type LatencyStats } from './lib';

const VALUE = Buffer.alloc(1024, 'x');

interface CrowdReport {
  deliveries: number;
  missing: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  maxUs: number;
}

/** Starts the crowd process; `mark` tells it when a key's Set began; `report` ends it with its figures. */
async function startCrowd(address: string, streams: number, prefix: string): Promise<{ mark(key: string, startNs: bigint): void; report(): Promise<CrowdReport> }> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'watch-crowd.ts'), address, String(streams), prefix], { stdio: ['pipe', 'pipe', 'inherit'] });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`watch crowd exited with ${code}`)));
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('ready')) resolve();
    });
  });
  return {
    mark: (key, startNs) => child.stdin.write(`${key} ${startNs}\n`),
    report: () =>
      new Promise<CrowdReport>((resolve, reject) => {
        child.removeAllListeners('exit');
        child.once('exit', () => {
          const line = output.split('\n').find((l) => l.startsWith('{'));
          if (line === undefined) reject(new Error('the watch crowd reported nothing'));
          else resolve(JSON.parse(line) as CrowdReport);
        });
        child.stdin.end('report\n');
      }),
  };
}

function noThroughput(): { calls: number; concurrency: number; seconds: number; callsPerSecond: number } {
  return { calls: 0, concurrency: 1, seconds: 0, callsPerSecond: Number.NaN };
}

/** Measures Set on A → event on B, `count` times, one at a time. */
async function propagation(
  writer: ContextCacheClient,
  stream: AsyncIterator<WatchResponse>,
  count: number,
  prefix: string,
  mark: (key: string, startNs: bigint) => unknown = () => undefined,
  pauseMs = 0,
): Promise<{ fromCall: LatencyStats; fromReply: LatencyStats }> {
  const fromCall = new Float64Array(count);
  const fromReply = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const key = `${prefix}${i}`;
    const started = process.hrtime.bigint();
    mark(key, started);
    let replied = 0n;
    const write = writer.set({ key, value: VALUE }).then(() => (replied = process.hrtime.bigint()));
    for (;;) {
      const { value, done } = await stream.next();
      if (done) throw new Error('watch stream ended');
      if (value.event?.$case === 'keyInvalidated' && value.event.value.key === key) break;
    }
    const arrived = process.hrtime.bigint();
    await write;
    fromCall[i] = Number(arrived - started);
    // The event can arrive before the Set's own reply: that counts as 0.
    fromReply[i] = Math.max(0, Number(arrived - replied));
    if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs));
  }
  return { fromCall: summarize(fromCall), fromReply: summarize(fromReply) };
}

export const distributed: Bench = {
  name: 'distributed',
  async run(): Promise<BenchReport> {
    const redis = await startBenchRedis();
    const env = { REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'bench-dist' };
    const a = await startBenchSidecar(env);
    const b = await startBenchSidecar(env);
    const direct = new Redis(redis.url, { lazyConnect: true });
    await direct.connect();
    try {
      // L2 hits: every measured Get on B reads a key B has never seen (so L1 misses, Redis answers).
      const keys = scaled(5_000);
      const writes: Promise<unknown>[] = [];
      for (let i = 0; i < keys + 500; i++) writes.push(a.client.set({ key: `l2/${i}`, value: VALUE }));
      await Promise.all(writes);
      await direct.set('bench:direct:1k', VALUE);
      let next = 0;
      const l2 = await measureLatency(
        async () => {
          const read = await b.client.get({ key: `l2/${next++}` });
          if (read.info?.source !== Source.SOURCE_L2) throw new Error('expected an L2 hit');
        },
        { warmup: 500, iterations: keys },
      );
      const redisGet = await measureLatency(() => direct.getBuffer('bench:direct:1k'), { warmup: 500, iterations: keys });
      const l1 = await measureLatency(() => b.client.get({ key: 'l2/0' }), { warmup: 500, iterations: keys });

      // Propagation: A writes, B's watcher hears it.
      const count = scaled(2_000);
      const watch = b.client.watch({ keyPrefixes: ['p/'] });
      const events = watch[Symbol.asyncIterator]();
      await events.next(); // started
      await propagation(a.client, events, 200, 'p/warm/');
      const alone = await propagation(a.client, events, count, 'p/alone/');

      // 999 more streams on B, held and read by another process (as other apps would), watching other keys.
      const idle = await startCrowd(b.sidecar.listenAddress, 999, 'q/');
      const crowded = await propagation(a.client, events, count, 'p/crowd/');
      await idle.report();

      // Fan-out: 999 streams in another process plus ours all watch the keys written, one write every 20 ms.
      const fanCount = scaled(300);
      const fan = await startCrowd(b.sidecar.listenAddress, 999, 'p/fan/');
      const fanned = await propagation(a.client, events, fanCount, 'p/fan/', fan.mark, 20);
      const all = await fan.report();
      watch.call.on('error', () => undefined);
      watch.cancel();

      const row = (name: string, latency: LatencyStats) => ({ name, latency, throughput: noThroughput() });
      const figures: Record<string, number> = {
        'inProcess.l2OverDirectP50': l2.p50Us / redisGet.p50Us,
        'inProcess.l2P50Us': l2.p50Us,
        'inProcess.propagationP50Us': alone.fromCall.p50Us,
        'inProcess.propagationP99Us': alone.fromCall.p99Us,
      };
      const deployedRows = [];
      const deployedNotes: string[] = [];
      for (const transport of TRANSPORTS) {
        const measured = await deployedShared(redis.url, transport, direct);
        deployedRows.push(row(`as deployed (${transport}): Get, L2 hit`, measured.l2), row(`as deployed (${transport}): direct ioredis GET`, measured.redisGet), row(`as deployed (${transport}): propagation A→B`, measured.propagation));
        Object.assign(figures, {
          [`${transport}.l2OverDirectP50`]: measured.l2.p50Us / measured.redisGet.p50Us,
          [`${transport}.l2OverDirectP99`]: measured.l2.p99Us / measured.redisGet.p99Us,
          [`${transport}.l2P50Us`]: measured.l2.p50Us,
          [`${transport}.propagationP50Us`]: measured.propagation.p50Us,
          [`${transport}.propagationP99Us`]: measured.propagation.p99Us,
        });
        deployedNotes.push(
          `as deployed (${transport}): L2-hit Get / direct ioredis GET p50 ${ratio(measured.l2.p50Us, measured.redisGet.p50Us)}, p99 ${ratio(measured.l2.p99Us, measured.redisGet.p99Us)}; ` +
            `propagation p50 ${measured.propagation.p50Us.toFixed(0)} µs / p99 ${measured.propagation.p99Us.toFixed(0)} µs`,
        );
      }
      return {
        title: 'Shared tier: L2-hit Get vs direct ioredis, and Set→Watch propagation between two sidecars (1 KiB values)',
        results: [
          row('Get, L2 hit (sidecar B, Redis)', l2),
          row('direct ioredis GET', redisGet),
          row('Get, L1 hit (for reference)', l1),
          row('propagation A→B, 1 stream', alone.fromCall),
          row('  of which after Set reply', alone.fromReply),
          row('propagation A→B, 1,000 streams open', crowded.fromCall),
          row('  of which after Set reply', crowded.fromReply),
          row('fan-out to 1,000: first stream', fanned.fromCall),
          ...deployedRows,
        ],
        figures,
        notes: [
          `L2-hit Get / direct ioredis GET: p50 ${ratio(l2.p50Us, redisGet.p50Us)}, p99 ${ratio(l2.p99Us, redisGet.p99Us)}`,
          `propagation p50 ${alone.fromCall.p50Us.toFixed(0)} µs / p99 ${alone.fromCall.p99Us.toFixed(0)} µs (1 stream); ` +
            `p50 ${crowded.fromCall.p50Us.toFixed(0)} µs / p99 ${crowded.fromCall.p99Us.toFixed(0)} µs with 999 more streams open on B (watching other keys)`,
          `fan-out of each write to 1,000 matching streams (one write every 20 ms), over the 999 streams read by another process: ` +
            `${all.deliveries} deliveries, ${all.missing} missing, p50 ${all.p50Us.toFixed(0)} µs, p90 ${all.p90Us.toFixed(0)} µs, p99 ${all.p99Us.toFixed(0)} µs, max ${all.maxUs.toFixed(0)} µs`,
          'Propagation is measured from the start of the Set call on A to the event at the client of B: it includes the Set RPC, the Lua write+PUBLISH, Pub/Sub delivery, and the Watch stream.',
          ...deployedNotes,
          `Redis: ${redis.describe}; the first rows: sidecars, clients and benchmark share one process; "as deployed": each sidecar is dist/main.js in its own process, the direct GET is ioredis from the clients' process, measured right after.`,
        ],
      };
    } finally {
      direct.disconnect();
      await a.close();
      await b.close();
      await redis.stop();
    }
  },
};

/** L2-hit Get and propagation with two sidecars as deployed (dist/main.js, own processes) on one transport, and the direct GET measured right after from this process. */
async function deployedShared(redisUrl: string, transport: Transport, direct: Redis): Promise<{ l2: LatencyStats; redisGet: LatencyStats; propagation: LatencyStats }> {
  const cleanup: (() => Promise<void> | void)[] = [];
  try {
    const env = { REDIS_URL: redisUrl, CONTEXT_CACHE_NAMESPACE: `bench-dist-${transport}` };
    const [a, b] = await Promise.all([startDeployedSidecar(env, { transport }), startDeployedSidecar(env, { transport })]);
    cleanup.push(() => a!.close(), () => b!.close());
    const { ContextCacheClient: DeployedClient } = deployedClient();
    const [writer, reader] = [new DeployedClient(a!.address), new DeployedClient(b!.address)];
    cleanup.push(() => writer.close(), () => reader.close());
    const keys = scaled(5_000);
    const writes: Promise<unknown>[] = [];
    for (let i = 0; i < keys + 500; i++) writes.push(writer.set({ key: `l2/${i}`, value: VALUE }));
    await Promise.all(writes);
    let next = 0;
    const l2 = await measureLatency(
      async () => {
        const read = await reader.get({ key: `l2/${next++}` });
        if (read.info?.source !== Source.SOURCE_L2) throw new Error('expected an L2 hit');
      },
      { warmup: 500, iterations: keys },
    );
    const redisGet = await measureLatency(() => direct.getBuffer('bench:direct:1k'), { warmup: 500, iterations: keys });
    const watch = reader.watch({ keyPrefixes: ['p/'] });
    const events = watch[Symbol.asyncIterator]();
    await events.next(); // started
    await propagation(writer, events, 200, 'p/warm/');
    const measured = await propagation(writer, events, scaled(2_000), 'p/alone/');
    watch.call.on('error', () => undefined);
    watch.cancel();
    return { l2, redisGet, propagation: measured.fromCall };
  } finally {
    await runCleanup(cleanup);
  }
}
