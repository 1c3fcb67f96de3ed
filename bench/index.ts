/**
 * `npm run bench`: runs every benchmark module in turn and prints its
 * report. Not part of `npm test`. Pass module names to run only those:
 * `npm run bench -- l1-get`. BENCH_SCALE=0.1 shrinks every run.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { chatApp } from './chat-app';
import { cluster } from './cluster';
import { clusterBus } from './cluster-bus';
import { compression } from './compression';
import { context } from './context';
import { distributed } from './distributed';
import { l1Get } from './l1-get';
import { l1Memory } from './l1-memory';
import { formatReport, type Bench, type BenchReport } from './lib';
import { locks } from './locks';
import { nearCache } from './near-cache';
import { steady, steadySoak } from './steady';
import { tokens } from './tokens';
import { tracing } from './tracing';
import { watchMemory } from './watch-memory';

const RESULTS = join(__dirname, '..', 'bench-results');

const BENCHES: Bench[] = [l1Get, distributed, nearCache, cluster, clusterBus, compression, context, tokens, tracing, locks, l1Memory, watchMemory, steady, chatApp];
/** Run only when named: `npm run bench -- steady-soak` (five minutes). */
const ON_REQUEST: Bench[] = [steadySoak];

/** bench-results/<name>.json: the report as data, for comparing runs and machines. */
function writeResult(name: string, report: BenchReport, elapsedMs: number): void {
  mkdirSync(RESULTS, { recursive: true });
  const record = { name, at: new Date().toISOString(), node: process.version, host: { cpus: cpus().length, model: cpus()[0]?.model }, elapsedMs, ...report };
  writeFileSync(join(RESULTS, `${name}.json`), `${JSON.stringify(record, null, 2)}\n`);
}

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  const selected = wanted.length === 0 ? BENCHES : [...BENCHES, ...ON_REQUEST].filter((bench) => wanted.includes(bench.name));
  if (selected.length === 0) {
    console.error(`no benchmark named ${wanted.join(', ')}; known: ${[...BENCHES, ...ON_REQUEST].map((bench) => bench.name).join(', ')}`);
    process.exitCode = 2;
    return;
  }
  for (const bench of selected) {
    const started = Date.now();
    const report = await bench.run();
    console.log(formatReport(report));
    writeResult(bench.name, report, Date.now() - started);
    console.log(`(${bench.name} took ${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
