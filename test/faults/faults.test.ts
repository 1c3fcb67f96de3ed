import { describe, expect, it } from 'vitest';
import { FaultWorkload, seeded } from './workload';

describe('coherence under faults (real Redis, real gRPC, three sidecars behind proxies)', () => {
  it('loses no answered write, serves nothing stale outside fault windows, converges, and keeps every call within its deadline', async () => {
    const seed = Number(process.env.FAULT_SEED ?? Date.now() % 100_000);
    const report = await new FaultWorkload({ seconds: 20, sidecars: 3, random: seeded(seed) }).run();
    const summary = `seed ${seed} (FAULT_SEED=${seed} repeats the draw of faults): ${JSON.stringify(report)}`;
    console.log(`faults: reads ${report.reads}, judged ${report.judged}, stale ${report.stale}, lost ${report.lost}, converged ${report.converged}/${report.checked}, unprovoked ${report.unprovoked}; ${report.recoveries.join(', ')} (ms to coherent); seed ${seed}${report.examples.length > 0 ? `; e.g. ${report.examples.slice(0, 3).join(" | ")}` : ""}`);
    expect(report.judged, summary).toBeGreaterThan(200);
    expect(report.writes.shared, summary).toBeGreaterThan(100);
    expect(Object.values(report.faults).reduce((a, b) => a + b, 0), summary).toBeGreaterThanOrEqual(3);
    expect(report.lost, summary).toBe(0);
    expect(report.stale, summary).toBe(0);
    expect(report.converged, summary).toBe(report.checked);
    expect(report.overdue, summary).toBe(0);
  }, 90_000);
});
