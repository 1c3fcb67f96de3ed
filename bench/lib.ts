/**
 * Small helpers shared by every benchmark: timing loops,
 * percentiles, a table printer, and a throwaway Redis (the test harness's).
 */
import { startRedis } from '../test/helpers/redis';

/** Latency summary of one measured loop; every figure in microseconds. */
export interface LatencyStats {
  calls: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  meanUs: number;
  minUs: number;
  maxUs: number;
}

/** Throughput of one concurrent run. */
export interface ThroughputStats {
  calls: number;
  concurrency: number;
  seconds: number;
  callsPerSecond: number;
}

/** One row of a benchmark report: a target measured both ways. */
export interface BenchResult {
  name: string;
  latency: LatencyStats;
  throughput: ThroughputStats;
}

export interface BenchReport {
  title: string;
  results: BenchResult[];
  /** Lines printed under the table (ratios, notes). */
  notes: string[];
  /** Figures that are not latency rows (bytes, counts, ratios), kept in the JSON. */
  figures?: Record<string, number>;
}

/** A benchmark module: bench/index.ts runs each and prints its report. */
export interface Bench {
  name: string;
  run(): Promise<BenchReport>;
}

/** Nearest-rank percentile of an ascending array; p in [0, 100]. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

/** Summarizes latency samples given in nanoseconds. */
export function summarize(samplesNs: Float64Array): LatencyStats {
  const sorted = Float64Array.from(samplesNs).sort();
  let sum = 0;
  for (const sample of sorted) sum += sample;
  const us = (ns: number) => ns / 1000;
  return {
    calls: sorted.length,
    p50Us: us(percentile(sorted, 50)),
    p90Us: us(percentile(sorted, 90)),
    p99Us: us(percentile(sorted, 99)),
    p999Us: us(percentile(sorted, 99.9)),
    meanUs: us(sorted.length === 0 ? Number.NaN : sum / sorted.length),
    minUs: us(sorted[0] ?? Number.NaN),
    maxUs: us(sorted[sorted.length - 1] ?? Number.NaN),
  };
}

export interface LatencyOptions {
  /** Calls made first and thrown away (JIT, connection, caches). */
  warmup: number;
  /** Calls measured. */
  iterations: number;
  /** Stop measuring early after this long, keeping what was measured (for slow machines). */
  maxMs?: number;
}

/** Sequential latency: one call at a time, each timed on its own. */
export async function measureLatency(call: () => Promise<unknown>, options: LatencyOptions): Promise<LatencyStats> {
  for (let i = 0; i < options.warmup; i++) await call();
  const samples = new Float64Array(options.iterations);
  const stopAt = options.maxMs === undefined ? Number.POSITIVE_INFINITY : performance.now() + options.maxMs;
  let done = 0;
  for (; done < options.iterations; done++) {
    const start = process.hrtime.bigint();
    await call();
    samples[done] = Number(process.hrtime.bigint() - start);
    // Checking the clock every call would cost as much as a fast call.
    if ((done & 255) === 255 && performance.now() > stopAt) {
      done++;
      break;
    }
  }
  return summarize(samples.subarray(0, done));
}

export interface ThroughputOptions {
  /** Calls in flight at any time. */
  concurrency: number;
  /** Calls made in total (measured). */
  calls: number;
  /** Calls made first, with the same concurrency, and not measured. */
  warmup?: number;
}

/** Throughput with `concurrency` calls in flight over a fixed number of calls. */
export async function measureThroughput(call: () => Promise<unknown>, options: ThroughputOptions): Promise<ThroughputStats> {
  const runConcurrent = async (total: number) => {
    let started = 0;
    const worker = async () => {
      while (started < total) {
        started++;
        await call();
      }
    };
    await Promise.all(Array.from({ length: Math.min(options.concurrency, total) }, worker));
  };
  if (options.warmup) await runConcurrent(options.warmup);
  const start = process.hrtime.bigint();
  await runConcurrent(options.calls);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { calls: options.calls, concurrency: options.concurrency, seconds, callsPerSecond: options.calls / seconds };
}

/** A plain-text table with right-aligned columns after the first. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]) => cells.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ');
  return [line(headers), widths.map((width) => '-'.repeat(width)).join('  '), ...rows.map(line)].join('\n');
}

/** The standard table of a report: latency percentiles and throughput per target. */
export function formatReport(report: BenchReport): string {
  const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : '-');
  const table = formatTable(
    ['target', 'calls', 'p50 µs', 'p90 µs', 'p99 µs', 'p99.9 µs', 'mean µs', `in flight`, 'calls/s'],
    report.results.map((r) => [
      r.name,
      String(r.latency.calls),
      fmt(r.latency.p50Us),
      fmt(r.latency.p90Us),
      fmt(r.latency.p99Us),
      fmt(r.latency.p999Us),
      fmt(r.latency.meanUs),
      String(r.throughput.concurrency),
      fmt(r.throughput.callsPerSecond, 0),
    ]),
  );
  return [`== ${report.title}`, ...(report.results.length > 0 ? [table] : []), ...report.notes].join('\n');
}

/** A ratio "a / b" as text, e.g. "2.41x". */
export function ratio(a: number, b: number): string {
  return `${(a / b).toFixed(2)}x`;
}

/** A Redis for a benchmark: REDIS_URL when given, else a fresh one from the test harness (no persistence). */
export interface BenchRedis {
  url: string;
  /** Where it came from, for the report. */
  describe: string;
  stop(): Promise<void>;
}

export async function startBenchRedis(): Promise<BenchRedis> {
  const given = process.env.REDIS_URL?.trim();
  if (given) return { url: given, describe: `REDIS_URL (${new URL(given).host})`, stop: async () => undefined };
  const redis = await startRedis();
  return { url: redis.url, describe: `redis-server child on port ${redis.port}`, stop: () => redis.stop() };
}

/** Runs cleanup steps last-registered first; a failing step is reported and the others still run. */
export async function runCleanup(steps: (() => Promise<unknown> | unknown)[]): Promise<void> {
  for (const step of [...steps].reverse()) {
    try {
      await step();
    } catch (error) {
      console.error(`bench cleanup failed: ${(error as Error).message}`);
    }
  }
}

/** Rounds of an interleaved comparison (BENCH_ROUNDS, default 3): on a shared machine one round's noise is not a result. */
export function rounds(): number {
  return Math.max(1, Math.round(Number(process.env.BENCH_ROUNDS ?? '3') || 3));
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** One row from several rounds of the same target: the median of each figure. */
export function medianResult(name: string, results: readonly BenchResult[]): BenchResult {
  const pick = <T extends object>(get: (r: BenchResult) => T): T => {
    const first = get(results[0]!);
    return Object.fromEntries(Object.keys(first).map((field) => [field, median(results.map((r) => (get(r) as Record<string, number>)[field]!))])) as T;
  };
  return { name, latency: pick((r) => r.latency), throughput: pick((r) => r.throughput) };
}

/**
 * Measures targets in interleaved rounds (a, b, a, b, …) and keeps the
 * median of each figure, so that a burst of load from elsewhere on the
 * machine hits both sides of a ratio alike.
 */
export async function interleaved(targets: readonly { name: string; measure: () => Promise<BenchResult> }[]): Promise<BenchResult[]> {
  const runs = targets.map(() => [] as BenchResult[]);
  for (let round = 0; round < rounds(); round++) {
    for (const [index, target] of targets.entries()) runs[index]!.push(await target.measure());
  }
  return targets.map((target, index) => medianResult(target.name, runs[index]!));
}

/** Latency-only row (no throughput measured). */
export function latencyRow(name: string, latency: LatencyStats): BenchResult {
  return { name, latency, throughput: { calls: 0, concurrency: 1, seconds: 0, callsPerSecond: Number.NaN } };
}
