/**
 * What tracing costs on the Get path, as deployed (dist/main.js in its own
 * process, bench/deployed.ts): a 1 KiB Get from L1, one at a time and 64 in
 * flight, with tracing off (the default), with the SDK loaded but nothing
 * sampled (OTEL_TRACES_SAMPLER=always_off), and with every call traced and
 * exported over OTLP/HTTP to a receiver in this process (test/helpers/otlp.ts).
 * BENCH_TRACING_BASELINE=/path/to/other/dist/main.js adds another build with
 * tracing off (e.g. the commit before tracing existed), for the cost of the
 * hooks themselves. The variants take turns over several rounds; medians of
 * the rounds are reported.
 */
import { readFileSync } from 'node:fs';
import { ContextCacheClient, Source } from '../src/client';
import { startOtlpReceiver } from '../test/helpers/otlp';
import { startDeployedSidecar, type DeployedSidecar } from './deployed';
import { measureLatency, measureThroughput, ratio, runCleanup, type Bench, type BenchReport, type BenchResult, type LatencyStats, type ThroughputStats } from './lib';

const KEY = 'bench/tracing/1k';
const VALUE = Buffer.alloc(1024, 0x5a);

function plan() {
  const scale = Number(process.env.BENCH_SCALE ?? '1') || 1;
  const n = (count: number) => Math.max(100, Math.round(count * scale));
  return {
    rounds: scale < 1 ? 2 : 5,
    latency: { warmup: n(1_000), iterations: n(8_000), maxMs: 5_000 },
    throughput: { concurrency: 64, calls: n(16_000), warmup: n(1_000) },
  };
}

interface Variant {
  name: string;
  env: Record<string, string>;
  main?: string;
  sidecar?: DeployedSidecar;
  client?: ContextCacheClient;
  latency: LatencyStats[];
  throughput: ThroughputStats[];
  /** The sidecar process's CPU time per call of each throughput run (µs): steadier than latency on a shared machine. */
  cpuUs: number[];
}

/** user + system CPU time of a process so far, in µs (/proc/PID/stat, clock ticks of 10 ms). */
function cpuTimeUs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10_000;
}


/** The round whose p50 is the median, so that a row's figures come from one run. */
function medianOf<T>(runs: T[], key: (run: T) => number): T {
  const sorted = [...runs].sort((a, b) => key(a) - key(b));
  return sorted[Math.floor(sorted.length / 2)]!;
}

export const tracing: Bench = {
  name: 'tracing',
  async run(): Promise<BenchReport> {
    const { rounds, latency, throughput } = plan();
    const cleanup: (() => Promise<unknown> | unknown)[] = [];
    try {
      const receiver = await startOtlpReceiver();
      cleanup.push(() => receiver.close());
      const variants: Variant[] = [
        { name: 'tracing off (default)', env: {}, latency: [], throughput: [], cpuUs: [] },
        { name: 'SDK loaded, nothing sampled', env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpEndpoint, OTEL_TRACES_SAMPLER: 'always_off' }, latency: [], throughput: [], cpuUs: [] },
        { name: 'every call traced, exported', env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.httpEndpoint, OTEL_TRACES_SAMPLER: 'always_on' }, latency: [], throughput: [], cpuUs: [] },
      ];
      const baseline = process.env.BENCH_TRACING_BASELINE;
      if (baseline) variants.unshift({ name: `baseline build, off (${baseline})`, env: {}, main: baseline, latency: [], throughput: [], cpuUs: [] });
      for (const variant of variants) {
        variant.sidecar = await startDeployedSidecar({ CONTEXT_CACHE_LOG_LEVEL: 'error', ...variant.env }, { main: variant.main });
        cleanup.push(() => variant.sidecar!.close());
        variant.client = new ContextCacheClient(variant.sidecar.address);
        cleanup.push(() => variant.client!.close());
        await variant.client.set({ key: KEY, value: VALUE, ttl: { seconds: 3600 } });
        const read = await variant.client.get({ key: KEY });
        if (read.info?.source !== Source.SOURCE_L1 || read.value.length !== VALUE.length) throw new Error(`${variant.name}: the Get was not a 1 KiB L1 hit`);
      }
      for (let round = 0; round < rounds; round++) {
        // A different order each round, so that no variant always runs first (or right after a GC of another).
        for (let i = 0; i < variants.length; i++) {
          const variant = variants[(i + round) % variants.length]!;
          const call = () => variant.client!.get({ key: KEY });
          variant.latency.push(await measureLatency(call, latency));
          const cpuBefore = cpuTimeUs(variant.sidecar!.pid);
          const run = await measureThroughput(call, throughput);
          variant.cpuUs.push((cpuTimeUs(variant.sidecar!.pid) - cpuBefore) / (run.calls + throughput.warmup));
          variant.throughput.push(run);
        }
      }
      const spans = receiver.spans().length;
      const results: BenchResult[] = variants.map((variant) => ({
        name: variant.name,
        latency: medianOf(variant.latency, (l) => l.p50Us),
        throughput: medianOf(variant.throughput, (t) => t.callsPerSecond),
      }));
      const off = results.find((r) => r.name === 'tracing off (default)')!;
      const notes = results
        .filter((r) => r !== off)
        .map((r) => `${r.name} / off: p50 ${ratio(r.latency.p50Us, off.latency.p50Us)}, p99 ${ratio(r.latency.p99Us, off.latency.p99Us)}, calls/s ${ratio(r.throughput.callsPerSecond, off.throughput.callsPerSecond)}`);
      const cpu = (v: Variant) => [...v.cpuUs].sort((a, b) => a - b)[Math.floor(v.cpuUs.length / 2)]!;
      const offVariant = variants.find((v) => v.name === off.name)!;
      for (const variant of variants) notes.push(`sidecar CPU per Get, ${variant.name}: median ${cpu(variant).toFixed(1)} µs${variant === offVariant ? '' : ` (${ratio(cpu(variant), cpu(offVariant))} of off)`}; rounds ${variant.cpuUs.map((c) => c.toFixed(1)).join(', ')}`);
      notes.push(`p50 of each round, off: ${variants.find((v) => v.name === off.name)!.latency.map((l) => l.p50Us.toFixed(0)).join(', ')} µs`);
      for (const variant of variants.filter((v) => v.name !== off.name)) notes.push(`p50 of each round, ${variant.name}: ${variant.latency.map((l) => l.p50Us.toFixed(0)).join(', ')} µs`);
      notes.push(`${spans} spans reached the receiver (it runs in the benchmark's process, beside the client)`);
      return {
        title: `Get of 1 KiB from L1, sidecar as deployed (dist/main.js), tracing off and on; ${rounds} rounds, medians`,
        results,
        notes,
        figures: Object.fromEntries(
          variants.flatMap((v, i) => [[`${v.name} p50 µs`, results[i]!.latency.p50Us], [`${v.name} calls/s`, results[i]!.throughput.callsPerSecond], [`${v.name} CPU µs per Get`, [...v.cpuUs].sort((a, b) => a - b)[Math.floor(v.cpuUs.length / 2)]!]]),
        ),
      };
    } finally {
      await runCleanup(cleanup);
    }
  },
};

