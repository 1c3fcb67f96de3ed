/**
 * The seed's headline, end to end: the chat app of examples/chat-app on
 * PostgreSQL, its prompt contexts built straight from PostgreSQL (direct)
 * and through 3 sidecars as deployed (own processes) on 1 Redis, the same
 * workload in the same run: 1,000 users by default, each turn's context
 * checked against what was written. A third phase adds a second device per
 * user (Watch) and takes Redis and one sidecar away mid-run.
 *
 * Each of the 3 app instances runs in a worker thread of its own (its own
 * event loop and heap, its own PostgreSQL pool and sidecar client), as an
 * app pod runs alone: the latencies the apps measure are not queued behind
 * the load generator, the other instances or their garbage. This thread
 * keeps the simulated users, the checker, the second devices and the
 * faults.
 *
 * BENCH_SCALE scales users and phase length. DATABASE_URL overrides the
 * PostgreSQL of this machine kind (127.0.0.1:5432, database test); every
 * phase works in a schema of its own, dropped at the end.
 */
import { ContextCacheClient, type GetStatsResponse, type NearCacheStats } from '../src/client';
import type { ChatAppStats } from '../examples/chat-app/app';
import { AppThread } from '../examples/chat-app/app-thread';
import { addTotals, faultsOf, GroundTruth, type CheckTotals } from '../examples/chat-app/checker';
import { addCounts, CONTEXT_READS, CountingPool, databaseUrl, freshSchemaName, sumOf, type QueryCounts, type QueryKind } from '../examples/chat-app/db';
import { runWorkload, seedHistory, type RunResult, type WorkloadOptions } from '../examples/chat-app/load';
import { ChatStore } from '../examples/chat-app/store';
import { ThreadLoadWatch, type ThreadLoad } from '../examples/chat-app/thread-load';
import { startRedis, type TestRedis } from '../test/helpers/redis';
import { compiledAppWorker, startDeployedSidecar, type DeployedSidecar } from './deployed';
import { formatTable, percentile, runCleanup, summarize, type Bench, type BenchReport, type BenchResult, type LatencyStats } from './lib';

const SIDECARS = 3;
/**
 * The first third of the direct and sidecar phases warms up (every user's
 * first reads of its conversations are misses however good the cache): it
 * is checked like the rest, but the latency, hit and load figures are of the
 * two thirds after it. The cold third's hit ratio is reported on its own.
 */
const WARMUP_FRACTION = 1 / 3;
const MAX_CHARS = 12_000;
/** Windows of the sidecar phase whose hit ratios are reported one by one. */
const HIT_WINDOWS = 6;

function phaseSeconds(text: string): number {
  const seconds = Number(text);
  if (!Number.isInteger(seconds) || seconds < 10 || seconds > 3600) throw new Error(`CHAT_APP_PHASE_SECONDS is ${text}; use a whole number of seconds from 10 to 3600`);
  return seconds;
}

function sizes(): WorkloadOptions {
  const scale = Number(process.env.BENCH_SCALE ?? '1') || 1;
  return {
    users: Math.max(20, Math.round(1000 * scale)),
    // CHAT_APP_PHASE_SECONDS: longer phases, to see the steady state past every user's first reads.
    durationMs: process.env.CHAT_APP_PHASE_SECONDS ? phaseSeconds(process.env.CHAT_APP_PHASE_SECONDS) * 1000 : Math.round(90_000 * Math.min(1, Math.max(0.25, scale))),
    maxTurnsPerUser: 60,
    // People read the answer and type the next question: 5-20 s (1,000 users: ~80 turns/s).
    thinkMs: [5_000, 20_000],
    seed: 16,
    maxChars: MAX_CHARS,
    history: { sessionsPerUser: 2, messages: [10, 80] },
  };
}

interface Phase {
  name: string;
  run: RunResult;
  /** Turns begun after the warm-up (all of them for the faults phase). */
  samples: RunResult['samples'];
  /** Queries sent after the warm-up. */
  queries: QueryCounts;
  apps: ChatAppStats[];
  redisCommands: number;
  sidecarStats: GetStatsResponse[];
  /** The app instances' near caches at the end of the phase (each instance's client lives for its phase). */
  nearStats: NearCacheStats[];
  /** This thread (the load generator) over the phase: what every turn latency includes. */
  mainLoad: ThreadLoad;
  /** Each app thread over the phase: what its contexts' latencies include. */
  appLoads: ThreadLoad[];
  /** The process's resident set at the end of the phase, bytes: every thread's. */
  rssBytes: number;
}

function latency(samplesMs: readonly number[]): LatencyStats {
  return summarize(Float64Array.from(samplesMs, (ms) => ms * 1e6));
}

function row(name: string, samplesMs: readonly number[], phase: Phase, users: number): BenchResult {
  return { name, latency: latency(samplesMs), throughput: { calls: phase.samples.length, concurrency: users, seconds: phase.run.seconds, callsPerSecond: phase.samples.length / phase.run.seconds } };
}

async function redisCommandsProcessed(redis: TestRedis): Promise<number> {
  const info = String(await redis.command('INFO', 'stats'));
  return Number(/total_commands_processed:(\d+)/.exec(info)?.[1] ?? Number.NaN);
}

const ms = (values: readonly number[], p: number) => percentile([...values].sort((a, b) => a - b), p);

async function run(): Promise<BenchReport> {
  const options = sizes();
  const cleanup: (() => Promise<unknown> | unknown)[] = [];
  try {
    // Both modes run the app compiled (an app pod runs JavaScript), each instance in a thread of its own.
    const compiledWorker = compiledAppWorker();
    const redis = await startRedis();
    cleanup.push(() => redis.stop());
    const sidecars: DeployedSidecar[] = [];
    for (let i = 0; i < SIDECARS; i++) {
      const sidecar = await startDeployedSidecar({ REDIS_URL: redis.url });
      cleanup.push(() => sidecar.close());
      sidecars.push(sidecar);
    }
    const deviceClients = sidecars.map((sidecar) => new ContextCacheClient(sidecar.address));
    cleanup.push(() => deviceClients.forEach((client) => client.close()));

    const phase = async (name: string, mode: 'direct' | 'sidecar', extra: { devices?: boolean; faults?: boolean } = {}): Promise<Phase> => {
      // The phase's own schema, made and seeded from this thread through a pool of its own (the apps' pools count only the run).
      const schema = freshSchemaName(`bench_${name.replace(/\W/g, '_')}`);
      const setupPool = new CountingPool({ schema, maxConnections: 8 });
      cleanup.push(() => setupPool.close());
      const setup = new ChatStore(setupPool);
      await setup.createSchema();
      cleanup.push(() => setup.dropSchema());
      const truth = new GroundTruth();
      const sessionsOf = await seedHistory(setup, truth, options);
      // One app instance (pod) per sidecar, each in its own thread with its own pool and client, started for this phase.
      const apps = sidecars.map((sidecar) => new AppThread({ mode, schema, maxConnections: 8, maxChars: MAX_CHARS, sidecarAddress: mode === 'sidecar' ? sidecar.address : undefined, compiledWorker }));
      cleanup.push(() => Promise.all(apps.map((app) => app.close())));
      await Promise.all(apps.map((app) => app.ready));
      const warmup = extra.faults ? 0 : WARMUP_FRACTION;
      let commandsBefore = await redisCommandsProcessed(redis);
      const events = extra.faults
        ? [
            { at: 1 / 3, run: () => redis.restart() },
            { at: 2 / 3, run: () => sidecars[1]!.restart() },
          ]
        : [
            {
              at: warmup,
              run: async () => {
                await Promise.all(apps.map((app) => app.resetQueryCounts()));
                commandsBefore = await redisCommandsProcessed(redis);
              },
            },
          ];
      const mainThread = new ThreadLoadWatch();
      cleanup.push(() => mainThread.close());
      const result = await runWorkload({ ...options, apps, truth, sessionsOf, deviceClients: extra.devices ? deviceClients : undefined, events });
      const mainLoad = mainThread.read();
      mainThread.close();
      const appLoads = await Promise.all(apps.map((app) => app.threadLoad()));
      const rssBytes = process.memoryUsage().rss;
      // A restarted Redis counts from zero.
      const redisCommands = (await redisCommandsProcessed(redis)) - (extra.faults ? 0 : commandsBefore);
      const [appStats, queries, sidecarStats, nearStats] = await Promise.all([
        Promise.all(apps.map((app) => app.stats())),
        Promise.all(apps.map((app) => app.queryCounts())),
        Promise.all(apps.map((app) => app.sidecarStats())),
        Promise.all(apps.map((app) => app.nearCacheStats())),
      ]);
      await Promise.all(apps.map((app) => app.close()));
      const samples = result.samples.filter((sample) => sample.atMs >= warmup * options.durationMs);
      return {
        name,
        run: result,
        samples,
        queries: addCounts(queries),
        apps: appStats,
        redisCommands,
        // Direct mode's apps have no client.
        sidecarStats: sidecarStats.flatMap((stats) => stats ?? []),
        nearStats: nearStats.flatMap((stats) => stats ?? []),
        mainLoad,
        appLoads,
        rssBytes,
      };
    };

    const direct = await phase('direct', 'direct');
    const cached = await phase('sidecar', 'sidecar');
    const faults = await phase('sidecar, devices, faults', 'sidecar', { devices: true, faults: true });
    return report(options, direct, cached, faults);
  } finally {
    await runCleanup(cleanup);
  }
}

const MIB = 2 ** 20;

/** A phase's threads as figures: `<prefix>_main_…` for this thread, `<prefix>_app_<n>_…` for each app thread, and the process's RSS. */
function threadFigures(prefix: string, phase: Phase): Record<string, number> {
  const ofThread = (thread: string, load: ThreadLoad) => ({
    [`${prefix}_${thread}_loop_delay_p50_ms`]: load.loopDelayMs.p50,
    [`${prefix}_${thread}_loop_delay_p99_ms`]: load.loopDelayMs.p99,
    [`${prefix}_${thread}_loop_delay_max_ms`]: load.loopDelayMs.max,
    [`${prefix}_${thread}_heap_used_mib`]: load.heapUsedBytes / MIB,
  });
  return Object.assign(ofThread('main', phase.mainLoad), ...phase.appLoads.map((load, i) => ofThread(`app_${i + 1}`, load)), { [`${prefix}_rss_mib`]: phase.rssBytes / MIB });
}

function totalsOf(phase: Phase): CheckTotals {
  return phase.run.checker.totals;
}

function report(options: WorkloadOptions, direct: Phase, cached: Phase, faults: Phase): BenchReport {
  const turns = (phase: Phase) => phase.samples.length;
  const contextMs = (phase: Phase, pick: (s: RunResult['samples'][number]) => boolean = () => true) => phase.samples.filter(pick).map((s) => s.contextMs);
  const reads = (phase: Phase) => sumOf(phase.queries, CONTEXT_READS) / turns(phase);
  const readMs = (phase: Phase) => sumOf(phase.queries, CONTEXT_READS, 'ms') / turns(phase);
  const meanMs = (phase: Phase, kind: QueryKind) => phase.queries.ms[kind] / phase.queries.count[kind];
  const allQueries = (phase: Phase) => sumOf(phase.queries, ['context-path', 'context-refs', 'load-session', 'lookup-short-ids', 'sync-read', 'write']) / turns(phase);
  const hitRatio = (phase: Phase) => phase.samples.filter((s) => s.hit).length / turns(phase);
  const coldSamples = cached.run.samples.filter((s) => s.atMs < WARMUP_FRACTION * options.durationMs);
  const coldHitRatio = coldSamples.filter((s) => s.hit).length / coldSamples.length;
  // How the hit ratio settles over the phase: a short run ends while users still touch conversations for the first time.
  const windowMs = options.durationMs / HIT_WINDOWS;
  const hitRatioByWindow = Array.from({ length: HIT_WINDOWS }, (_, w) => {
    const inWindow = cached.run.samples.filter((s) => s.atMs >= w * windowMs && s.atMs < (w + 1) * windowMs);
    return inWindow.length === 0 ? Number.NaN : inWindow.filter((s) => s.hit).length / inWindow.length;
  });
  const lastThird = cached.run.samples.filter((s) => s.atMs >= (2 / 3) * options.durationMs);
  const lastThirdHitRatio = lastThird.filter((s) => s.hit).length / lastThird.length;
  /** The sidecars' own L1 hit ratio (GetStats), over every read they served. */
  const sidecarL1HitRatio = (phase: Phase) => {
    const hits = phase.sidecarStats.reduce((sum, stats) => sum + Number(stats.l1?.reads?.hits ?? 0), 0);
    const reads = phase.sidecarStats.reduce((sum, stats) => sum + Number(stats.l1?.reads?.hits ?? 0) + Number(stats.l1?.reads?.misses ?? 0), 0);
    return reads === 0 ? Number.NaN : hits / reads;
  };
  const totals = addTotals(addTotals(totalsOf(direct), totalsOf(cached)), totalsOf(faults));
  const sync = faults.run.sync!;
  const fallbacks = (phase: Phase) => phase.apps.reduce((sum, app) => sum + Object.values(app.fallbacks).reduce((a, b) => a + b, 0), 0);
  const errors = direct.run.errors + cached.run.errors + faults.run.errors;

  const nearSum = (counter: 'contextsBuilt' | 'appendsApplied' | 'sessionsFetched' | 'evictions' | 'flushes') => cached.nearStats.reduce((sum, stats) => sum + stats[counter], 0);
  const directContext = ms(contextMs(direct), 50);
  const cachedContext = ms(contextMs(cached), 50);
  const figures: Record<string, number> = {
    users: options.users,
    phase_seconds: options.durationMs / 1000,
    direct_turns: turns(direct),
    sidecar_turns: turns(cached),
    faults_turns: turns(faults),
    direct_turn_p50_ms: ms(direct.samples.map((s) => s.turnMs), 50),
    direct_turn_p99_ms: ms(direct.samples.map((s) => s.turnMs), 99),
    direct_context_p50_ms: directContext,
    direct_context_p99_ms: ms(contextMs(direct), 99),
    sidecar_turn_p50_ms: ms(cached.samples.map((s) => s.turnMs), 50),
    sidecar_turn_p99_ms: ms(cached.samples.map((s) => s.turnMs), 99),
    sidecar_context_p50_ms: cachedContext,
    sidecar_context_p99_ms: ms(contextMs(cached), 99),
    sidecar_context_hit_p50_ms: ms(contextMs(cached, (s) => s.hit), 50),
    sidecar_context_hit_p99_ms: ms(contextMs(cached, (s) => s.hit), 99),
    near_cache_context_ratio: cached.samples.filter((s) => s.nearCache).length / turns(cached),
    near_cache_context_p50_ms: ms(contextMs(cached, (s) => s.nearCache), 50),
    near_cache_context_p99_ms: ms(contextMs(cached, (s) => s.nearCache), 99),
    // A near-cache context may follow loads from PostgreSQL (its sessions were missing at first): on a hit it is the in-process build alone.
    near_cache_hit_context_p50_ms: ms(contextMs(cached, (s) => s.nearCache && s.hit), 50),
    near_cache_hit_context_p99_ms: ms(contextMs(cached, (s) => s.nearCache && s.hit), 99),
    sidecar_context_miss_p50_ms: ms(contextMs(cached, (s) => !s.hit), 50),
    sidecar_context_miss_p99_ms: ms(contextMs(cached, (s) => !s.hit), 99),
    context_p50_ratio: cachedContext / directContext,
    hit_ratio: hitRatio(cached),
    warmup_hit_ratio: coldHitRatio,
    last_third_hit_ratio: lastThirdHitRatio,
    ...Object.fromEntries(hitRatioByWindow.map((ratio, w) => [`hit_ratio_window_${w + 1}_of_${HIT_WINDOWS}`, ratio])),
    sidecar_l1_hit_ratio: sidecarL1HitRatio(cached),
    direct_db_context_queries_per_turn: reads(direct),
    sidecar_db_context_queries_per_turn: reads(cached),
    db_load_reduction: 1 - reads(cached) / reads(direct),
    db_context_time_reduction: 1 - readMs(cached) / readMs(direct),
    direct_db_queries_per_turn: allQueries(direct),
    sidecar_db_queries_per_turn: allQueries(cached),
    db_total_query_reduction: 1 - allQueries(cached) / allQueries(direct),
    redis_commands_per_turn: cached.redisCommands / turns(cached),
    turns_checked: totals.turns,
    messages_checked: totals.messagesExpected,
    missing_messages: totals.missingMessages,
    missing_references: totals.missingReferences,
    out_of_order_messages: totals.outOfOrder,
    unexpected_messages: totals.unexpected,
    wrong_content_messages: totals.wrongContent,
    turn_errors: errors,
    faults_missing_messages: totalsOf(faults).missingMessages,
    faults_out_of_order_messages: totalsOf(faults).outOfOrder,
    faults_hit_ratio: hitRatio(faults),
    faults_fallback_contexts: fallbacks(faults),
    faults_failed_write_throughs: faults.apps.reduce((sum, app) => sum + app.writeThroughFailures, 0),
    redis_restarts: 1,
    sidecar_restarts: 1,
    sync_messages: sync.messages,
    sync_live: sync.live,
    sync_recovered: sync.recovered,
    sync_missing_messages: sync.missing,
    sync_latency_p50_ms: ms(sync.latenciesMs, 50),
    sync_latency_p99_ms: ms(sync.latenciesMs, 99),
    ...threadFigures('direct', direct),
    ...threadFigures('sidecar', cached),
    ...threadFigures('faults', faults),
  };

  const f = (n: number, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : '-');
  const pct = (n: number) => (Number.isFinite(n) ? `${(n * 100).toFixed(1)} %` : '-');
  const comparison = formatTable(
    ['', 'the seed claims', 'direct PostgreSQL', 'through the sidecar', 'issue 16 goal'],
    [
      ['context build p50', '309 → 162 ms', `${f(directContext)} ms`, `${f(cachedContext)} ms (${f(directContext / cachedContext, 1)}x faster)`, '≤ 1/20 of direct'],
      ['context build p99', '', `${f(figures.direct_context_p99_ms!)} ms`, `${f(figures.sidecar_context_p99_ms!)} ms`, '≤ 10 ms'],
      ['context build on a hit', '< 10 ms', '', `p50 ${f(figures.sidecar_context_hit_p50_ms!)} ms, p99 ${f(figures.sidecar_context_hit_p99_ms!)} ms`, ''],
      ['… in the app\'s process (near cache)', '', '', `${pct(figures.near_cache_context_ratio!)} of contexts: p50 ${f(figures.near_cache_context_p50_ms!, 3)} ms, p99 ${f(figures.near_cache_context_p99_ms!)} ms; on a hit p50 ${f(figures.near_cache_hit_context_p50_ms!, 3)} ms, p99 ${f(figures.near_cache_hit_context_p99_ms!)} ms`, ''],
      ['cache hit ratio', '≥ 90 %', '', pct(figures.hit_ratio!), '≥ 95 %'],
      ['DB load (context reads/turn)', '80 % less', f(reads(direct)), `${f(reads(cached), 3)} (${pct(figures.db_load_reduction!)} less)`, '≥ 90 % less'],
      ['DB queries/turn, writes included', '', f(allQueries(direct)), `${f(allQueries(cached))} (${pct(figures.db_total_query_reduction!)} less)`, ''],
      ['turn p50 / p99 (hops to the app included)', '', `${f(figures.direct_turn_p50_ms!)} / ${f(figures.direct_turn_p99_ms!)} ms`, `${f(figures.sidecar_turn_p50_ms!)} / ${f(figures.sidecar_turn_p99_ms!)} ms`, ''],
      ['concurrent users', '1,000', String(options.users), String(options.users), '1,000'],
      ['multi-device sync', 'yes', '', `p50 ${f(figures.sync_latency_p50_ms!)} ms, p99 ${f(figures.sync_latency_p99_ms!)} ms; ${sync.missing} of ${sync.messages} missed`, 'every message'],
      ['missing / out of order', '', `${totalsOf(direct).missingMessages + totalsOf(direct).missingReferences} / ${totalsOf(direct).outOfOrder}`, `${totalsOf(cached).missingMessages + totalsOf(cached).missingReferences + totalsOf(faults).missingMessages + totalsOf(faults).missingReferences} / ${totalsOf(cached).outOfOrder + totalsOf(faults).outOfOrder} (faults phase included)`, '0 / 0'],
    ],
  );
  const failures = [direct, cached, faults].flatMap((phase) => phase.run.checker.failures.slice(0, 5));
  const firstErrors = [direct, cached, faults].flatMap((phase) => phase.run.firstErrors.slice(0, 3));
  const notes = [
    '',
    comparison,
    '',
    `${options.users} users, ${options.durationMs / 1000} s per phase (at most ${options.maxTurnsPerUser} turns each), think time ${options.thinkMs[0] / 1000}-${options.thinkMs[1] / 1000} s, ${options.history.sessionsPerUser} earlier conversations each of ${options.history.messages[0]}-${options.history.messages[1]} messages, budget ${MAX_CHARS} chars; PostgreSQL ${new URL(databaseUrl()).host}, 3 sidecars (dist/main.js) + 1 Redis child; 3 app instances, each in a worker thread of its own with its own PostgreSQL pool and sidecar client; users hop between them at random each turn.`,
    `Latency, hit and load figures: the turns begun after the first ${Math.round(WARMUP_FRACTION * options.durationMs / 1000)} s of each phase (every user's first reads of its conversations are cold); hit ratio in that warm-up: ${pct(coldHitRatio)}. The faults phase is counted whole.`,
    `Sidecar phase hit ratio by ${Math.round(windowMs / 1000)}-s window: ${hitRatioByWindow.map(pct).join(', ')}; in the last third ${pct(lastThirdHitRatio)}.`,
    `Every turn checked: ${totals.turns} contexts, ${totals.messagesExpected} messages: ${totals.missingMessages} missing, ${totals.missingReferences} references missing, ${totals.outOfOrder} out of order, ${totals.unexpected} unexpected, ${totals.wrongContent} with wrong content; ${errors} turns failed outright.`,
    `Faults phase (a second device per user watching its conversation; Redis killed and restarted empty at 1/3, one sidecar SIGKILLed and restarted at 2/3): ${turns(faults)} turns, ${faultsOf(totalsOf(faults))} faults, hit ratio ${pct(figures.faults_hit_ratio!)}, ${figures.faults_fallback_contexts} contexts from PostgreSQL instead, ${figures.faults_failed_write_throughs} failed write-throughs repaired; sync: ${sync.live} live, ${sync.recovered} recovered after a resync or a lost stream, ${sync.missing} missed.`,
    `Near caches of the 3 app instances in the sidecar phase: ${nearSum('contextsBuilt')} contexts built in-process, ${nearSum('appendsApplied')} appends added in place, ${nearSum('sessionsFetched')} sessions fetched, ${nearSum('evictions')} evictions, ${nearSum('flushes')} flushes; holding ${(cached.nearStats.reduce((sum, stats) => sum + stats.bytes, 0) / MIB).toFixed(0)} MiB (estimated) at the end.`,
    'Context build: timed by each app around its own buildContext, in its own thread. Turn: timed by the load generator in the main thread, so it also holds the hops to the app\'s thread and back (3 calls, 2 commit notices each answered before the write-through goes on) and the main thread\'s event-loop delay. Event-loop delay is sampled every 10 ms, the interval included (an idle loop reads about 10 ms).',
    ...[direct, cached, faults].map(
      (phase) =>
        `Event-loop delay p50 / p99 / max and heap used at the end, per thread, ${phase.name}: ` +
        [['main (load generator, checker, devices)', phase.mainLoad] as const, ...phase.appLoads.map((load, i) => [`app ${i + 1}`, load] as const)]
          .map(([thread, load]) => `${thread} ${f(load.loopDelayMs.p50, 1)} / ${f(load.loopDelayMs.p99, 1)} / ${f(load.loopDelayMs.max, 1)} ms, ${(load.heapUsedBytes / MIB).toFixed(0)} MiB`)
          .join('; ') +
        `; process RSS ${(phase.rssBytes / MIB).toFixed(0)} MiB.`,
    ),
    `Redis commands per turn (sidecar phase): ${f(figures.redis_commands_per_turn!, 1)}. Sidecar L1 hit ratio (GetStats): ${pct(figures.sidecar_l1_hit_ratio!)}. DB time for context reads per turn: direct ${f(readMs(direct))} ms, sidecar ${f(readMs(cached), 3)} ms (${pct(figures.db_context_time_reduction!)} less). Mean time per query (pool wait included): direct path ${f(meanMs(direct, 'context-path'))} ms, references ${f(meanMs(direct, 'context-refs'))} ms; sidecar session loads ${f(meanMs(cached, 'load-session'))} ms.`,
    ...(failures.length > 0 ? ['First faults:', ...failures] : []),
    ...(firstErrors.length > 0 ? ['First errors:', ...firstErrors] : []),
  ];
  return {
    title: 'chat-app: a chat app on PostgreSQL, direct vs through 3 sidecars on Redis (examples/chat-app)',
    results: [
      row('direct: turn (2 writes + context)', direct.samples.map((s) => s.turnMs), direct, options.users),
      row('direct: context build', contextMs(direct), direct, options.users),
      row('sidecar: turn (2 writes + context)', cached.samples.map((s) => s.turnMs), cached, options.users),
      row('sidecar: context build', contextMs(cached), cached, options.users),
      row('sidecar: context build, hit', contextMs(cached, (s) => s.hit), cached, options.users),
      row('sidecar: context build, in the app (near cache)', contextMs(cached, (s) => s.nearCache), cached, options.users),
      row('sidecar: context build, in the app (near cache), hit', contextMs(cached, (s) => s.nearCache && s.hit), cached, options.users),
      row('sidecar: context build, miss', contextMs(cached, (s) => !s.hit), cached, options.users),
      row('faults: context build', contextMs(faults), faults, options.users),
      row('sync: commit → second device', sync.latenciesMs, faults, options.users),
    ],
    notes,
    figures,
  };
}

export const chatApp: Bench = { name: 'chat-app', run };
