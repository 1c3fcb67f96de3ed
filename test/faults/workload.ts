/**
 * A fault-injection workload on real Redis and real gRPC, shared by the
 * short run in `npm test` (faults.test.ts) and the soak (`npm run chaos`).
 *
 * K sidecars, each behind a TCP proxy of its own in front of one Redis (so
 * one sidecar alone can be cut off). Writers and readers go through random
 * sidecars, for generic keys and for sessions, against an in-test
 * "database" that is the source of truth: writers write the database first,
 * then the cache (Set, AppendNode); readers fill misses from the database
 * under leases (Get/GetSessionNodes with lease_on_miss, then Set/Put with the
 * token). Meanwhile faults are injected one at a time: one sidecar cut off
 * (blackhole), Redis SIGKILL and restart empty, SIGSTOP/SIGCONT, CLIENT KILL
 * TYPE pubsub, FLUSHALL. A fault window lasts from the injection until every
 * sidecar is coherent again.
 *
 * Each key and each session has one writer, so its writes are ordered; a
 * write counts once it was answered (LOCAL or SHARED). Judged:
 *  - outside fault windows, a read may not return a value (or a session
 *    lacking a node) superseded by a write answered 50 ms before the read
 *    began;
 *  - after the last fault, with every sidecar coherent, every key and every
 *    session read through every sidecar is current (or a miss) — nothing
 *    answered was lost — and after a fill from the database all sidecars
 *    agree;
 *  - no call outlives its deadline by more than the slack; no sidecar dies.
 */
import { WriteScope, type ContextCacheClient } from '../../src/client';
import { eventsDelivered } from '../helpers/barrier';
import { startProxy, type TestProxy } from '../helpers/proxy';
import { startRedis, type TestRedis } from '../helpers/redis';
import { startSidecar, type TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

export type FaultKind = 'partition' | 'kill' | 'pause' | 'pubsub-kill' | 'flushall';

export const FAULTS: readonly FaultKind[] = ['partition', 'kill', 'pause', 'pubsub-kill', 'flushall'];

export interface WorkloadOptions {
  seconds: number;
  sidecars: number;
  keys?: number;
  sessions?: number;
  writers?: number;
  readers?: number;
  /** Which faults to draw from (all by default). */
  faults?: readonly FaultKind[];
  /** Told of each fault and recovery, for the soak's output. */
  log?: (line: string) => void;
  /** A random source (seeded in tests, for a reproducible draw of faults). */
  random?: () => number;
}

export interface WorkloadReport {
  reads: number;
  /** Reads judged (outside fault windows, or in the final check). */
  judged: number;
  /** Judged reads that returned a superseded value (or a session lacking an answered node), outside fault windows. */
  stale: number;
  /** After recovery: keys or sessions whose answered writes were lost. */
  lost: number;
  /** Keys and sessions on which all sidecars agreed at the end. */
  converged: number;
  /** Keys and sessions checked at the end. */
  checked: number;
  writes: { shared: number; local: number; failed: number };
  fills: number;
  faults: Record<FaultKind, number>;
  /** Per fault, ms from Redis reachable again to every sidecar coherent. */
  recoveryMs: number[];
  /** Each fault with its recovery time, in order. */
  recoveries: string[];
  /** Calls that settled more than the slack after their deadline. */
  overdue: number;
  /**
   * Times a sidecar left coherence while no fault was injected (a Redis
   * command over CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT on a loaded machine
   * marks the link down: writes go LOCAL until the replay). Each is a fault
   * window like an injected one: "no stale read after recovery" holds from
   * its end.
   */
  unprovoked: number;
  /** The same, by the mode each left coherence for. */
  unprovokedModes: Record<string, number>;
  /** Replayed invalidations, summed over the sidecars. */
  replayed: number;
  examples: string[];
}

const DEADLINE_MS = 1000;
const OVERDUE_SLACK_MS = 250;
/** A write answered this long before a read began must be visible to it (outside fault windows). */
const VISIBILITY_MS = 50;

interface KeyState {
  /** The database: the latest value written. */
  dbSeq: number;
  /** When each answered write was answered, by seq (writes of a key are sequential). */
  answeredAt: Map<number, number>;
}

interface SessionState {
  /** The database: node IDs in order. */
  db: string[];
  /** Answered appends: index in `db` → when. */
  answeredAt: Map<number, number>;
}

export class FaultWorkload {
  private redis!: TestRedis;
  private proxies: TestProxy[] = [];
  private sidecars: TestSidecar[] = [];
  private readonly keys = new Map<string, KeyState>();
  private readonly sessions = new Map<string, SessionState>();
  private readonly windows: { start: number; end: number }[] = [];
  private openWindow: number | undefined;
  /** Per sidecar, since when it has not been coherent (undefined: coherent). */
  private readonly incoherentSince: (number | undefined)[] = [];
  private running = true;
  private readonly random: () => number;
  private readonly report: WorkloadReport = {
    reads: 0,
    judged: 0,
    stale: 0,
    lost: 0,
    converged: 0,
    checked: 0,
    writes: { shared: 0, local: 0, failed: 0 },
    fills: 0,
    faults: { partition: 0, kill: 0, pause: 0, 'pubsub-kill': 0, flushall: 0 },
    recoveryMs: [],
    recoveries: [],
    overdue: 0,
    unprovoked: 0,
    unprovokedModes: {},
    replayed: 0,
    examples: [],
  };

  constructor(private readonly options: WorkloadOptions) {
    this.random = options.random ?? Math.random;
  }

  async run(): Promise<WorkloadReport> {
    await this.start();
    try {
      const until = Date.now() + this.options.seconds * 1000;
      const workers = [
        ...Array.from({ length: this.options.writers ?? 4 }, (_, index) => this.writer(index)),
        ...Array.from({ length: this.options.readers ?? 4 }, () => this.reader()),
      ];
      await this.injectFaults(until);
      this.running = false;
      await Promise.all(workers);
      await this.allCoherent();
      await this.finalCheck();
      for (const sc of this.sidecars) this.report.replayed += Number((await sc.client.getStats()).l2?.replayedInvalidations ?? 0);
      return this.report;
    } finally {
      await this.stop();
    }
  }

  private async start(): Promise<void> {
    this.redis = await startRedis();
    for (let i = 0; i < this.options.sidecars; i++) {
      const proxy = await startProxy(this.redis.port);
      this.proxies.push(proxy);
      this.sidecars.push(
        await startSidecar({
          REDIS_URL: proxy.url,
          CONTEXT_CACHE_NAMESPACE: 'faults',
          CONTEXT_CACHE_REDIS_COMMAND_TIMEOUT: '200ms',
          CONTEXT_CACHE_PUBSUB_HEARTBEAT: '300ms',
          CONTEXT_CACHE_DEGRADED_MAX_AGE: 'off',
          CONTEXT_CACHE_ADMIN_LISTEN: 'off',
        }),
      );
    }
    await this.allCoherent();
    this.sidecars.forEach((sc, index) => sc.sidecar.tiers.onModeChange((mode) => this.modeChanged(index, mode)));
    for (let k = 0; k < (this.options.keys ?? 30); k++) this.keys.set(`key-${k}`, { dbSeq: 0, answeredAt: new Map() });
    for (let s = 0; s < (this.options.sessions ?? 8); s++) this.sessions.set(`session-${s}`, { db: [], answeredAt: new Map() });
    await this.allCoherent();
  }

  private async stop(): Promise<void> {
    await Promise.all(this.sidecars.map((sc) => sc.close()));
    await Promise.all(this.proxies.map((proxy) => proxy.close()));
    await this.redis?.stop();
  }

  private pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.random() * items.length)]!;
  }

  private client(): ContextCacheClient {
    return this.pick(this.sidecars).client;
  }

  private example(line: string): void {
    if (this.report.examples.length < 20) this.report.examples.push(line);
  }

  /** Runs a call with the deadline; counts it overdue if it settles well after. */
  private async call<T>(work: (deadline: Date) => Promise<T>): Promise<T | undefined> {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    try {
      return await work(deadline);
    } catch {
      return undefined;
    } finally {
      if (Date.now() > deadline.getTime() + OVERDUE_SLACK_MS) this.report.overdue++;
    }
  }

  /** A sidecar out of coherence opens a window until it is back; one that leaves while no fault is injected is counted. */
  private modeChanged(index: number, mode: string): void {
    const now = Date.now();
    const since = this.incoherentSince[index];
    if (mode !== 'coherent') {
      if (since === undefined) {
        this.incoherentSince[index] = now;
        if (this.openWindow === undefined && this.running) {
          this.report.unprovoked++;
          this.report.unprovokedModes[mode] = (this.report.unprovokedModes[mode] ?? 0) + 1;
        }
      }
      return;
    }
    if (since === undefined) return;
    this.incoherentSince[index] = undefined;
    this.windows.push({ start: since, end: now });
  }

  private inWindow(from: number, to: number): boolean {
    if (this.openWindow !== undefined && to >= this.openWindow) return true;
    if (this.incoherentSince.some((since) => since !== undefined && to >= since)) return true;
    return this.windows.some((w) => from <= w.end && to >= w.start);
  }

  private async writer(index: number): Promise<void> {
    const writers = this.options.writers ?? 4;
    const keys = [...this.keys.keys()].filter((_, k) => k % writers === index);
    const sessions = [...this.sessions.keys()].filter((_, s) => s % writers === index);
    while (this.running) {
      if (this.random() < 0.5 && keys.length > 0) {
        const key = this.pick(keys);
        const state = this.keys.get(key)!;
        const seq = ++state.dbSeq;
        const answer = await this.call((deadline) => this.client().set({ key, value: Buffer.from(`${key}:${seq}`), ttl: { seconds: 600, nanos: 0 } }, { deadline }));
        this.countWrite(answer?.scope);
        if (answer !== undefined) state.answeredAt.set(seq, Date.now());
      } else if (sessions.length > 0) {
        const sessionId = this.pick(sessions);
        const state = this.sessions.get(sessionId)!;
        const index = state.db.length;
        const id = `${sessionId}/n${index}`;
        state.db.push(id);
        const answer = await this.call((deadline) =>
          this.client().appendNode({ node: { id, sessionId, parentId: index > 0 ? state.db[index - 1]! : '', role: 1, content: `message ${index}` } }, { deadline }),
        );
        this.countWrite(answer?.scope);
        if (answer !== undefined) state.answeredAt.set(index, Date.now());
      }
      await pause(this.random() * 4);
    }
  }

  private countWrite(scope: WriteScope | undefined): void {
    if (scope === WriteScope.WRITE_SCOPE_SHARED) this.report.writes.shared++;
    else if (scope === WriteScope.WRITE_SCOPE_LOCAL) this.report.writes.local++;
    else this.report.writes.failed++;
  }

  private async reader(): Promise<void> {
    while (this.running) {
      if (this.random() < 0.5) await this.readKey(this.pick([...this.keys.keys()]), this.client(), false);
      else await this.readSession(this.pick([...this.sessions.keys()]), this.client(), false);
      await pause(this.random() * 3);
    }
  }

  /** Reads a key (filling it on a miss under the lease); returns the seq served, 0 for a miss. */
  private async readKey(key: string, client: ContextCacheClient, final: boolean): Promise<number | undefined> {
    const state = this.keys.get(key)!;
    const started = Date.now();
    const read = await this.call((deadline) => client.get({ key, leaseOnMiss: true, leaseWait: { seconds: 0, nanos: 300_000_000 } }, { deadline }));
    if (read === undefined) return undefined;
    this.report.reads++;
    if (!read.found) {
      if (read.lease !== undefined) {
        const seq = state.dbSeq;
        const fill = await this.call((deadline) => client.set({ key, value: Buffer.from(`${key}:${seq}`), ttl: { seconds: 600, nanos: 0 }, leaseToken: read.lease!.token }, { deadline }));
        if (fill !== undefined) this.report.fills++;
      }
      return 0;
    }
    const seq = Number(read.value.toString().split(':')[1]);
    this.judge(final, started, `key ${key} (sidecar ${this.sidecars.findIndex((sc) => sc.client === client)}, source ${read.info?.source}, version ${read.info?.version}, degraded ${read.info?.degraded})`, seq, this.latestAnswered(state.answeredAt, final ? Infinity : started - VISIBILITY_MS));
    return seq;
  }

  /** Reads a session (filling it on a miss); returns the node count served, 0 for a miss. */
  private async readSession(sessionId: string, client: ContextCacheClient, final: boolean): Promise<number | undefined> {
    const state = this.sessions.get(sessionId)!;
    const started = Date.now();
    const read = await this.call((deadline) => client.getSessionNodes({ sessionId, leaseOnMiss: true, leaseWait: { seconds: 0, nanos: 300_000_000 } }, { deadline }));
    if (read === undefined) return undefined;
    this.report.reads++;
    if (!read.found) {
      if (read.lease !== undefined) {
        const nodes = state.db.map((id, index) => ({ id, sessionId, parentId: index > 0 ? state.db[index - 1]! : '', role: 1, content: `message ${index}` }));
        const fill = await this.call((deadline) => client.putSessionNodes({ sessionId, nodes, leaseToken: read.lease!.token, ttl: { seconds: 600, nanos: 0 } }, { deadline }));
        if (fill !== undefined) this.report.fills++;
      }
      return 0;
    }
    const ids = read.nodes.map((node) => node.id);
    // A cached session is a prefix of the database (a fill is a snapshot, appends come in order):
    // a gap is a missing message, judged like a stale read. Served: the last node before any gap.
    let contiguous = 0;
    while (contiguous < ids.length && state.db[contiguous] === ids[contiguous]) contiguous++;
    const gap = contiguous < ids.length ? ` (gap after ${contiguous} of ${ids.length} nodes)` : '';
    const required = this.latestAnswered(state.answeredAt, final ? Infinity : started - VISIBILITY_MS);
    const where = `sidecar ${this.sidecars.findIndex((sc) => sc.client === client)}, source ${read.info?.source}, version ${read.info?.version}, ${Date.now() - started} ms`;
    this.judge(final, started, `session ${sessionId}${gap} (${where})`, gap === '' ? ids.length - 1 : Math.min(contiguous - 1, required - 1), required);
    return ids.length;
  }

  /** The highest seq (or node index) answered before `before`. */
  private latestAnswered(answeredAt: Map<number, number>, before: number): number {
    let latest = -1;
    for (const [seq, at] of answeredAt) if (at < before && seq > latest) latest = seq;
    return latest;
  }

  private judge(final: boolean, started: number, what: string, served: number, required: number): void {
    if (!final && this.inWindow(started - VISIBILITY_MS, Date.now())) return;
    this.report.judged++;
    if (served >= required) return;
    if (final) this.report.lost++;
    else this.report.stale++;
    this.example(`${final ? 'lost' : 'stale'}: ${what} served ${served}, answered ${required}`);
  }

  private async allCoherent(): Promise<void> {
    await waitFor(() => this.sidecars.every((sc) => sc.sidecar.tiers.mode === 'coherent'), 'every sidecar coherent', 15_000, 5);
  }

  private async injectFaults(until: number): Promise<void> {
    const kinds = this.options.faults ?? FAULTS;
    // Let traffic settle first, and leave the last seconds fault-free.
    await pause(500);
    while (Date.now() < until - 1500) {
      const kind = this.pick(kinds);
      this.openWindow = Date.now();
      const reachable = await this.inject(kind);
      const recoveredAfter = await this.recovered(reachable);
      this.windows.push({ start: this.openWindow, end: Date.now() });
      this.openWindow = undefined;
      this.report.faults[kind]++;
      this.report.recoveryMs.push(recoveredAfter);
      this.report.recoveries.push(`${kind} ${recoveredAfter}`);
      this.options.log?.(`${kind}: coherent ${recoveredAfter} ms after Redis was reachable again`);
      await pause(300 + this.random() * 700);
    }
  }

  /** Injects one fault and ends it; resolves with when Redis was reachable again (epoch ms). */
  private async inject(kind: FaultKind): Promise<number> {
    const hold = (ms: number) => pause(ms * (0.7 + this.random() * 0.6));
    switch (kind) {
      case 'partition': {
        const proxy = this.pick(this.proxies);
        proxy.cut('blackhole');
        await hold(3000);
        proxy.heal();
        return Date.now();
      }
      case 'kill':
        await this.redis.kill();
        await hold(500);
        await this.redis.restart();
        return Date.now();
      case 'pause':
        await this.redis.pause();
        await hold(1200);
        await this.redis.resume();
        return Date.now();
      case 'pubsub-kill':
        await this.redis.command('CLIENT', 'KILL', 'TYPE', 'pubsub');
        return Date.now();
      case 'flushall':
        await this.redis.command('FLUSHALL');
        return Date.now();
    }
  }

  /** Waits until every sidecar has noticed and recovered; ms from `reachable`. */
  private async recovered(reachable: number): Promise<number> {
    // A FLUSHALL or a killed subscription is noticed by the heartbeat: wait for the sidecars to react first.
    await pause(20);
    await this.allCoherent();
    return Date.now() - reachable;
  }

  /** After the faults: every sidecar coherent and told of every answered write; nothing answered is lost; after fills, all agree. */
  private async finalCheck(): Promise<void> {
    await eventsDelivered(this.sidecars.map((sc) => sc.client), 1);
    for (const key of this.keys.keys()) {
      for (const sc of this.sidecars) await this.readKey(key, sc.client, true);
    }
    for (const sessionId of this.sessions.keys()) {
      for (const sc of this.sidecars) await this.readSession(sessionId, sc.client, true);
    }
    // Convergence: fill what missed, then every sidecar must serve the database's state.
    for (const [key, state] of this.keys) {
      this.report.checked++;
      const seen = await this.settle(() => Promise.all(this.sidecars.map((sc) => this.readKey(key, sc.client, true))));
      if (seen.every((seq) => seq === state.dbSeq)) this.report.converged++;
      else this.example(`key ${key}: sidecars serve ${seen.join(',')}, database ${state.dbSeq}`);
    }
    for (const [sessionId, state] of this.sessions) {
      this.report.checked++;
      const seen = await this.settle(() => Promise.all(this.sidecars.map((sc) => this.readSession(sessionId, sc.client, true))));
      if (seen.every((count) => count === state.db.length)) this.report.converged++;
      else this.example(`session ${sessionId}: sidecars serve ${seen.join(',')} nodes, database ${state.db.length}`);
    }
  }

  /** Reads until no sidecar misses (each miss was filled) or a few rounds passed. */
  private async settle(read: () => Promise<(number | undefined)[]>): Promise<(number | undefined)[]> {
    let seen = await read();
    for (let round = 0; round < 5 && seen.some((value) => value === 0 || value === undefined); round++) seen = await read();
    return seen;
  }
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A seeded random source (mulberry32), so a failing run can be repeated. */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
