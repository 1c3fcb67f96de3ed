/**
 * `npm run chaos -- --seconds N --sidecars K [--seed S] [--faults partition,kill,...]`:
 * the fault-injection workload of test/faults/workload.ts as a soak, with
 * its counts printed (and the fault log as it happens). Exits 1 when a
 * property was violated. Not part of `npm test` (which runs a short one).
 */
import { parseArgs } from 'node:util';
import { FAULTS, FaultWorkload, seeded, type FaultKind } from './workload';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '60' },
      sidecars: { type: 'string', default: '3' },
      seed: { type: 'string' },
      faults: { type: 'string' },
      quiet: { type: 'boolean', default: false },
    },
  });
  const seed = Number(values.seed ?? Date.now() % 100_000);
  const faults = values.faults === undefined ? FAULTS : (values.faults.split(',') as FaultKind[]);
  const unknown = faults.filter((fault) => !FAULTS.includes(fault));
  if (unknown.length > 0) throw new Error(`unknown faults ${unknown.join(', ')}; known: ${FAULTS.join(', ')}`);
  console.log(`chaos: ${values.seconds} s, ${values.sidecars} sidecars, faults ${faults.join(', ')}, seed ${seed}`);
  const report = await new FaultWorkload({
    seconds: Number(values.seconds),
    sidecars: Number(values.sidecars),
    faults,
    random: seeded(seed),
    log: values.quiet ? undefined : (line) => console.log(`  ${new Date().toISOString().slice(11, 23)} ${line}`),
  }).run();
  const sorted = [...report.recoveryMs].sort((a, b) => a - b);
  const percentile = (p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
  console.log(
    [
      `reads ${report.reads}, judged ${report.judged}, stale ${report.stale}, lost ${report.lost}, converged ${report.converged}/${report.checked}, overdue calls ${report.overdue}, sidecars out of coherence unprovoked ${report.unprovoked} ${JSON.stringify(report.unprovokedModes)}`,
      `writes: ${report.writes.shared} shared, ${report.writes.local} local, ${report.writes.failed} failed; fills ${report.fills}; invalidations replayed ${report.replayed}`,
      `faults: ${Object.entries(report.faults).map(([kind, count]) => `${kind} ${count}`).join(', ')}`,
      `Redis reachable → every sidecar coherent: p50 ${percentile(50)} ms, p99 ${percentile(99)} ms, max ${sorted.at(-1) ?? 0} ms over ${sorted.length} faults`,
      ...report.examples.map((line) => `  ${line}`),
    ].join('\n'),
  );
  const ok = report.stale === 0 && report.lost === 0 && report.converged === report.checked && report.overdue === 0;
  console.log(ok ? 'chaos: every property held' : 'chaos: PROPERTY VIOLATED');
  process.exitCode = ok ? 0 : 1;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 2;
});
