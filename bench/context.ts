/**
 * BuildContext for a 200-node session with 10 cross-session references, from
 * L1 and from L2, next to the same context assembled directly against Redis
 * by the obvious client-side approach (sessions as Redis lists of JSON
 * nodes, a hash for the short-ID index), in the same run; then 2,000 nodes to
 * show how the cost grows.
 */
import Redis from 'ioredis';
import { ContextCacheClient, Source, type DeepPartial, type Node } from '../src/client';
import type { NodeRecord } from '../src/model/node';
import { chatSession, englishParagraphs } from './compression';
import { deployedClient, startDeployedSidecar, TRANSPORTS, type DeployedSidecar } from './deployed';
import { startBenchSidecar, scaled } from './harness';
import { latencyRow, measureLatency, median, medianResult, ratio, rounds, runCleanup, startBenchRedis, type Bench, type BenchReport, type LatencyStats } from './lib';

export const REFS = 10;

export function toProto(node: NodeRecord): DeepPartial<Node> {
  return { ...node, createdAt: new Date(node.createdAt) };
}

export interface Fixture {
  main: NodeRecord[];
  refSessions: NodeRecord[][];
}

/** A main session whose last nodes reference one node in each of REFS other sessions. */
export function fixture(name: string, nodes: number, paragraphs: string[], offset: number): Fixture {
  const refSessions = Array.from({ length: REFS }, (_, r) => chatSession(`${name}r${r}`, 20, paragraphs, offset + r * 31));
  const main = chatSession(name, nodes, paragraphs, offset);
  refSessions.forEach((session, r) => {
    const target = session[r % session.length]!;
    const citing = main[main.length - 1 - r * 3]!;
    citing.refs = [target.shortId];
  });
  for (const node of main) if (node.refs.some((ref) => ref.startsWith('ref'))) node.refs = [];
  return { main, refSessions };
}

/** Stores the fixture's sessions through the sidecar, and (for the direct baseline) as Redis lists when `direct` is given. */
export async function load(client: ContextCacheClient, direct: Redis | undefined, f: Fixture): Promise<void> {
  for (const session of [f.main, ...f.refSessions]) {
    const sessionId = session[0]!.sessionId;
    await client.putSessionNodes({ sessionId, nodes: session.map(toProto) });
    if (direct === undefined) continue;
    const pipeline = direct.pipeline();
    pipeline.del(`direct:s:${sessionId}`);
    pipeline.rpush(`direct:s:${sessionId}`, ...session.map((node) => JSON.stringify(node)));
    for (const node of session) pipeline.hset('direct:shortids', node.shortId, sessionId);
    await pipeline.exec();
  }
}

/**
 * The obvious client-side assembly: read the session list, parse it, collect
 * the refs, look their sessions up in the short-ID hash, read those sessions,
 * pick the nodes, and put references first.
 */
async function assembleDirectly(redis: Redis, sessionId: string): Promise<number> {
  const nodes = (await redis.lrange(`direct:s:${sessionId}`, 0, -1)).map((json) => JSON.parse(json) as NodeRecord);
  const own = new Set(nodes.map((node) => node.shortId));
  const refs = [...new Set(nodes.flatMap((node) => node.refs))].filter((ref) => !own.has(ref));
  if (refs.length === 0) return nodes.length;
  const owners = await redis.hmget('direct:shortids', ...refs);
  const sessions = [...new Set(owners.filter((owner): owner is string => owner !== null))];
  const pipeline = redis.pipeline();
  for (const owner of sessions) pipeline.lrange(`direct:s:${owner}`, 0, -1);
  const lists = (await pipeline.exec()) ?? [];
  const wanted = new Set(refs);
  const referenced: NodeRecord[] = [];
  for (const [, list] of lists) {
    for (const json of list as string[]) {
      const node = JSON.parse(json) as NodeRecord;
      if (wanted.has(node.shortId)) referenced.push(node);
    }
  }
  referenced.sort((a, b) => a.createdAt - b.createdAt);
  return referenced.length + nodes.length;
}

/** The 200- and 2,000-node measurements through sidecars `a` (writer, hot) and `b` (cold reader); `tag` names the figures. */
async function measureSizes(a: ContextCacheClient, b: ContextCacheClient, direct: Redis, paragraphs: string[], tag: string, label: string) {
  const results: { name: string; latency: LatencyStats }[] = [];
  const notes: string[] = [];
  const figures: Record<string, number> = {};
  for (const [nodes, coldSessions, iterations] of [
    [200, scaled(300, 40), scaled(3000)],
    [2000, scaled(30, 10), scaled(300)],
  ] as const) {
    // Warm: one session, read on A again and again (L1 after the first call).
    const hot = fixture(`hot${nodes}`, nodes, paragraphs, 0);
    await load(a, direct, hot);
    const request = { sessionId: hot.main[0]!.sessionId, includeRefs: true };
    const check = await a.buildContext(request);
    if (check.nodes.length !== nodes + REFS) throw new Error(`expected ${nodes + REFS} nodes, got ${check.nodes.length}`);
    await measureLatency(() => a.buildContext(request), { warmup: Math.min(200, iterations), iterations: 0 });

    // Cold: many sessions B has never seen, one BuildContext each (main and referenced sessions from Redis).
    const warmup = 10;
    const cold = Array.from({ length: coldSessions + warmup }, (_, i) => fixture(`cold${nodes}x${i}`, nodes, paragraphs, (i + 1) * 53));
    for (const f of cold) await load(a, direct, f);
    let next = 0;
    const l2Call = async () => {
      const built = await b.buildContext({ sessionId: cold[next++]!.main[0]!.sessionId, includeRefs: true });
      if (built.source !== Source.SOURCE_L2 || built.nodes.length !== nodes + REFS) throw new Error('expected a full context from L2');
    };
    await measureLatency(l2Call, { warmup, iterations: 0 });
    // The usual case of a sidecar that has run a while: the referenced sessions are hot in L1,
    // the conversation itself comes from Redis. Each call a session B has not read, citing `hot`'s refs.
    const citing = Array.from({ length: coldSessions + warmup }, (_, i) => {
      const main = chatSession(`cite${nodes}x${i}`, nodes, paragraphs, (i + 7) * 41);
      hot.refSessions.forEach((session, r) => (main[main.length - 1 - r * 3]!.refs = [session[r % session.length]!.shortId]));
      return main;
    });
    for (const main of citing) await a.putSessionNodes({ sessionId: main[0]!.sessionId, nodes: main.map(toProto) });
    await b.buildContext(request); // B now holds hot's referenced sessions in L1
    let nextCiting = 0;
    const l2WarmCall = async () => {
      const built = await b.buildContext({ sessionId: citing[nextCiting++]![0]!.sessionId, includeRefs: true });
      if (built.source !== Source.SOURCE_L2 || built.nodes.length !== nodes + REFS) throw new Error('expected a full context, the session from L2');
    };
    await measureLatency(l2WarmCall, { warmup, iterations: 0 });
    await measureLatency(() => assembleDirectly(direct, hot.main[0]!.sessionId), { warmup: Math.min(200, iterations), iterations: 0 });
    // Rounds that alternate the targets (L1, L2, L2 with warm references, direct), so that a burst of load from elsewhere hits every side of a ratio.
    const perRound = (count: number) => Math.max(1, Math.floor(count / rounds()));
    const runs: { l1: LatencyStats; l2: LatencyStats; l2Warm: LatencyStats; direct: LatencyStats }[] = [];
    for (let round = 0; round < rounds(); round++) {
      runs.push({
        l1: await measureLatency(() => a.buildContext(request), { warmup: 0, iterations: perRound(iterations) }),
        l2: await measureLatency(l2Call, { warmup: 0, iterations: perRound(coldSessions) }),
        l2Warm: await measureLatency(l2WarmCall, { warmup: 0, iterations: perRound(coldSessions) }),
        direct: await measureLatency(() => assembleDirectly(direct, hot.main[0]!.sessionId), { warmup: 0, iterations: perRound(iterations) }),
      });
    }
    const medianOf = (pick: (run: (typeof runs)[number]) => LatencyStats) => medianResult('', runs.map((run) => latencyRow('', pick(run)))).latency;
    const [l1, l2, l2Warm, directStats] = [medianOf((run) => run.l1), medianOf((run) => run.l2), medianOf((run) => run.l2Warm), medianOf((run) => run.direct)];
    const l2OverDirectP50 = median(runs.map((run) => run.l2.p50Us / run.direct.p50Us));
    results.push(
      { name: `${label}BuildContext ${nodes} nodes + ${REFS} refs, L1`, latency: l1 },
      { name: `${label}BuildContext ${nodes} nodes + ${REFS} refs, L2`, latency: l2 },
      { name: `${label}  same, referenced sessions in L1`, latency: l2Warm },
      { name: `${label}direct Redis assembly, ${nodes} nodes`, latency: directStats },
    );
    const measuredFigures = { l1P50Us: l1.p50Us, l1P99Us: l1.p99Us, l2P50Us: l2.p50Us, l2P99Us: l2.p99Us, l2WarmP50Us: l2Warm.p50Us, directP50Us: directStats.p50Us, l2OverDirectP50 };
    for (const [name, value] of Object.entries(measuredFigures)) figures[`${tag}.${nodes}.${name}`] = value;
    notes.push(
      `${label}${nodes} nodes: L1 p50 ${(l1.p50Us / 1000).toFixed(2)} ms / p99 ${(l1.p99Us / 1000).toFixed(2)} ms; ` +
        `L2 p50 ${(l2.p50Us / 1000).toFixed(2)} ms / p99 ${(l2.p99Us / 1000).toFixed(2)} ms (refs in L1: p50 ${(l2Warm.p50Us / 1000).toFixed(2)} ms); ` +
        `direct p50 ${(directStats.p50Us / 1000).toFixed(2)} ms. L1/direct p50 ${ratio(l1.p50Us, directStats.p50Us)}, L2/direct p50 ${l2OverDirectP50.toFixed(2)}x (median of the rounds' ratios)`,
    );
  }
  return { results, notes, figures };
}

export const context: Bench = {
  name: 'context',
  async run(): Promise<BenchReport> {
    const redis = await startBenchRedis();
    const env = { REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'bench-ctx', CONTEXT_CACHE_L1_MAX_BYTES: '64MiB' };
    const a = await startBenchSidecar(env);
    const b = await startBenchSidecar(env);
    const direct = new Redis(redis.url, { lazyConnect: true });
    await direct.connect();
    const paragraphs = englishParagraphs();
    const cleanup: (() => Promise<void> | void)[] = [];
    try {
      const measured = [await measureSizes(a.client, b.client, direct, paragraphs, 'inProcess', '')];
      // As deployed: two sidecars (dist/main.js) in processes of their own, per transport; the direct assembly stays in this process.
      for (const transport of TRANSPORTS) {
        const deployed: DeployedSidecar[] = [];
        for (let i = 0; i < 2; i++) {
          const sidecar = await startDeployedSidecar({ ...env, CONTEXT_CACHE_NAMESPACE: `bench-ctx-${transport}` }, { transport });
          cleanup.push(() => sidecar.close());
          deployed.push(sidecar);
        }
        const { ContextCacheClient: DeployedClient } = deployedClient();
        const [da, db] = deployed.map((sidecar) => new DeployedClient(sidecar.address));
        cleanup.push(() => {
          da!.close();
          db!.close();
        });
        measured.push(await measureSizes(da!, db!, direct, paragraphs, transport, `as deployed (${transport}): `));
      }
      const results = measured.flatMap((m) => m.results);
      const notes = measured.flatMap((m) => m.notes);
      const figures: Record<string, number> = Object.assign({}, ...measured.map((m) => m.figures));
      for (const tag of ['inProcess', ...TRANSPORTS]) {
        figures[`${tag}.growth2000over200P50`] = figures[`${tag}.2000.l1P50Us`]! / figures[`${tag}.200.l1P50Us`]!;
        figures[`${tag}.growth2000over200P99`] = figures[`${tag}.2000.l1P99Us`]! / figures[`${tag}.200.l1P99Us`]!;
        notes.push(
          `${tag}: goals — L2 p50 / direct ${figures[`${tag}.200.l2OverDirectP50`]!.toFixed(2)}x [<= 1.5x]; L1 p99 ${(figures[`${tag}.200.l1P99Us`]! / 1000).toFixed(2)} ms [<= 3 ms]; ` +
            `2,000 / 200 nodes from L1: p50 ${figures[`${tag}.growth2000over200P50`]!.toFixed(1)}x, p99 ${figures[`${tag}.growth2000over200P99`]!.toFixed(1)}x [<= 10x]`,
        );
      }
      notes.push(
        'The sidecar figures include the gRPC round trip and decoding every node on the client; the direct figure is ioredis in this process, without gRPC.',
        `Each size: ${rounds()} rounds (BENCH_ROUNDS) alternating L1, L2, L2 with warm references and the direct assembly; rows are the medians of the rounds' figures.`,
        `Redis: ${redis.describe}.`,
      );
      return {
        title: 'BuildContext: a session plus 10 cross-session references, sidecar (L1, L2) vs direct Redis assembly',
        results: results.map((r) => ({ ...r, throughput: { calls: 0, concurrency: 1, seconds: 0, callsPerSecond: Number.NaN } })),
        notes,
        figures,
      };
    } finally {
      await runCleanup(cleanup);
      direct.disconnect();
      await a.close();
      await b.close();
      await redis.stop();
    }
  },
};
