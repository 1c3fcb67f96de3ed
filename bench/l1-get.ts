/**
 * Get of a 1 KiB value from L1 over loopback gRPC, next to the two floors
 * it cannot beat: a bare grpc-js echo of the same payload (the cost of
 * gRPC itself in Node) and a direct ioredis GET (what an application would
 * pay going to Redis without the sidecar). Same process, same run.
 */
import {
  credentials,
  Client,
  Server,
  ServerCredentials,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import Redis from 'ioredis';
import { Source } from '../src/client';
import { startBenchSidecar } from './harness';
import { measureLatency, measureThroughput, ratio, startBenchRedis, type Bench, type BenchReport, type BenchResult, type LatencyOptions, type ThroughputOptions, runCleanup } from './lib';

const VALUE_BYTES = 1024;
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

const passthrough = (buffer: Buffer) => buffer;

/** A hand-written unary service with raw Buffer (de)serializers: no proto, no codec work. */
const ECHO_SERVICE: ServiceDefinition<UntypedServiceImplementation> = {
  echo: {
    path: '/bench.Echo/Echo',
    requestStream: false,
    responseStream: false,
    requestSerialize: passthrough,
    requestDeserialize: passthrough,
    responseSerialize: passthrough,
    responseDeserialize: passthrough,
  },
};

async function startEcho(payload: Buffer): Promise<{ address: string; stop(): Promise<void> }> {
  const server = new Server();
  server.addService(ECHO_SERVICE, { echo: (_call: unknown, callback: (error: null, response: Buffer) => void) => callback(null, payload) });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return {
    address: `127.0.0.1:${port}`,
    stop: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
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
      const echoClient = new Client(echo.address, credentials.createInsecure());
      cleanup.push(() => echoClient.close());
      const request = Buffer.from(KEY);
      const echoCall = () =>
        new Promise<Buffer>((resolve, reject) =>
          echoClient.makeUnaryRequest<Buffer, Buffer>(ECHO_SERVICE.echo!.path, passthrough, passthrough, request, (error, response) =>
            error ? reject(error) : resolve(response!),
          ),
        );
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

      const s = sidecarResult;
      return {
        title: `Get of a ${VALUE_BYTES}-byte value over loopback (Node ${process.version}; Redis: ${redisServer.describe})`,
        results: [sidecarResult, echoResult, redisResult],
        notes: [
          `sidecar / echo:    p50 ${ratio(s.latency.p50Us, echoResult.latency.p50Us)}, p99 ${ratio(s.latency.p99Us, echoResult.latency.p99Us)}, throughput ${ratio(s.throughput.callsPerSecond, echoResult.throughput.callsPerSecond)}`,
          `sidecar / ioredis: p50 ${ratio(s.latency.p50Us, redisResult.latency.p50Us)}, p99 ${ratio(s.latency.p99Us, redisResult.latency.p99Us)}, throughput ${ratio(s.throughput.callsPerSecond, redisResult.throughput.callsPerSecond)}`,
          '(latency ratios above 1 mean the sidecar is slower; throughput ratios below 1 mean it does fewer calls/s)',
        ],
      };
    } finally {
      await runCleanup(cleanup);
    }
  },
};
