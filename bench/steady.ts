/**
 * steady: the sidecar tax under steady load. The sidecar as deployed
 * (dist/main.js, own process, L1-only) and a bare grpc-js echo server
 * (bench/echo-server.mjs, own process) take the same open-loop load — Gets
 * of a 1 KiB value at a fixed rate, issued on schedule whether or not
 * earlier calls returned — over TCP and over a Unix socket, one after the
 * other in the same run. Per target and rate: latency p50/p90/p99/p99.9,
 * the server's RSS and V8 heap at the end, and its CPU per 1,000 calls.
 * `steady-soak` holds 1,000 calls/s on the sidecar for 5 minutes
 * (STEADY_SOAK_SECONDS) and reports RSS and heap every 30 s.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { credentials, makeGenericClientConstructor, type CallOptions, type Client } from '@grpc/grpc-js';
import { ContextCacheClient } from '../src/client';
import { freePort } from '../test/helpers/redis';
import { processCpuMs, processRss, startDeployedSidecar, type DeployedSidecar } from './deployed';
import { scaled } from './harness';
import { median, medianResult, rounds, summarize, type Bench, type BenchReport, type BenchResult, type LatencyStats } from './lib';

const MiB = 1024 * 1024;
const VALUE = Buffer.alloc(1024, 'v');

interface ServerReading {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  cpuMs: number;
}

interface Target {
  name: string;
  call(): Promise<unknown>;
  reading(): Promise<ServerReading>;
  close(): Promise<void>;
}

interface EchoProcess {
  address: string;
  child: ChildProcess;
  stats(): Promise<{ rss: number; heapUsed: number; heapTotal: number; cpuUs: number }>;
  close(): Promise<void>;
}

async function startEcho(listen: string): Promise<EchoProcess> {
  const child = spawn(process.execPath, [join(__dirname, 'echo-server.mjs'), listen, String(VALUE.length)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const waiting: ((line: string) => void)[] = [];
  lines.on('line', (line) => waiting.shift()?.(line));
  const next = () => new Promise<string>((resolve) => waiting.push(resolve));
  const ready = await next();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    address: ready.slice('ready '.length),
    child,
    async stats() {
      const answer = next();
      child.stdin!.write('stats\n');
      return JSON.parse(await answer) as { rss: number; heapUsed: number; heapTotal: number; cpuUs: number };
    },
    async close() {
      child.stdin!.end();
      child.kill('SIGTERM');
      await exited;
    },
  };
}

async function echoTarget(listen: string, name: string): Promise<Target> {
  const echo = await startEcho(listen);
  const pass = (value: Buffer) => value;
  const Echo = makeGenericClientConstructor({ get: { path: '/echo.Echo/Get', requestStream: false, responseStream: false, requestSerialize: pass, requestDeserialize: pass, responseSerialize: pass, responseDeserialize: pass } }, 'Echo');
  const client = new Echo(echo.address, credentials.createInsecure()) as unknown as Client & { get(request: Buffer, options: CallOptions, callback: (error: Error | null, reply?: Buffer) => void): void };
  const request = Buffer.from('k');
  return {
    name,
    // The sidecar client's default deadline (5 s): a call the server never answers is an error, counted, not a benchmark that hangs.
    call: () => new Promise((resolve, reject) => client.get(request, { deadline: Date.now() + 5000 }, (error, reply) => (error ? reject(error) : resolve(reply)))),
    async reading() {
      const stats = await echo.stats();
      return { rss: processRss(echo.child.pid!), heapUsed: stats.heapUsed, heapTotal: stats.heapTotal, cpuMs: processCpuMs(echo.child.pid!) };
    },
    async close() {
      client.close();
      await echo.close();
    },
  };
}

async function sidecarTarget(listen: string, name: string): Promise<Target & { sidecar: DeployedSidecar }> {
  const sidecar = await startDeployedSidecar({ CONTEXT_CACHE_LISTEN: listen });
  const client = new ContextCacheClient(sidecar.address);
  await client.set({ key: 'steady', value: VALUE });
  return {
    name,
    sidecar,
    call: () => client.get({ key: 'steady' }),
    async reading() {
      return { rss: sidecar.rss(), heapUsed: await sidecar.metric('nodejs_heap_size_used_bytes'), heapTotal: await sidecar.metric('nodejs_heap_size_total_bytes'), cpuMs: sidecar.cpuMs() };
    },
    async close() {
      client.close();
      await sidecar.close();
    },
  };
}

/** Open loop: `rate` calls per second for `seconds`, on schedule (every ms the calls due are issued). */
async function steadyLoad(call: () => Promise<unknown>, rate: number, seconds: number): Promise<{ latency: LatencyStats; errors: number; issued: number }> {
  const total = Math.round(rate * seconds);
  const samples = new Float64Array(total);
  let issued = 0;
  let errors = 0;
  const started = performance.now();
  const inFlight: Promise<unknown>[] = [];
  await new Promise<void>((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((performance.now() - started) / 1000) * rate));
      while (issued < due) {
        const index = issued++;
        const at = process.hrtime.bigint();
        inFlight.push(
          call().then(
            () => (samples[index] = Number(process.hrtime.bigint() - at)),
            () => {
              errors++;
              samples[index] = Number(process.hrtime.bigint() - at);
            },
          ),
        );
      }
      if (issued >= total) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  await Promise.all(inFlight);
  return { latency: summarize(samples), errors, issued };
}

interface Row {
  target: string;
  rate: number;
  latency: LatencyStats;
  errors: number;
  server: ServerReading;
  cpuPer1000Ms: number;
}

async function measure(target: Target, rate: number, seconds: number): Promise<Row> {
  await steadyLoad(target.call, Math.min(rate, 500), 1); // warm-up
  const before = await target.reading();
  const { latency, errors, issued } = await steadyLoad(target.call, rate, seconds);
  const after = await target.reading();
  process.stderr.write(`steady: ${target.name} @ ${rate}/s measured (${errors} errors)\n`);
  return { target: target.name, rate, latency, errors, server: after, cpuPer1000Ms: ((after.cpuMs - before.cpuMs) / issued) * 1000 };
}

const row = (r: Row): BenchResult => ({ name: `${r.target} @ ${r.rate}/s`, latency: r.latency, throughput: { calls: r.latency.calls, concurrency: 0, seconds: 0, callsPerSecond: r.rate } });

/**
 * One rate on one transport: the sidecar and the echo measured in
 * alternating rounds (sidecar, echo, sidecar, …), so that a burst of load
 * from elsewhere on this shared machine hits both sides of a ratio alike.
 * Each ratio is the median of the rounds' own ratios; each row, the median
 * of the rounds' figures.
 */
async function pairedRounds(sidecar: Target, echo: Target, rate: number, seconds: number) {
  const pairs: [Row, Row][] = [];
  for (let round = 0; round < rounds(); round++) pairs.push([await measure(sidecar, rate, seconds), await measure(echo, rate, seconds)]);
  const rowOf = (side: 0 | 1): Row => {
    const runs = pairs.map((pair) => pair[side]);
    const last = runs.at(-1)!;
    return { ...last, latency: medianResult('', runs.map(row)).latency, errors: runs.reduce((sum, r) => sum + r.errors, 0), cpuPer1000Ms: median(runs.map((r) => r.cpuPer1000Ms)) };
  };
  const ratioOf = (pick: (r: Row) => number) => median(pairs.map(([s, e]) => pick(s) / pick(e)));
  return {
    sidecar: rowOf(0),
    echo: rowOf(1),
    ratios: {
      cpuRatio: ratioOf((r) => r.cpuPer1000Ms),
      p50Ratio: ratioOf((r) => r.latency.p50Us),
      p99Ratio: ratioOf((r) => r.latency.p99Us),
      p999Ratio: ratioOf((r) => r.latency.p999Us),
    },
  };
}

export const steady: Bench = {
  name: 'steady',
  async run(): Promise<BenchReport> {
    const seconds = Math.max(2, Math.round(5 * Number(process.env.BENCH_SCALE ?? '1')));
    const rates = [500, 1000, 5000];
    const dir = mkdtempSync(join(tmpdir(), 'cc-steady-'));
    const rows: Row[] = [];
    const ratios = new Map<string, Awaited<ReturnType<typeof pairedRounds>>['ratios']>();
    try {
      for (const transport of ['tcp', 'unix'] as const) {
        const listen = async (name: string) => (transport === 'tcp' ? `127.0.0.1:${await freePort()}` : `unix:${join(dir, `${name}.sock`)}`);
        const sidecar = await sidecarTarget(await listen('sidecar'), `sidecar ${transport}`);
        const echo = await echoTarget(await listen('echo'), `echo ${transport}`);
        try {
          for (const rate of rates) {
            const paired = await pairedRounds(sidecar, echo, rate, seconds);
            rows.push(paired.sidecar, paired.echo);
            ratios.set(`${transport}.${rate}`, paired.ratios);
          }
        } finally {
          await Promise.all([sidecar.close(), echo.close()]);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const notes: string[] = [];
    const figures: Record<string, number> = {};
    for (const transport of ['tcp', 'unix']) {
      for (const rate of rates) {
        const s = rows.find((r) => r.target === `sidecar ${transport}` && r.rate === rate)!;
        const e = rows.find((r) => r.target === `echo ${transport}` && r.rate === rate)!;
        const key = `${transport}.${rate}`;
        const paired = ratios.get(key)!;
        const x = (value: number) => `${value.toFixed(2)}x`;
        notes.push(
          `${transport} @ ${rate}/s — sidecar / echo: RSS ${(s.server.rss / MiB).toFixed(0)} / ${(e.server.rss / MiB).toFixed(0)} MiB (${x(s.server.rss / e.server.rss)}), ` +
            `heap used/total ${(s.server.heapUsed / MiB).toFixed(0)}/${(s.server.heapTotal / MiB).toFixed(0)} vs ${(e.server.heapUsed / MiB).toFixed(0)}/${(e.server.heapTotal / MiB).toFixed(0)} MiB, ` +
            `CPU per 1,000 calls ${s.cpuPer1000Ms.toFixed(0)} / ${e.cpuPer1000Ms.toFixed(0)} ms (${x(paired.cpuRatio)}), ` +
            `p50 ${x(paired.p50Ratio)}, p99 ${x(paired.p99Ratio)}, p99.9 ${x(paired.p999Ratio)}${s.errors + e.errors > 0 ? `, errors ${s.errors}/${e.errors}` : ''}`,
        );
        Object.assign(figures, {
          [`${key}.sidecarRss`]: s.server.rss,
          [`${key}.echoRss`]: e.server.rss,
          [`${key}.rssRatio`]: s.server.rss / e.server.rss,
          [`${key}.sidecarHeapUsed`]: s.server.heapUsed,
          [`${key}.sidecarHeapTotal`]: s.server.heapTotal,
          ...Object.fromEntries(Object.entries(paired).map(([name, value]) => [`${key}.${name}`, value])),
          [`${key}.sidecarCpuPer1000Ms`]: s.cpuPer1000Ms,
          [`${key}.echoCpuPer1000Ms`]: e.cpuPer1000Ms,
        });
      }
    }
    notes.push(`Each rate: ${rounds()} rounds of ${seconds} s on each server, alternating (BENCH_ROUNDS); rows are the medians of the rounds' figures, ratios the medians of the rounds' own ratios.`);
    return { title: `Steady open-loop Gets of 1 KiB, sidecar (L1-only) and a bare grpc-js echo server, each as its own process (Node ${process.version})`, results: rows.map(row), notes, figures };
  },
};

export const steadySoak: Bench = {
  name: 'steady-soak',
  async run(): Promise<BenchReport> {
    const seconds = Number(process.env.STEADY_SOAK_SECONDS ?? 300);
    const target = await sidecarTarget(`127.0.0.1:${await freePort()}`, 'sidecar tcp');
    const notes: string[] = [];
    const figures: Record<string, number> = {};
    try {
      const started = Date.now();
      const load = steadyLoad(target.call, 1000, seconds);
      const samples: ServerReading[] = [];
      while (Date.now() - started < seconds * 1000) {
        await new Promise((resolve) => setTimeout(resolve, Math.min(30_000, seconds * 1000 - (Date.now() - started))));
        const reading = await target.reading();
        samples.push(reading);
        const at = Math.round((Date.now() - started) / 1000);
        notes.push(`${at} s: RSS ${(reading.rss / MiB).toFixed(1)} MiB, heap used ${(reading.heapUsed / MiB).toFixed(1)} of ${(reading.heapTotal / MiB).toFixed(1)} MiB`);
        Object.assign(figures, { [`t${at}.rss`]: reading.rss, [`t${at}.heapUsed`]: reading.heapUsed, [`t${at}.heapTotal`]: reading.heapTotal });
      }
      const { latency, errors } = await load;
      const afterMinute = samples.find((_, i) => (i + 1) * 30 >= 60) ?? samples[0]!;
      const growth = (samples.at(-1)!.rss - afterMinute.rss) / afterMinute.rss;
      figures.growthAfterFirstMinute = growth;
      notes.push(`RSS growth after the first minute: ${(growth * 100).toFixed(1)} % (goal: ≤ 5 %); p50 ${latency.p50Us.toFixed(0)} µs, p99 ${latency.p99Us.toFixed(0)} µs, errors ${errors}`);
    } finally {
      await target.close();
    }
    return { title: `Soak: 1,000 Gets/s for ${seconds} s on the sidecar as deployed (Node ${process.version})`, results: [], notes, figures };
  },
};
