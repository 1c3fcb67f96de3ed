/**
 * Token budgets: BuildContext of a 200-node session with 10 cross-session
 * references under a token budget, next to the same context under a
 * character budget that cuts about as much, in the same run — from L1
 * (counts cached on the nodes) and from L2 (counts carried in Redis, or not
 * yet counted) — and the cold cost of counting chat text, per KiB, for each
 * tokenizer, with the cost of loading it.
 */
import { Source } from '../src/client';
import { WorkerTokenCounter } from '../src/context/token-counter';
import { TOKENIZERS } from '../src/model/tokenizer';
import { chatSession, englishParagraphs } from './compression';
import { fixture, load, REFS, type Fixture } from './context';
import { startBenchSidecar, scaled } from './harness';
import { ratio, startBenchRedis, summarize, type Bench, type BenchReport, type LatencyStats } from './lib';

const NODES = 200;

/**
 * Times `calls` in turn, one call of each per round, so that both see the
 * same machine (it is shared and noisy); every other round in reverse
 * order, so that none always follows another (and its garbage).
 */
async function interleaved(calls: (() => Promise<unknown>)[], rounds: number, warmup: number): Promise<LatencyStats[]> {
  const samples = calls.map(() => new Float64Array(rounds));
  for (let round = -warmup; round < rounds; round++) {
    const order = [...calls.keys()];
    if (round % 2 !== 0) order.reverse();
    for (const index of order) {
      const call = calls[index]!;
      const start = process.hrtime.bigint();
      await call();
      if (round >= 0) samples[index]![round] = Number(process.hrtime.bigint() - start);
    }
  }
  return samples.map(summarize);
}

const ms = (us: number) => `${(us / 1000).toFixed(2)} ms`;
const kib = (nodes: readonly { content: string }[]) => nodes.reduce((sum, node) => sum + Buffer.byteLength(node.content), 0) / 1024;

export const tokens: Bench = {
  name: 'tokens',
  async run(): Promise<BenchReport> {
    const redis = await startBenchRedis();
    const env = { REDIS_URL: redis.url, CONTEXT_CACHE_NAMESPACE: 'bench-tok', CONTEXT_CACHE_L1_MAX_BYTES: '256MiB', CONTEXT_CACHE_TOKENIZER: 'o200k_base' };
    const a = await startBenchSidecar(env);
    const b = await startBenchSidecar(env);
    const paragraphs = englishParagraphs();
    const results: { name: string; latency: LatencyStats }[] = [];
    const notes: string[] = [];
    try {
      // Budgets that cut the same context about equally: half its characters, half its tokens.
      const hot = fixture('thot', NODES, paragraphs, 0);
      await load(a.client, undefined, hot);
      const sessionId = hot.main[0]!.sessionId;
      const whole = await a.client.buildContext({ sessionId, includeRefs: true, tokenizer: 'o200k_base' });
      if (whole.nodes.length !== NODES + REFS) throw new Error(`expected ${NODES + REFS} nodes, got ${whole.nodes.length}`);
      const maxChars = Math.floor(Number(whole.totalChars) / 2);
      const maxTokens = Math.floor(Number(whole.totalTokens) / 2);
      const byChars = { sessionId, includeRefs: true, maxChars };
      const byTokens = { sessionId, includeRefs: true, maxTokens };
      const [charCut, tokenCut] = [await a.client.buildContext(byChars), await a.client.buildContext(byTokens)];
      notes.push(
        `Session: ${NODES} nodes (${kib(hot.main).toFixed(0)} KiB of content, ${whole.totalTokens} tokens o200k_base) + ${REFS} referenced nodes. ` +
          `max_chars ${maxChars} keeps ${charCut.nodes.length} nodes; max_tokens ${maxTokens} keeps ${tokenCut.nodes.length}.`,
      );

      const rounds = scaled(3000);
      const [l1Chars, l1Tokens] = await interleaved([() => a.client.buildContext(byChars), () => a.client.buildContext(byTokens)], rounds, Math.min(200, rounds));
      results.push({ name: `L1, max_chars (baseline)`, latency: l1Chars! }, { name: `L1, max_tokens (counts cached)`, latency: l1Tokens! });

      // L2: sessions B has not read, one per call. Counted sessions were counted on A first, whose write-back put the counts in Redis.
      const coldCount = scaled(150, 30);
      const warmup = 10;
      const sets = { chars: [] as Fixture[], counted: [] as Fixture[], uncounted: [] as Fixture[] };
      let offset = 1;
      for (const key of Object.keys(sets) as (keyof typeof sets)[]) {
        for (let i = 0; i < coldCount + warmup; i++) {
          const f = fixture(`t${key}${i}`, NODES, paragraphs, offset++ * 53);
          await load(a.client, undefined, f);
          sets[key].push(f);
        }
      }
      for (const f of sets.counted) await a.client.buildContext({ sessionId: f.main[0]!.sessionId, includeRefs: true, maxTokens: 1 });
      const last = sets.counted.at(-1)!.main[0]!.sessionId;
      for (const deadline = Date.now() + 10_000; ; ) {
        const [stored] = await a.sidecar.redis!.sessions.getMany([last]);
        if (stored?.nodes.every((node) => node.tokens?.o200k_base !== undefined)) break;
        if (Date.now() > deadline) throw new Error('the token counts did not reach Redis within 10 s');
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const next = { chars: 0, counted: 0, uncounted: 0 };
      const fromL2 = (key: keyof typeof sets, budget: { maxChars?: number; maxTokens?: number }) => async () => {
        const built = await b.client.buildContext({ sessionId: sets[key][next[key]++]!.main[0]!.sessionId, includeRefs: true, ...budget });
        if (built.source !== Source.SOURCE_L2) throw new Error('expected the session from L2');
      };
      const textsBefore = b.sidecar.tokenCounter.counters.chars;
      const [l2Chars, l2Counted, l2Uncounted] = await interleaved([fromL2('chars', { maxChars }), fromL2('counted', { maxTokens }), fromL2('uncounted', { maxTokens })], coldCount, warmup);
      const countedOnB = b.sidecar.tokenCounter.counters.chars - textsBefore;
      results.push(
        { name: `L2, max_chars (baseline)`, latency: l2Chars! },
        { name: `L2, max_tokens, counts in Redis`, latency: l2Counted! },
        { name: `L2, max_tokens, not counted yet`, latency: l2Uncounted! },
      );

      // The cold cost of counting: a fresh counter (worker start and encoding load), then chat text it has never seen.
      const coldNotes: string[] = [];
      for (const tokenizer of TOKENIZERS) {
        const counter = new WorkerTokenCounter();
        try {
          let start = performance.now();
          await counter.count(tokenizer, ['warm up']);
          const loadMs = performance.now() - start;
          const texts = Array.from({ length: 20 }, (_, s) => chatSession(`cold${tokenizer}${s}`, NODES, paragraphs, 7919 + s * 211).map((node) => node.content)).flat();
          const bytes = texts.reduce((sum, text) => sum + Buffer.byteLength(text), 0);
          start = performance.now();
          const counts = await counter.count(tokenizer, texts);
          const seconds = (performance.now() - start) / 1000;
          const total = counts.reduce((sum, count) => sum + count, 0);
          coldNotes.push(`${tokenizer}: first use ${loadMs.toFixed(0)} ms (worker + encoding); ${((seconds * 1e6) / (bytes / 1024)).toFixed(0)} µs/KiB, ${Math.round(total / seconds).toLocaleString('en')} tokens/s over ${(bytes / 1024 / 1024).toFixed(1)} MiB of chat text`);
        } finally {
          await counter.close();
        }
      }

      notes.push(
        `L1: max_tokens / max_chars p50 ${ratio(l1Tokens!.p50Us, l1Chars!.p50Us)} (goal ≤ 1.10x), mean ${ratio(l1Tokens!.meanUs, l1Chars!.meanUs)}; p50 ${ms(l1Chars!.p50Us)} vs ${ms(l1Tokens!.p50Us)}.`,
        `L2: counts in Redis / max_chars p50 ${ratio(l2Counted!.p50Us, l2Chars!.p50Us)}; not counted yet / max_chars p50 ${ratio(l2Uncounted!.p50Us, l2Chars!.p50Us)}; ` +
          `counting in BuildContext: (not counted − counted) p50 / ${kib(hot.main).toFixed(0)} KiB = ${((l2Uncounted!.p50Us - l2Counted!.p50Us) / kib(hot.main)).toFixed(0)} µs/KiB. ` +
          `B counted ${(countedOnB / 1024 / 1024).toFixed(1)} Mi characters during the L2 runs: the uncounted sessions, and the referenced nodes (their sessions are too small to be written back).`,
        `Cold counting (WorkerTokenCounter, in a worker thread; the event loop is not blocked): ${coldNotes.join('; ')}.`,
        `Redis: ${redis.describe}.`,
      );
      return {
        title: `Token budgets: BuildContext ${NODES} nodes + ${REFS} refs, max_tokens vs max_chars (same run, interleaved), and the cold cost of counting`,
        results: results.map((r) => ({ ...r, throughput: { calls: 0, concurrency: 1, seconds: 0, callsPerSecond: Number.NaN } })),
        notes,
      };
    } finally {
      await a.close();
      await b.close();
      await redis.stop();
    }
  },
};

