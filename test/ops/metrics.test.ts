import { beforeAll, describe, expect, it } from 'vitest';
import { LinkState } from '../../src/client';
import { type TestRedis } from '../helpers/redis';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

/** Parses the Prometheus text format into `name{labels}` → value. */
function parseMetrics(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (!match) throw new Error(`unparseable metrics line: ${line}`);
    values.set(match[1]!, Number(match[2]));
  }
  return values;
}

async function scrape(sc: TestSidecar): Promise<Map<string, number>> {
  const response = await fetch(`http://${sc.sidecar.adminAddress}/metrics`);
  expect(response.status).toBe(200);
  expect(response.headers.get('content-type')).toMatch(/text\/plain/);
  return parseMetrics(await response.text());
}

describe('operations: stats, metrics and health over HTTP', () => {
  const fixture = sidecarsOnRedis(2, { CONTEXT_CACHE_NAMESPACE: 'ops', CONTEXT_CACHE_REDIS_RECONNECT_MAX: '200ms' });
  let redis: TestRedis;
  let a: TestSidecar;
  let b: TestSidecar;
  beforeAll(() => void ({ redis, sidecars: [a, b] } = fixture));

  it('stats and metrics count known operations', async () => {
    const before = await a.client.getStats();
    const metricsBefore = await scrape(a);
    await a.client.set({ key: 'm1', value: Buffer.from('x'.repeat(4096)) });
    await a.client.get({ key: 'm1' }); // L1 hit
    await a.client.get({ key: 'absent' }); // L1 miss, L2 miss
    await b.client.get({ key: 'm1' }); // on B: L1 miss, L2 hit
    const after = await a.client.getStats();
    expect(after.l1!.reads!.hits - before.l1!.reads!.hits).toBe(1);
    expect(after.l1!.reads!.misses - before.l1!.reads!.misses).toBe(1);
    expect(after.l2!.reads!.misses - before.l2!.reads!.misses).toBe(1);
    expect(after.pubsub!.messagesOut - before.pubsub!.messagesOut).toBe(1);
    expect(after.l2!.state).toBe(LinkState.LINK_STATE_CONNECTED);
    expect(after.l2!.latencyP50Us).toBeGreaterThan(0);
    expect(after.l2!.latencyP99Us).toBeGreaterThanOrEqual(after.l2!.latencyP50Us);
    expect(after.l2!.compressionRatio).toBeLessThan(0.5);
    expect(after.namespace).toBe('ops');
    expect(after.sidecarId).toBe(a.sidecar.sidecarId);
    expect(after.version).toMatch(/^\d+\.\d+\.\d+/);

    const m = await scrape(a);
    const delta = (name: string) => (m.get(name) ?? 0) - (metricsBefore.get(name) ?? 0);
    expect(delta('context_cache_reads_total{tier="l1",result="hit"}')).toBe(1);
    expect(delta('context_cache_reads_total{tier="l2",result="miss"}')).toBe(1);
    expect(delta('context_cache_pubsub_messages_total{direction="out"}')).toBe(1);
    expect(m.get('context_cache_rpc_duration_seconds_count{method="Set",code="0"}')).toBeGreaterThanOrEqual(1);
    expect(m.get('context_cache_rpc_duration_seconds_count{method="GetStats",code="0"}')).toBeGreaterThanOrEqual(1);
    expect(m.get('context_cache_redis_command_duration_seconds_count')).toBeGreaterThan(0);
    expect(m.get('context_cache_l1_entries')).toBeGreaterThanOrEqual(1);
    expect(m.get('context_cache_redis_up{link="commands"}')).toBe(1);
    expect(m.get('context_cache_redis_up{link="subscriber"}')).toBe(1);
    expect(m.get('context_cache_health_serving{service="overall"}')).toBe(1);
    expect(m.has('process_cpu_user_seconds_total')).toBe(true);
    expect(m.has('nodejs_heap_size_used_bytes')).toBe(true);

    const bMetrics = await scrape(b);
    expect(bMetrics.get('context_cache_pubsub_propagation_seconds_count')).toBeGreaterThanOrEqual(1);
    expect(bMetrics.get('context_cache_reads_total{tier="l2",result="hit"}')).toBeGreaterThanOrEqual(1);
  });

  it('an error status is labelled with its code', async () => {
    await a.client.get({ key: '' }).catch(() => undefined);
    const m = await scrape(a);
    expect(m.get('context_cache_rpc_duration_seconds_count{method="Get",code="3"}')).toBeGreaterThanOrEqual(1);
  });

  it('health and metrics follow Redis going down and coming back', async () => {
    const readyz = async () => {
      const response = await fetch(`http://${a.sidecar.adminAddress}/readyz`);
      return { status: response.status, body: (await response.json()) as { status: string; components: Record<string, string> } };
    };
    const healthy = await readyz();
    expect(healthy.status).toBe(200);
    expect(healthy.body.components['contextcache.v1.ContextCache/redis']).toBe('SERVING');

    await redis.kill();
    await waitFor(async () => (await scrape(a)).get('context_cache_redis_up{link="commands"}') === 0, 'redis_up to drop to 0');
    const degraded = await readyz();
    expect(degraded.status).toBe(200);
    expect(degraded.body.status).toBe('SERVING');
    expect(degraded.body.components['contextcache.v1.ContextCache/redis']).toBe('NOT_SERVING');
    expect((await a.client.getStats()).l2?.state).toBe(LinkState.LINK_STATE_DOWN);
    await a.client.set({ key: 'while-down', value: Buffer.from('x') });
    expect((await scrape(a)).get('context_cache_health_serving{service="contextcache.v1.ContextCache/redis"}')).toBe(0);

    await redis.restart();
    await waitFor(async () => (await scrape(a)).get('context_cache_redis_up{link="subscriber"}') === 1, 'the subscriber to come back');
    await waitFor(async () => (await readyz()).body.components['contextcache.v1.ContextCache/redis'] === 'SERVING', 'redis component SERVING');
    const m = await scrape(a);
    expect(m.get('context_cache_resyncs_total')).toBeGreaterThanOrEqual(1);
    expect((await a.client.getStats()).l2?.state).toBe(LinkState.LINK_STATE_CONNECTED);
  });

  it('answers 404 for unknown paths and 503 from /healthz while shutting down', async () => {
    const c = await startSidecar();
    const base = `http://${c.sidecar.adminAddress}`;
    expect((await fetch(`${base}/nope`)).status).toBe(404);
    expect((await fetch(`${base}/healthz`)).status).toBe(200);
    // Keep a call in flight so the drain waits, then look at /healthz meanwhile.
    const holder = await c.client.get({ key: 'busy', leaseOnMiss: true });
    expect(holder.lease).toBeDefined();
    const waiting = c.client.get({ key: 'busy', leaseOnMiss: true, leaseWait: { seconds: 1, nanos: 0 } }).catch(() => undefined);
    await waitFor(() => c.sidecar.tiers.leases.counters.waits > 0, 'the second call to wait');
    const closing = c.close();
    await waitFor(async () => (await fetch(`${base}/healthz`)).status === 503, '/healthz to answer 503 during the drain');
    await waiting;
    await closing;
  });

  it('the admin port can be turned off', async () => {
    const c = await startSidecar({ CONTEXT_CACHE_ADMIN_LISTEN: 'off' });
    expect(c.sidecar.adminAddress).toBeUndefined();
    await c.close();
  });
});
