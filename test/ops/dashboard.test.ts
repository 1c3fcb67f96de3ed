/**
 * deploy/grafana/context-cache.json against what a sidecar really exports:
 * a sidecar on Redis is exercised (every tier, a lease, a lock, a Watch
 * stream), its /metrics rendered, and every query of the dashboard must name
 * metrics among those samples, with label names they carry and label values
 * they take. A dashboard query on a renamed metric shows "No data" in
 * Grafana without any error: this test is where it fails instead.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { sidecarsOnRedis } from '../helpers/fixtures';

const DASHBOARD = join(__dirname, '..', '..', 'deploy', 'grafana', 'context-cache.json');

interface Panel {
  type: string;
  title: string;
  targets?: { expr: string }[];
  panels?: Panel[];
}
interface Dashboard {
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query?: { query: string } | string }[] };
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
const panels = dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
const queries = [
  ...panels.flatMap((panel) => (panel.targets ?? []).map((target) => ({ where: `panel "${panel.title}"`, expr: target.expr }))),
  ...dashboard.templating.list.filter((v) => v.type === 'query').map((v) => ({ where: `variable $${v.name}`, expr: typeof v.query === 'string' ? v.query : v.query!.query })),
];

/** Metric name → label name → the values seen, from the Prometheus text format. */
type Exported = Map<string, Map<string, Set<string>>>;

function parseExposition(text: string): Exported {
  const exported: Exported = new Map();
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? /.exec(line);
    if (!match) continue;
    const labels = exported.get(match[1]!) ?? new Map<string, Set<string>>();
    exported.set(match[1]!, labels);
    for (const [, name, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      if (!labels.has(name!)) labels.set(name!, new Set());
      labels.get(name!)!.add(value!);
    }
  }
  return exported;
}

/** Labels Prometheus itself adds at scrape time, and histogram buckets' own. */
const SCRAPE_LABELS = new Set(['instance', 'job', 'le']);
const METRIC = /\b((?:context_cache|process|nodejs)_\w+)\b(\s*\{[^}]*\})?/g;
const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right']);

/** What is wrong with one query against the exported samples: unknown metrics, labels or label values. */
export function problemsOf(expr: string, exported: Exported): string[] {
  const problems: string[] = [];
  const named = [...expr.matchAll(METRIC)];
  if (named.length === 0) problems.push('names no metric of the sidecar');
  const labelsOfNamed = new Set<string>();
  for (const [, metric, selector] of named) {
    const labels = exported.get(metric!);
    if (labels === undefined) {
      problems.push(`${metric} is not exported`);
      continue;
    }
    for (const label of labels.keys()) labelsOfNamed.add(label);
    for (const [, label, op, value] of (selector ?? '').matchAll(/(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)) {
      if (SCRAPE_LABELS.has(label!)) continue;
      if (!labels.has(label!)) problems.push(`${metric} has no label ${label}`);
      else if (op === '=' && !labels.get(label!)!.has(value!)) problems.push(`${metric}{${label}="${value}"} never occurs (seen: ${[...labels.get(label!)!].join(', ')})`);
    }
  }
  for (const [, clause] of expr.matchAll(/\b(?:by|without)\s*\(([^)]*)\)/g)) {
    for (const label of clause!.split(',').map((l) => l.trim()).filter(Boolean)) {
      if (!SCRAPE_LABELS.has(label) && !KEYWORDS.has(label) && !labelsOfNamed.has(label)) problems.push(`grouped by ${label}, a label none of its metrics has`);
    }
  }
  return problems;
}

describe('the Grafana dashboard (deploy/grafana/context-cache.json)', () => {
  const fixture = sidecarsOnRedis(1);
  let exported: Exported;

  beforeAll(async () => {
    const { client, sidecar } = fixture.sidecars[0]!;
    await client.set({ key: 'k', value: Buffer.from('v') });
    await client.get({ key: 'k' });
    sidecar.l1.clear();
    await client.get({ key: 'k' });
    await client.get({ key: 'absent' });
    const lease = await client.get({ key: 'leased', leaseOnMiss: true });
    await client.set({ key: 'leased', value: Buffer.from('v'), leaseToken: lease.lease!.token });
    const lock = await client.acquireLock({ resource: 'r', ttl: { seconds: 5 } });
    await client.releaseLock({ resource: 'r', token: lock.token });
    const stream = client.watch({ keyPrefixes: ['k'] });
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();
    await client.set({ key: 'k', value: Buffer.from('v2') });
    await iterator.next();
    stream.cancel();
    exported = parseExposition(await (await fetch(`http://${sidecar.adminAddress}/metrics`)).text());
  });

  it('has queries to check, and the check rejects what the sidecar does not export', () => {
    expect(queries.length).toBeGreaterThan(30);
    expect(problemsOf('rate(context_cache_reads_total{result="hit"}[5m])', exported)).toEqual([]);
    expect(problemsOf('rate(context_cache_reeds_total[5m])', exported)).toEqual(['context_cache_reeds_total is not exported']);
    expect(problemsOf('context_cache_reads_total{outcome="hit"}', exported)).toEqual(['context_cache_reads_total has no label outcome']);
    expect(problemsOf('context_cache_reads_total{tier="l3"}', exported)).toHaveLength(1);
    expect(problemsOf('sum by (pod) (context_cache_l1_bytes)', exported)).toEqual(['grouped by pod, a label none of its metrics has']);
  });

  it('names only metrics, labels and label values the sidecar exports, in every query', () => {
    const problems = queries.flatMap(({ where, expr }) => problemsOf(expr, exported).map((problem) => `${where}: ${problem}`));
    expect(problems).toEqual([]);
  });

  it('shows hit ratio by tier, latency by method, Redis link and servers, slots, resyncs, Watch streams and drops, leases and locks', () => {
    const panelOf = (metric: string) => panels.filter((panel) => (panel.targets ?? []).some((target) => target.expr.includes(metric))).map((panel) => panel.title);
    for (const metric of [
      'context_cache_reads_total',
      'context_cache_rpc_duration_seconds_bucket',
      'context_cache_redis_up',
      'context_cache_redis_node_up',
      'context_cache_redis_slots_served',
      'context_cache_resyncs_total',
      'context_cache_watch_streams',
      'context_cache_watch_events_total',
      'context_cache_leases_total',
      'context_cache_locks_total',
    ]) {
      expect(panelOf(metric), metric).not.toEqual([]);
    }
    expect(panels.find((panel) => panel.title === 'Hit ratio by tier')?.targets?.[0]?.expr).toMatch(/by \(tier\)/);
    expect(panels.find((panel) => panel.title === 'Latency p99 by method')?.targets?.[0]?.expr).toMatch(/histogram_quantile\(0\.99, sum by \(le, method\)/);
  });

  it('every context_cache_ metric the sidecar exports appears on the dashboard', () => {
    const family = (name: string) => name.replace(/_(bucket|sum|count)$/, '');
    const shown = new Set(queries.flatMap(({ expr }) => [...expr.matchAll(METRIC)].map((m) => family(m[1]!))));
    const exportedFamilies = new Set([...exported.keys()].filter((name) => name.startsWith('context_cache_')).map(family));
    expect([...exportedFamilies].filter((name) => !shown.has(name)).sort()).toEqual([]);
  });
});
