/**
 * `npm run bench:table`: rewrites the benchmark table of README.md (between
 * its bench-table markers) from bench-results/*.json, the last run of each
 * sidecar benchmark as deployed. Figures are never typed by hand.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { BenchReport, BenchResult } from './lib';

const ROOT = join(__dirname, '..');
const START = '<!-- bench-table:start (npm run bench:table) -->';
const END = '<!-- bench-table:end -->';

type Record_ = BenchReport & { at: string; node: string; host: { cpus: number; model?: string } };

function load(name: string): Record_ | undefined {
  const path = join(ROOT, 'bench-results', `${name}.json`);
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as Record_) : undefined;
}

const us = (value: number) => (value >= 1000 ? `${(value / 1000).toFixed(2)} ms` : `${value.toFixed(0)} µs`);
const x = (value: number) => `${value.toFixed(2)}x`;
const perSecond = (value: number) => `${Math.round(value).toLocaleString('en-US')}/s`;

function row(report: Record_, name: string): BenchResult {
  const found = report.results.find((r) => r.name === name);
  if (found === undefined) throw new Error(`bench-results has no row "${name}" in "${report.title}"; rerun npm run bench`);
  return found;
}

function lines(): string[] {
  const out = ['| What (as deployed: sidecar in its own process) | Sidecar | Baseline in the same run | Goal |', '|---|---|---|---|'];
  const dates = new Set<string>();
  const l1 = load('l1-get');
  if (l1) {
    dates.add(l1.at.slice(0, 10));
    for (const t of ['tcp', 'unix']) {
      const f = l1.figures!;
      out.push(
        `| Get 1 KiB from L1 (${t}) | p50 ${us(f[`${t}.sidecarP50Us`]!)}, ${perSecond(f[`${t}.sidecarCallsPerSecond`]!)} at 64 in flight | cross-process grpc-js echo p50 ${us(f[`${t}.echoP50Us`]!)} (${x(f[`${t}.p50Ratio`]!)}), ${perSecond(f[`${t}.echoCallsPerSecond`]!)} (${x(f[`${t}.throughputRatio`]!)}) | p50 ≤ 1.10x, throughput ≥ 0.90x |`,
      );
    }
  }
  const dist = load('distributed');
  if (dist) {
    dates.add(dist.at.slice(0, 10));
    for (const t of ['tcp', 'unix']) {
      const l2 = row(dist, `as deployed (${t}): Get, L2 hit`);
      const direct = row(dist, `as deployed (${t}): direct ioredis GET`);
      const propagation = row(dist, `as deployed (${t}): propagation A→B`);
      out.push(`| Get 1 KiB, L2 hit (${t}) | p50 ${us(l2.latency.p50Us)} | ioredis GET p50 ${us(direct.latency.p50Us)} (${x(l2.latency.p50Us / direct.latency.p50Us)}) | |`);
      out.push(`| Set on A → Watch event on B (${t}) | p50 ${us(propagation.latency.p50Us)}, p99 ${us(propagation.latency.p99Us)} | | |`);
    }
  }
  const ctx = load('context');
  if (ctx) {
    dates.add(ctx.at.slice(0, 10));
    const f = ctx.figures!;
    for (const t of ['tcp', 'unix']) {
      for (const nodes of [200, 2000]) {
        const goal = nodes === 200 ? 'L2 ≤ 1.5x direct; L1 p99 ≤ 3 ms' : `L1 ≤ 10x the 200-node cost (now p50 ${x(f[`${t}.growth2000over200P50`]!)}, p99 ${x(f[`${t}.growth2000over200P99`]!)})`;
        out.push(
          `| BuildContext ${nodes} nodes + 10 refs (${t}) | L1 p50 ${us(f[`${t}.${nodes}.l1P50Us`]!)}, p99 ${us(f[`${t}.${nodes}.l1P99Us`]!)}; L2 p50 ${us(f[`${t}.${nodes}.l2P50Us`]!)} (${us(f[`${t}.${nodes}.l2WarmP50Us`]!)} with the referenced sessions in L1) | direct Redis assembly p50 ${us(f[`${t}.${nodes}.directP50Us`]!)} (L2 ${x(f[`${t}.${nodes}.l2OverDirectP50`]!)}) | ${goal} |`,
        );
      }
    }
  }
  const locks = load('locks');
  if (locks) {
    dates.add(locks.at.slice(0, 10));
    const f = locks.figures!;
    const fenced = row(locks, 'Mutex + fencing counter (ioredis)');
    const direct = row(locks, 'contended: 8 workers, Mutex.acquire (ioredis)');
    for (const t of ['tcp', 'unix']) {
      const uncontended = row(locks, `as deployed (${t}): AcquireLock+ReleaseLock`);
      out.push(`| AcquireLock + ReleaseLock, uncontended (${t}) | p50 ${us(uncontended.latency.p50Us)} | Mutex + fencing on ioredis p50 ${us(fenced.latency.p50Us)} (${x(f[`${t}.uncontendedVsFencedP50`]!)}) | ≤ 2x |`);
      out.push(
        `| One lock, 8 workers on 2 sidecars (${t}) | ${perSecond(f[`${t}.contendedLocksPerSecond`]!)}; waits p99 ${us(f[`${t}.waitP99Us`]!)}, longest ${x(f[`${t}.waitMaxOverMedian`]!)} the median | Mutex.acquire on ioredis ${perSecond(direct.throughput.callsPerSecond)} (${x(f[`${t}.contendedThroughputRatio`]!)}) | ≥ 0.6x; p99 ≤ 50 ms; longest ≤ 10x |`,
      );
    }
    out.push(`| 1,000 callers waiting for one lease's fill | ${Math.round(f['leases.thousandWaitersCommandsPerSecond']!)} Redis commands/s | 1 caller waiting: ${Math.round(f['leases.oneWaiterCommandsPerSecond']!)}/s (${x(f['leases.ratio']!)}) | ≤ 2x |`);
  }
  const tracing = load('tracing');
  if (tracing) {
    dates.add(tracing.at.slice(0, 10));
    const f = tracing.figures!;
    const cpu = (name: string) => f[`${name} CPU µs per Get`]!;
    const off = 'tracing off (default)';
    const baseline = Object.keys(f).find((key) => key.startsWith('baseline build') && key.endsWith('CPU µs per Get'));
    out.push(
      `| Get 1 KiB from L1, tracing (sidecar CPU per Get) | off ${cpu(off).toFixed(0)} µs; SDK loaded, nothing sampled ${x(cpu('SDK loaded, nothing sampled') / cpu(off))}; every call traced and exported ${x(cpu('every call traced, exported') / cpu(off))}, ${x(f['every call traced, exported calls/s']! / f[`${off} calls/s`]!)} the calls/s | ${baseline === undefined ? '' : `the build before, off: ${x(f[baseline]! / cpu(off))}`} | off: no difference to the build before |`,
    );
  }
  const host = (l1 ?? ctx ?? locks ?? dist ?? tracing)!;
  return [
    `From \`bench-results/*.json\` (${[...dates].sort().join(', ')}; ${host.node}, ${host.host.cpus} cores${host.host.model ? `, ${host.host.model}` : ''}; the machine is shared, figures are medians where the benchmark interleaves rounds, treat p99s with care):`,
    '',
    ...out,
  ];
}

function main(): void {
  const path = join(ROOT, 'README.md');
  const readme = readFileSync(path, 'utf8');
  const start = readme.indexOf(START);
  const end = readme.indexOf(END);
  if (start < 0 || end < start) throw new Error(`README.md has no ${START} … ${END} block`);
  writeFileSync(path, `${readme.slice(0, start + START.length)}\n${lines().join('\n')}\n${readme.slice(end)}`);
  console.log('README.md benchmark table rewritten from bench-results/');
}

main();
