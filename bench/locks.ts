/**
 * Distributed locks on one Redis: uncontended AcquireLock + ReleaseLock over
 * loopback gRPC next to the same Redlock steps straight on ioredis (the
 * Mutex alone, and the Mutex plus the fencing counter: exactly the Redis
 * work the sidecar does), and the throughput of one contended lock with 8
 * workers on 2 sidecars next to 8 workers using the Mutex directly. Same
 * process, same Redis, same run.
 */
import Redis from 'ioredis';
import { ContextCacheClient } from '../src/client';
import { FencingCounter } from '../src/redis/fencing';
import { KeySpace } from '../src/redis/keys';
import { Mutex } from '../src/redis/mutex';
import { deployedClient, startDeployedSidecar, TRANSPORTS, type DeployedSidecar } from './deployed';
import { scaled, startBenchSidecar } from './harness';
import { measureLatency, measureThroughput, ratio, startBenchRedis, summarize, type Bench, type BenchReport, type BenchResult, type LatencyOptions, type ThroughputStats, runCleanup } from './lib';

const TTL_MS = 10_000;
const TTL = { seconds: TTL_MS / 1000, nanos: 0 };
const WORKERS = 8;

/** Sizes of the runs; BENCH_SCALE=0.1 for a quick smoke run. */
function plan(): { latency: LatencyOptions; uncontended: { concurrency: number; calls: number; warmup: number }; contended: number } {
  const n = (count: number) => scaled(count);
  return {
    latency: { warmup: n(300), iterations: n(3_000), maxMs: 8_000 },
    // Uncontended throughput: every call locks a resource of its own.
    uncontended: { concurrency: 16, calls: n(6_000), warmup: n(500) },
    // Contended: this many locks of one resource in total, WORKERS at a time.
    contended: n(400),
  };
}

/**
 * `total` lock-guarded critical sections on one resource, `WORKERS` at a
 * time: per-section latency (from asking for the lock to releasing it,
 * waiting included) and sections per second.
 */
async function contended(run: (worker: number) => Promise<void>, total: number): Promise<{ latency: ReturnType<typeof summarize>; throughput: ThroughputStats }> {
  const samples = new Float64Array(total);
  let started = 0;
  const begin = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: WORKERS }, async (_, worker) => {
      while (started < total) {
        const index = started++;
        const t0 = process.hrtime.bigint();
        await run(worker);
        samples[index] = Number(process.hrtime.bigint() - t0);
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - begin) / 1e9;
  return { latency: summarize(samples), throughput: { calls: total, concurrency: WORKERS, seconds, callsPerSecond: total / seconds } };
}

export const locks: Bench = {
  name: 'locks',
  async run(): Promise<BenchReport> {
    const sizes = plan();
    const cleanup: (() => Promise<void> | void)[] = [];
    try {
      const redisServer = await startBenchRedis();
      cleanup.push(() => redisServer.stop());

      // Two sidecars on the Redis, each with its own client.
      const sidecars = [];
      for (let i = 0; i < 2; i++) {
        const sidecar = await startBenchSidecar({ CONTEXT_CACHE_NAMESPACE: 'bench', REDIS_URL: redisServer.url });
        cleanup.push(() => sidecar.close());
        sidecars.push(sidecar);
      }
      const clients = sidecars.map((s) => s.client);
      const deadline = Date.now() + 10_000;
      while (!sidecars.every((s) => s.sidecar.locks.ready)) {
        if (Date.now() > deadline) throw new Error('the sidecars did not connect to Redis within 10 s');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }

      // The direct baseline: ioredis clients, the Mutex (and the fencing counter) on them.
      const direct: Redis[] = [];
      for (let i = 0; i < 2; i++) {
        const redis = new Redis(redisServer.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
        cleanup.push(() => {
          redis.disconnect();
        });
        await redis.connect();
        direct.push(redis);
      }
      const mutexes = direct.map((redis) => new Mutex([redis], 0));
      // Fencing counters under the bench's namespace (cc:bench:fence:…), removed with the rest below.
      const fencing = new FencingCounter([direct[0]!], new KeySpace('bench'));
      const [client, mutex] = [clients[0]!, mutexes[0]!];

      const viaGrpc = (via: ContextCacheClient) => async (resource: string) => {
        const lock = await via.acquireLock({ resource, ttl: TTL });
        await via.releaseLock({ resource, token: lock.token });
      };
      const viaMutex = async (key: string) => {
        const hold = await mutex.tryAcquire(key, TTL_MS);
        if (hold === undefined) throw new Error(`${key} was busy in an uncontended run`);
        await mutex.release(key, hold.token);
      };
      const viaMutexAndFence = async (key: string) => {
        const hold = await mutex.tryAcquire(key, TTL_MS);
        if (hold === undefined) throw new Error(`${key} was busy in an uncontended run`);
        await fencing.next(key);
        await mutex.release(key, hold.token);
      };

      const uncontended = async (name: string, prefix: string, call: (resource: string) => Promise<void>): Promise<BenchResult> => {
        const latency = await measureLatency(() => call(`${prefix}:sequential`), sizes.latency);
        // One resource per call in flight, reused: uncontended, and few fencing counters (they have no TTL).
        const free = Array.from({ length: sizes.uncontended.concurrency }, (_, slot) => slot);
        const throughput = await measureThroughput(async () => {
          const slot = free.pop()!;
          try {
            await call(`${prefix}:${slot}`);
          } finally {
            free.push(slot);
          }
        }, sizes.uncontended);
        return { name, latency, throughput };
      };
      const grpc = await uncontended('sidecar AcquireLock+ReleaseLock (gRPC)', 'grpc', viaGrpc(client));
      const bare = await uncontended('Mutex tryAcquire+release (ioredis)', 'bench:mutex', viaMutex);
      const fenced = await uncontended('Mutex + fencing counter (ioredis)', 'bench:fenced', viaMutexAndFence);

      // Contended: a non-atomic counter increment (GET, SET) under the lock; the final count checks exclusion.
      const counter = direct[1]!;
      const increment = async (key: string) => {
        const value = Number((await counter.get(key)) ?? '0');
        await counter.set(key, String(value + 1));
      };
      const grpcLocks = async (via: readonly ContextCacheClient[], label: string) => {
        const counterKey = `bench:counter:${label}`;
        await counter.del(counterKey);
        const result = await contended(async (worker) => {
          const sidecar = via[worker % 2]!;
          const lock = await sidecar.acquireLock({ resource: `contended-${label}`, ttl: TTL, waitTimeout: { seconds: 60, nanos: 0 } });
          await increment(counterKey);
          await sidecar.releaseLock({ resource: `contended-${label}`, token: lock.token });
        }, sizes.contended);
        const final = Number(await counter.get(counterKey));
        if (final !== sizes.contended) throw new Error(`lost updates under the lock: ${counterKey} is ${final}, expected ${sizes.contended}`);
        return result;
      };
      await counter.del('bench:counter:direct');
      const grpcContended = await grpcLocks(clients, 'grpc');
      const directContended = await contended(async (worker) => {
        const via = mutexes[worker % 2]!;
        const hold = await via.acquire('bench:mutex:contended', TTL_MS, 60_000);
        if (hold === undefined) throw new Error('the direct contended lock stayed busy for 60 s');
        await increment('bench:counter:direct');
        await via.release('bench:mutex:contended', hold.token);
      }, sizes.contended);
      for (const key of ['bench:counter:direct']) {
        const final = Number(await counter.get(key));
        if (final !== sizes.contended) throw new Error(`lost updates under the lock: ${key} is ${final}, expected ${sizes.contended}`);
      }
      // As deployed: two sidecars (dist/main.js) in processes of their own, per transport; the baselines above are ioredis from this process.
      const deployedRows: BenchResult[] = [];
      const figures: Record<string, number> = {};
      const goalNotes: string[] = [];
      const judge = (label: string, uncontendedRow: BenchResult, contendedRow: BenchResult) => {
        const waits = contendedRow.latency;
        const values = {
          uncontendedVsFencedP50: uncontendedRow.latency.p50Us / fenced.latency.p50Us,
          contendedThroughputRatio: contendedRow.throughput.callsPerSecond / directContended.throughput.callsPerSecond,
          contendedLocksPerSecond: contendedRow.throughput.callsPerSecond,
          waitP50Us: waits.p50Us,
          waitP99Us: waits.p99Us,
          waitMaxUs: waits.maxUs,
          waitMaxOverMedian: waits.maxUs / waits.p50Us,
        };
        for (const [name, value] of Object.entries(values)) figures[`${label}.${name}`] = value;
        goalNotes.push(
          `${label}: uncontended / Mutex+fencing p50 ${values.uncontendedVsFencedP50.toFixed(2)}x [goal <= 2x]; contended ${values.contendedLocksPerSecond.toFixed(0)} locks/s = ` +
            `${values.contendedThroughputRatio.toFixed(2)}x direct [goal >= 0.6x]; waits p99 ${(waits.p99Us / 1000).toFixed(1)} ms [goal <= 50 ms], max ${values.waitMaxOverMedian.toFixed(1)}x the median [goal <= 10x]`,
        );
      };
      judge('inProcess', grpc, { name: '', ...grpcContended });
      for (const transport of TRANSPORTS) {
        const deployed: DeployedSidecar[] = [];
        for (let i = 0; i < 2; i++) {
          const sidecar = await startDeployedSidecar({ CONTEXT_CACHE_NAMESPACE: 'bench', REDIS_URL: redisServer.url }, { transport });
          cleanup.push(() => sidecar.close());
          deployed.push(sidecar);
        }
        const { ContextCacheClient: DeployedClient } = deployedClient();
        const remote = deployed.map((sidecar) => new DeployedClient(sidecar.address));
        cleanup.push(() => remote.forEach((c) => c.close()));
        const row = await uncontended(`as deployed (${transport}): AcquireLock+ReleaseLock`, `grpc-${transport}`, viaGrpc(remote[0]!));
        const contendedRow: BenchResult = { name: `as deployed (${transport}): contended, ${WORKERS} workers, 2 sidecars`, ...(await grpcLocks(remote, transport)) };
        deployedRows.push(row, contendedRow);
        judge(transport, row, contendedRow);
      }

      // Lease waiters: one sidecar, one key whose lease is held; the Redis commands per second while 1, then 1,000 callers wait for its fill.
      const leases = await leaseWaitCost(redisServer.url, counter, cleanup);
      Object.assign(figures, leases);

      // Leave nothing behind (REDIS_URL may be a shared Redis): the counters and the fencing counters have no TTL.
      for (const pattern of ['bench:*', 'cc:bench:*']) {
        const stream = counter.scanStream({ match: pattern, count: 500 });
        for await (const keys of stream) if ((keys as string[]).length > 0) await counter.del(...(keys as string[]));
      }
      const contendedGrpc: BenchResult = { name: `contended: ${WORKERS} workers, 2 sidecars (gRPC)`, ...grpcContended };
      const contendedDirect: BenchResult = { name: `contended: ${WORKERS} workers, Mutex.acquire (ioredis)`, ...directContended };

      const lat = (a: BenchResult, b: BenchResult) => `p50 ${ratio(a.latency.p50Us, b.latency.p50Us)}, p99 ${ratio(a.latency.p99Us, b.latency.p99Us)}`;
      return {
        title: `Distributed locks on one Redis (Node ${process.version}; Redis: ${redisServer.describe}; ttl ${TTL_MS / 1000} s)`,
        results: [grpc, bare, fenced, contendedGrpc, contendedDirect, ...deployedRows],
        figures,
        notes: [
          `uncontended rows: latency of one acquire+release pair at a time; throughput with ${sizes.uncontended.concurrency} pairs in flight on distinct resources`,
          `contended rows: ${sizes.contended} critical sections (GET+SET of a counter) on one resource, ${WORKERS} at a time; latency includes the wait; the counter came out exact`,
          `gRPC / Mutex:            ${lat(grpc, bare)}, throughput ${ratio(grpc.throughput.callsPerSecond, bare.throughput.callsPerSecond)}`,
          `gRPC / Mutex+fencing:    ${lat(grpc, fenced)}, throughput ${ratio(grpc.throughput.callsPerSecond, fenced.throughput.callsPerSecond)}`,
          `Mutex+fencing / Mutex:   ${lat(fenced, bare)} (the fencing token's two extra round trips)`,
          `contended gRPC / direct: ${contendedGrpc.throughput.callsPerSecond.toFixed(0)} vs ${contendedDirect.throughput.callsPerSecond.toFixed(0)} locks/s = ${ratio(contendedGrpc.throughput.callsPerSecond, contendedDirect.throughput.callsPerSecond)}`,
          ...goalNotes,
          `lease waiters: ${leases['leases.oneWaiterCommandsPerSecond'].toFixed(0)} Redis commands/s with 1 caller waiting for a fill, ${leases['leases.thousandWaitersCommandsPerSecond'].toFixed(0)} with 1,000 = ${leases['leases.ratio'].toFixed(2)}x [goal <= 2x]`,
          '(the sidecars queue waiters in arrival order and a release wakes the next one; the direct Mutex polls, and its releasing worker',
          ' usually takes the lock again at once: its throughput is one worker\'s round trips, unfair to the other workers)',
        ],
      };
    } finally {
      await runCleanup(cleanup);
    }
  },
};

/** Redis commands per second (INFO total_commands_processed) over `ms`, as counted by the server; includes the INFO calls themselves. */
async function commandsPerSecond(redis: Redis, ms: number): Promise<number> {
  const count = async () => Number(/total_commands_processed:(\d+)/.exec(await redis.info('stats'))![1]);
  const before = await count();
  const started = performance.now();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = await count();
  return ((after - before) * 1000) / (performance.now() - started);
}

/**
 * What waiting for a fill costs Redis: a sidecar as deployed, a key whose
 * fill lease is held (and never filled), then `waiters` Gets with
 * lease_on_miss waiting for it; Redis's command rate while they wait, for
 * 1 and for 1,000 waiters. The sidecar's callers share one wait per key.
 */
async function leaseWaitCost(redisUrl: string, redis: Redis, cleanup: (() => Promise<void> | void)[]): Promise<Record<string, number>> {
  const sidecar = await startDeployedSidecar({ CONTEXT_CACHE_NAMESPACE: 'bench-leases', REDIS_URL: redisUrl });
  cleanup.push(() => sidecar.close());
  const clients = Array.from({ length: 4 }, () => new ContextCacheClient(sidecar.address));
  cleanup.push(() => clients.forEach((c) => c.close()));
  const idle = await commandsPerSecond(redis, 1500);
  const rate = async (waiters: number, key: string) => {
    const holder = await clients[0]!.get({ key, leaseOnMiss: true, leaseTtl: { seconds: 30, nanos: 0 } });
    if (holder.lease === undefined) throw new Error('the first Get was granted no lease');
    const waitsBefore = Number((await clients[0]!.getStats({})).leases?.waits ?? 0);
    const waiting = Array.from({ length: waiters }, (_, i) =>
      clients[i % clients.length]!.get({ key, leaseOnMiss: true, leaseTtl: { seconds: 30, nanos: 0 }, leaseWait: { seconds: 30, nanos: 0 } }),
    );
    // Measured once every caller is waiting (their first read and lease attempt are one-off costs of arriving).
    const deadline = Date.now() + 20_000;
    while (Number((await clients[0]!.getStats({})).leases?.waits ?? 0) < waitsBefore + waiters) {
      if (Date.now() > deadline) throw new Error(`not all ${waiters} lease waiters arrived within 20 s`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const measured = await commandsPerSecond(redis, 3000);
    await clients[0]!.set({ key, value: Buffer.from('filled'), leaseToken: holder.lease.token });
    const answers = await Promise.all(waiting);
    if (answers.some((answer) => answer.value === undefined || answer.value.byteLength === 0)) throw new Error('a lease waiter did not get the fill');
    return measured;
  };
  const one = await rate(1, 'lease-one');
  const thousand = await rate(1000, 'lease-thousand');
  return {
    'leases.idleCommandsPerSecond': idle,
    'leases.oneWaiterCommandsPerSecond': one,
    'leases.thousandWaitersCommandsPerSecond': thousand,
    'leases.ratio': thousand / one,
  };
}
