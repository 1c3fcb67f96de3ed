/**
 * Get of a 1 KiB value from L1 over loopback gRPC, next to the two floors
 * it cannot beat: a bare grpc-js echo of the same payload (the cost of
 * gRPC itself in Node) and a direct ioredis GET (what an application would
 * pay going to Redis without the sidecar). Same process, same run.
 */
import Redis from 'ioredis';
import { ContextCacheClient, Source } from '../src/client';
import { deployedClient, startDeployedSidecar, TRANSPORTS, type Transport } from './deployed';
import { echoClient, startDeployedEcho, startEcho } from './echo';
import { startBenchSidecar } from './harness';
import { interleaved, measureLatency, measureThroughput, ratio, startBenchRedis, type Bench, type BenchReport, type BenchResult, type LatencyOptions, type ThroughputOptions, runCleanup } from './lib';

const VALUE_BYTES = 1024;
/** The context-cache client's default deadline (ClientOptions.deadlineMs). */
const CLIENT_DEADLINE_MS = 5000;
const KEY = 'bench/l1-get/1k';

/** Sizes of the runs; BENCH_SCALE=0.1 for a quick smoke run. */
function plan(): { latency: LatencyOptions; throughput: ThroughputOptions } {
  const scale = Number(process.env.BENCH_SCALE ?? '1') || 1;
  const n = (count: number) => Math.max(100, Math.round(count * scale));
  return {
    latency: { warmup: n(2_000), iterations: n(20_000), maxMs: 8_000 },
    throughput: { concurrency: 64, calls: n(40_000), warmup: n(2_000) },
  };
}

async function measure(name: string, call: () => Promise<unknown>): Promise<BenchResult> {
  const { latency, throughput } = plan();
  const latencyStats = await measureLatency(call, latency);
  const throughputStats = await measureThroughput(call, throughput);
  return { name, latency: latencyStats, throughput: throughputStats };
}

function expectValue(value: Uint8Array | Buffer | null | undefined, what: string): void {
  if (value == null || value.byteLength !== VALUE_BYTES) {
    throw new Error(`${what} returned ${value == null ? 'nothing' : `${value.byteLength} bytes`}, not the ${VALUE_BYTES}-byte value`);
  }
}

export const l1Get: Bench = {
  name: 'l1-get',
  async run(): Promise<BenchReport> {
    const payload = Buffer.alloc(VALUE_BYTES, 0x5a);
    const cleanup: (() => Promise<void> | void)[] = [];
    try {
      // (1) The sidecar, in this process, L1-only, through the TypeScript client.
      const bench = await startBenchSidecar({});
      cleanup.push(() => bench.close());
      const cache = bench.client;
      await cache.set({ key: KEY, value: payload, ttl: { seconds: 3600 } });
      const first = await cache.get({ key: KEY });
      expectValue(first.value, 'sidecar Get');
      if (first.info?.source !== Source.SOURCE_L1) throw new Error('sidecar Get was not answered from L1');

      // (2) A bare grpc-js echo of the same payload.
      const echo = await startEcho(payload);
      cleanup.push(() => echo.stop());
      const request = Buffer.from(KEY);
      const inProcessEcho = echoClient(echo.address, request);
      cleanup.push(() => inProcessEcho.close());
      const echoCall = inProcessEcho.call;
      expectValue(await echoCall(), 'echo');

      // (3) ioredis straight to Redis.
      const redisServer = await startBenchRedis();
      cleanup.push(() => redisServer.stop());
      const redis = new Redis(redisServer.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
      cleanup.push(() => {
        redis.disconnect();
      });
      await redis.connect();
      await redis.set(KEY, payload);
      expectValue(await redis.getBuffer(KEY), 'ioredis GET');

      const sidecarResult = await measure('sidecar Get (L1, gRPC)', () => cache.get({ key: KEY }));
      const echoResult = await measure('grpc-js echo (1 KiB)', echoCall);
      const redisResult = await measure('ioredis GET (1 KiB)', () => redis.getBuffer(KEY));

      // (4) As deployed: the sidecar (dist/main.js) and the echo each in a process of their own, over TCP and a Unix socket.
      const figures: Record<string, number> = {};
      const deployedRows: BenchResult[] = [];
      const deployedNotes: string[] = [];
      for (const transport of TRANSPORTS) {
        const [deployed, echoRow, deadlineRow] = await deployedPair(transport, payload, cleanup);
        deployedRows.push(deployed, echoRow, deadlineRow);
        const p50WithDeadline = deployed.latency.p50Us / deadlineRow.latency.p50Us;
        const throughputWithDeadline = deployed.throughput.callsPerSecond / deadlineRow.throughput.callsPerSecond;
        const p50 = deployed.latency.p50Us / echoRow.latency.p50Us;
        const p99 = deployed.latency.p99Us / echoRow.latency.p99Us;
        const throughput = deployed.throughput.callsPerSecond / echoRow.throughput.callsPerSecond;
        Object.assign(figures, {
          [`${transport}.sidecarP50Us`]: deployed.latency.p50Us,
          [`${transport}.sidecarP99Us`]: deployed.latency.p99Us,
          [`${transport}.sidecarCallsPerSecond`]: deployed.throughput.callsPerSecond,
          [`${transport}.echoP50Us`]: echoRow.latency.p50Us,
          [`${transport}.echoP99Us`]: echoRow.latency.p99Us,
          [`${transport}.echoCallsPerSecond`]: echoRow.throughput.callsPerSecond,
          [`${transport}.p50Ratio`]: p50,
          [`${transport}.p99Ratio`]: p99,
          [`${transport}.throughputRatio`]: throughput,
          [`${transport}.echoWithDeadlineP50Us`]: deadlineRow.latency.p50Us,
          [`${transport}.echoWithDeadlineCallsPerSecond`]: deadlineRow.throughput.callsPerSecond,
          [`${transport}.p50RatioSameDeadline`]: p50WithDeadline,
          [`${transport}.throughputRatioSameDeadline`]: throughputWithDeadline,
        });
        deployedNotes.push(
          `as deployed (${transport}), sidecar / cross-process echo: p50 ${p50.toFixed(2)}x, p99 ${p99.toFixed(2)}x, throughput (64 in flight) ${throughput.toFixed(2)}x  [goal: p50 <= 1.10x, throughput >= 0.90x]`,
          `as deployed (${transport}), sidecar / the echo called with the client's 5 s deadline: p50 ${p50WithDeadline.toFixed(2)}x, throughput ${throughputWithDeadline.toFixed(2)}x (what the deadline costs is not the sidecar's)`,
        );
      }

      const s = sidecarResult;
      Object.assign(figures, {
        'inProcess.p50Ratio': s.latency.p50Us / echoResult.latency.p50Us,
        'inProcess.throughputRatio': s.throughput.callsPerSecond / echoResult.throughput.callsPerSecond,
      });
      return {
        title: `Get of a ${VALUE_BYTES}-byte value (Node ${process.version}; Redis: ${redisServer.describe})`,
        results: [sidecarResult, echoResult, redisResult, ...deployedRows],
        notes: [
          `in one process, sidecar / echo: p50 ${ratio(s.latency.p50Us, echoResult.latency.p50Us)}, p99 ${ratio(s.latency.p99Us, echoResult.latency.p99Us)}, throughput ${ratio(s.throughput.callsPerSecond, echoResult.throughput.callsPerSecond)}`,
          `sidecar / ioredis: p50 ${ratio(s.latency.p50Us, redisResult.latency.p50Us)}, p99 ${ratio(s.latency.p99Us, redisResult.latency.p99Us)}, throughput ${ratio(s.throughput.callsPerSecond, redisResult.throughput.callsPerSecond)}`,
          ...deployedNotes,
          `deployed rows: the medians of ${process.env.BENCH_ROUNDS ?? 3} interleaved rounds (sidecar, echo, sidecar, …); each server in its own process, the client in this one`,
          '(latency ratios above 1 mean the sidecar is slower; throughput ratios below 1 mean it does fewer calls/s)',
        ],
        figures,
      };
    } finally {
      await runCleanup(cleanup);
    }
  },
};

/** The sidecar as deployed (L1 only) and the echo in its own process, on one transport, measured in interleaved rounds. */
async function deployedPair(transport: Transport, payload: Buffer, cleanup: (() => Promise<void> | void)[]): Promise<BenchResult[]> {
  const sidecar = await startDeployedSidecar({ CONTEXT_CACHE_LOG_LEVEL: 'error' }, { transport });
  cleanup.push(() => sidecar.close());
  const { ContextCacheClient: DeployedClient } = deployedClient();
  const client = new DeployedClient(sidecar.address);
  cleanup.push(() => client.close());
  await client.set({ key: KEY, value: payload, ttl: { seconds: 3600 } });
  const first = await client.get({ key: KEY });
  expectValue(first.value, `deployed sidecar Get (${transport})`);
  if (first.info?.source !== Source.SOURCE_L1) throw new Error('the deployed sidecar did not answer from L1');
  const echo = await startDeployedEcho(VALUE_BYTES, transport);
  cleanup.push(() => echo.stop());
  const echoing = echoClient(echo.address, Buffer.from(KEY));
  cleanup.push(() => echoing.close());
  expectValue(await echoing.call(), `cross-process echo (${transport})`);
  // The same echo with a deadline on every call, as the context-cache client sends one (its default, 5 s):
  // the grpc-timeout header and a timer on either side are a cost of the deadline, not of the sidecar.
  const echoingWithDeadline = echoClient(echo.address, Buffer.from(KEY), CLIENT_DEADLINE_MS);
  cleanup.push(() => echoingWithDeadline.close());
  expectValue(await echoingWithDeadline.call(), `cross-process echo with a deadline (${transport})`);
  return interleaved([
    { name: `as deployed (${transport}): sidecar Get (L1)`, measure: () => measure('', () => client.get({ key: KEY })) },
    { name: `as deployed (${transport}): grpc-js echo`, measure: () => measure('', echoing.call) },
    { name: `as deployed (${transport}): grpc-js echo, 5 s deadline`, measure: () => measure('', echoingWithDeadline.call) },
  ]);
}
