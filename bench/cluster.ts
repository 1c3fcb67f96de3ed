/**
 * cluster: the shared tier on a Redis Cluster (3 primaries, 3 replicas,
 * started here) next to one Redis server, in the same run, through two
 * sidecars each: a Get answered from L2, the propagation of a Set on A to a
 * Watch event on B, and BuildContext of a 200-node session from L2. Then
 * the Cluster's failover: a primary killed with SIGKILL, and the time to
 * the first write answered SHARED on its slots, and until both sidecars are
 * coherent again.
 */
import { Role, Source, WriteScope, type ContextCacheClient } from '../src/client';
import { CLUSTER_BUCKETS, KeySpace } from '../src/redis/keys';
import { startCluster } from '../test/helpers/topology';
import { startBenchSidecar, scaled, type BenchSidecar } from './harness';
import { ratio, startBenchRedis, summarize, type Bench, type BenchReport, type LatencyStats } from './lib';

const VALUE = Buffer.alloc(1024, 'x');

interface Figures {
  l2Get: LatencyStats;
  propagation: LatencyStats;
  buildFromL2: LatencyStats;
}

async function timed(count: number, call: (i: number) => Promise<unknown>): Promise<LatencyStats> {
  const samples = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    const started = process.hrtime.bigint();
    await call(i);
    samples[i] = Number(process.hrtime.bigint() - started);
  }
  return summarize(samples);
}

async function measure(a: BenchSidecar, b: BenchSidecar, tag: string): Promise<Figures> {
  const n = scaled(1000);
  // L2 hits: each key written through A, read once through B (whose L1 has never seen it).
  for (let i = 0; i < n; i++) await a.client.set({ key: `${tag}-get-${i}`, value: VALUE });
  const l2Get = await timed(n, async (i) => {
    const read = await b.client.get({ key: `${tag}-get-${i}` });
    if (read.info?.source !== Source.SOURCE_L2) throw new Error(`expected an L2 hit, got ${read.info?.source}`);
  });
  // Set on A → the Watch event on B.
  const watch = b.client.watch({ keyPrefixes: [`${tag}-p-`] });
  const events = watch[Symbol.asyncIterator]();
  await events.next(); // started
  const propagation = await timed(scaled(500), async (i) => {
    const key = `${tag}-p-${i}`;
    const write = a.client.set({ key, value: VALUE });
    for (;;) {
      const { value, done } = await events.next();
      if (done) throw new Error('watch ended');
      if (value.event?.$case === 'keyInvalidated' && value.event.value.key === key) break;
    }
    await write;
  });
  watch.call.cancel();
  // BuildContext of 200 nodes from L2: each session put through A, built once through B.
  const sessions = scaled(200, 20);
  for (let s = 0; s < sessions; s++) {
    const sid = `${tag}-s-${s}`;
    const nodes = Array.from({ length: 200 }, (_, i) => ({ id: `${sid}/n${i}`, sessionId: sid, parentId: i > 0 ? `${sid}/n${i - 1}` : '', role: i % 2 ? Role.ROLE_ASSISTANT : Role.ROLE_USER, content: 'x'.repeat(300) }));
    await a.client.putSessionNodes({ sessionId: sid, nodes });
  }
  const buildFromL2 = await timed(sessions, async (s) => {
    const built = await b.client.buildContext({ sessionId: `${tag}-s-${s}` });
    if (built.nodes.length !== 200) throw new Error(`built ${built.nodes.length} nodes`);
  });
  return { l2Get, propagation, buildFromL2 };
}

async function coherent(...sidecars: BenchSidecar[]): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!sidecars.every((s) => s.sidecar.tiers.mode === 'coherent' && s.sidecar.tiers.pending.empty)) {
    if (Date.now() > deadline) throw new Error('the sidecars did not become coherent within 60 s');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Kills the primary of one key's slot under a write loop; times the first SHARED write and coherence of both sidecars. */
async function failover(a: BenchSidecar, b: BenchSidecar, killMaster: () => Promise<unknown>, key: string): Promise<{ firstSharedMs: number; coherentMs: number }> {
  const killedAt = Date.now();
  const kill = killMaster();
  let firstSharedMs = Number.NaN;
  const deadline = Date.now() + 60_000;
  await new Promise((resolve) => setTimeout(resolve, 50));
  while (Date.now() < deadline) {
    const answer = await a.client.set({ key, value: VALUE }, { deadline: 2000 }).catch(() => undefined);
    if (answer?.scope === WriteScope.WRITE_SCOPE_SHARED && Date.now() - killedAt > 100) {
      firstSharedMs = Date.now() - killedAt;
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  await kill;
  await coherent(a, b);
  return { firstSharedMs, coherentMs: Date.now() - killedAt };
}

const row = (name: string, stats: LatencyStats) => ({ name, latency: stats, throughput: { calls: 0, concurrency: 1, seconds: 0, callsPerSecond: Number.NaN } });

export const cluster: Bench = {
  name: 'cluster',
  async run(): Promise<BenchReport> {
    const redis = await startBenchRedis();
    const topology = await startCluster();
    const open: BenchSidecar[] = [];
    try {
      const single = await Promise.all([startBenchSidecar({ REDIS_URL: redis.url }), startBenchSidecar({ REDIS_URL: redis.url })]);
      open.push(...single);
      const onSingle = await measure(single[0]!, single[1]!, 'single');
      const env = { REDIS_CLUSTER_NODES: topology.seedList, CONTEXT_CACHE_PUBSUB_HEARTBEAT: '500ms', CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: '1s' };
      const clustered = await Promise.all([startBenchSidecar(env), startBenchSidecar(env)]);
      open.push(...clustered);
      const onCluster = await measure(clustered[0]!, clustered[1]!, 'cluster');
      const key = 'failover-probe';
      await clustered[0]!.client.set({ key, value: VALUE });
      const victim = await topology.masterOf(new KeySpace(clustered[0]!.sidecar.config.namespace, CLUSTER_BUCKETS).entry(key));
      const recovery = await failover(clustered[0]!, clustered[1]!, () => topology.killMaster(victim), key);
      return {
        title: `Redis Cluster (3+3) next to one Redis server, two in-process sidecars each (Node ${process.version})`,
        results: [
          row('L2-hit Get 1 KiB, single', onSingle.l2Get),
          row('L2-hit Get 1 KiB, cluster', onCluster.l2Get),
          row('Set A → Watch B, single', onSingle.propagation),
          row('Set A → Watch B, cluster', onCluster.propagation),
          row('BuildContext 200 nodes from L2, single', onSingle.buildFromL2),
          row('BuildContext 200 nodes from L2, cluster', onCluster.buildFromL2),
        ],
        notes: [
          `cluster / single p50: L2-hit Get ${ratio(onCluster.l2Get.p50Us, onSingle.l2Get.p50Us)}, propagation ${ratio(onCluster.propagation.p50Us, onSingle.propagation.p50Us)}, BuildContext from L2 ${ratio(onCluster.buildFromL2.p50Us, onSingle.buildFromL2.p50Us)}`,
          `failover (SIGKILL of the primary of a written key's slot): first write answered SHARED after ${recovery.firstSharedMs} ms; both sidecars coherent after ${recovery.coherentMs} ms`,
        ],
        figures: {
          l2GetP50Single: onSingle.l2Get.p50Us,
          l2GetP50Cluster: onCluster.l2Get.p50Us,
          propagationP50Single: onSingle.propagation.p50Us,
          propagationP50Cluster: onCluster.propagation.p50Us,
          propagationP99Single: onSingle.propagation.p99Us,
          propagationP99Cluster: onCluster.propagation.p99Us,
          buildP50Single: onSingle.buildFromL2.p50Us,
          buildP50Cluster: onCluster.buildFromL2.p50Us,
          failoverFirstSharedMs: recovery.firstSharedMs,
          failoverCoherentMs: recovery.coherentMs,
        },
      };
    } finally {
      await Promise.all(open.map((s) => s.close()));
      await topology.stop();
      await redis.stop();
    }
  },
};
