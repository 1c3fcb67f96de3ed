import { randomToken } from '../random';
import { LRUCache } from 'lru-cache';
import { isCacheError, staleLease, type CacheError } from '../errors';
import { l1Key, l1KeyOfEvent, type Subject } from '../model/subject';
import type { EventHub } from './event-hub';
import type { LeaseStore, WorkTracer } from './ports';
import { CLOCK_PER_CHECK, countBounded } from './bounded';

/**
 * The longest a fill lease may live (lease_ttl is refused above it). Tag
 * invalidation stamps, in Redis and in memory, are kept this long: no lease
 * granted before a stamp can outlive it.
 */
export const MAX_LEASE_TTL_MS = 600_000;

/** A fill lease granted to a caller after a miss. */
export interface LeaseGrant {
  token: string;
  expiresAt: number;
}

/** Asking for a lease on a miss: how long it lasts, and until when (epoch ms) to wait for another caller's fill. */
export interface LeaseRequest {
  ttlMs: number;
  waitUntil: number;
  /** The caller's deadline (epoch ms; Infinity for none): a lease granted after it would reach nobody. */
  callDeadline: number;
}

/** A read with lease_on_miss: the value, or the lease, or neither (gave up waiting). */
export interface LeasedRead<T> {
  read: T | undefined;
  /** Granted to this caller on a miss. */
  lease: LeaseGrant | undefined;
  /** The call waited for another caller's fill (and got it, or gave up). */
  waited: boolean;
}

type MissOutcome<T> =
  /** Another caller filled the key while this one waited. */
  | { kind: 'filled'; value: T }
  /** This caller holds the lease: load from the database, then fill with the token. */
  | { kind: 'lease'; lease: LeaseGrant }
  /** The wait ran out before a fill or a free lease: a plain miss. */
  | { kind: 'gave-up' };

export interface LeaseCounters {
  granted: number;
  waits: number;
  staleFillsRefused: number;
}

/** Tokens of leases granted from memory (Redis unusable) carry this prefix, so Redis never accepts them. */
const LOCAL_PREFIX = 'local.';

/** Where shared leases live, when Redis is usable: the store, and Redis's clock. */
export interface SharedLeases {
  store: LeaseStore;
  /** Redis's clock in µs, the clock tag invalidation stamps are written on. */
  clockUs(): Promise<number>;
}

/**
 * The token handed to the caller: the shared hold's token, then the grant
 * time (Redis µs for shared leases, local ms for memory ones), read just
 * before the grant. Fills compare it with the tags' invalidation stamps; the
 * Lua side of the same format is `redis/scripts/lib.ts`.
 */
function withGrantTime(token: string, grantedAt: number): string {
  return `${token}.${grantedAt}`;
}

function splitToken(token: string): { base: string; grantedAt: number } {
  const match = /^(.+)\.(\d+)$/.exec(token);
  return match ? { base: match[1]!, grantedAt: Number(match[2]) } : { base: token, grantedAt: 0 };
}
const POLL_INTERVAL_MS = 50;
/** Callers of one sidecar waiting for one subject's fill; past this, a miss gives up at once. */
const MAX_WAITERS_PER_SUBJECT = 10_000;

interface SharedWait {
  subject: Subject;
  reread: () => Promise<unknown>;
  waiters: { request: LeaseRequest; resolve: (outcome: MissOutcome<unknown>) => void }[];
}

/**
 * Stampede protection for every miss path: at most one lease holder per key
 * across all sidecars (through the shared Mutex on Redis); everybody else
 * waits — woken by the fill's event, or by a short poll that notices a
 * lapsed lease — and gets the filled value instead of going to the database.
 * Writes revoke leases (in the same Lua step as the write), so a fill with a
 * lease granted before a newer write is refused.
 *
 * Without a usable Redis the same protection holds within this sidecar,
 * from an in-memory table.
 */
export class LeaseManager {
  readonly counters: LeaseCounters = { granted: 0, waits: 0, staleFillsRefused: 0 };
  private readonly sleepers = new Map<string, Set<() => void>>();
  /** The shared wait of each subject someone waits for, by L1 key. */
  private readonly waits = new Map<string, SharedWait>();
  /** Leases granted from memory; each entry lapses with its lease, and the table is bounded. */
  private readonly local = new LRUCache<string, LeaseGrant>({ ...countBounded(100_000) });
  /** When each tag was last invalidated here (ms), for fills under memory leases. */
  private readonly localTagStamps = new LRUCache<string, number>({ ...countBounded(100_000), ttl: MAX_LEASE_TTL_MS, ...CLOCK_PER_CHECK });
  /** Traces each caller's wait for another caller's fill (ops/tracing.ts); unset: tracing off. */
  tracer: WorkTracer | undefined;

  constructor(
    /** The shared leases when Redis is usable right now; undefined otherwise. */
    private readonly shared: () => SharedLeases | undefined,
    events: EventHub,
  ) {
    events.subscribe((envelope) => {
      if (envelope.event.kind === 'resync') {
        for (const key of [...this.sleepers.keys()]) this.wake(key);
        return;
      }
      const key = l1KeyOfEvent(envelope);
      if (key !== undefined) this.wake(key);
    });
  }

  /**
   * Handles a miss of `subject`: grant the lease, or wait until `waitUntil`
   * (epoch ms) for somebody's fill. The callers of this sidecar that wait
   * for the same subject share one wait (one re-read and one lease attempt
   * per wake-up or poll, whoever many they are), woken by the subject's
   * events; when the lease comes free, the longest waiter gets it.
   */
  private async onMiss<T>(subject: Subject, request: LeaseRequest, reread: () => Promise<T | undefined>): Promise<MissOutcome<T>> {
    const lease = await this.tryAcquire(subject, request.ttlMs);
    if (lease !== undefined) return this.claim(subject, lease, request, reread, false);
    this.counters.waits++;
    const name = l1Key(subject.kind, subject.id);
    let wait = this.waits.get(name);
    if (wait === undefined) this.waits.set(name, (wait = { subject, reread, waiters: [] }));
    if (wait.waiters.length >= MAX_WAITERS_PER_SUBJECT) return { kind: 'gave-up' };
    const traced = this.tracer?.start('lease wait', { 'context_cache.subject.kind': subject.kind, 'context_cache.lease.waiters': wait.waiters.length + 1 });
    const outcome = new Promise<MissOutcome<unknown>>((resolve) =>
      wait.waiters.push({ request, resolve: traced === undefined ? resolve : (result) => (traced.end({ attributes: { 'context_cache.lease.outcome': result.kind } }), resolve(result)) }),
    );
    if (wait.waiters.length === 1) void this.runWait(name, wait);
    return outcome as Promise<MissOutcome<T>>;
  }

  /**
   * A lease was granted to this caller. A fill writes the value and frees
   * the lease in one step, so a free lease may mean "just filled": look once
   * more before sending the caller to the database.
   */
  private async claim<T>(subject: Subject, lease: LeaseGrant, request: LeaseRequest, reread: () => Promise<T | undefined>, waited: boolean): Promise<MissOutcome<T>> {
    const filled = await reread();
    if (filled !== undefined) {
      if (!waited) this.counters.waits++;
      await this.release(subject, lease);
      return { kind: 'filled', value: filled };
    }
    if (Date.now() >= request.callDeadline) {
      // Nobody would fill it: free it for the next caller instead of making everyone wait out its TTL.
      await this.release(subject, lease);
      return { kind: 'gave-up' };
    }
    this.counters.granted++;
    return { kind: 'lease', lease };
  }

  /** The shared wait of one subject: runs while anyone waits. */
  private async runWait(name: string, wait: SharedWait): Promise<void> {
    const { waiters } = wait;
    try {
      while (waiters.length > 0) {
        const now = Date.now();
        for (let i = waiters.length - 1; i >= 0; i--) {
          if (waiters[i]!.request.waitUntil <= now) waiters.splice(i, 1)[0]!.resolve({ kind: 'gave-up' });
        }
        if (waiters.length === 0) break;
        const soonest = Math.min(...waiters.map((waiter) => waiter.request.waitUntil));
        await this.sleep(name, Math.min(soonest - now, POLL_INTERVAL_MS));
        const value = await wait.reread();
        if (value !== undefined) {
          for (const waiter of waiters.splice(0)) waiter.resolve({ kind: 'filled', value });
          break;
        }
        const head = waiters[0];
        if (head === undefined || head.request.waitUntil <= Date.now()) continue;
        const lease = await this.tryAcquire(wait.subject, head.request.ttlMs);
        if (lease === undefined) continue;
        waiters.splice(waiters.indexOf(head), 1);
        const outcome = await this.claim(wait.subject, lease, head.request, wait.reread, true);
        head.resolve(outcome);
        if (outcome.kind === 'filled') for (const waiter of waiters.splice(0)) waiter.resolve(outcome);
      }
    } catch (error) {
      // A failed re-read or lease attempt ends the wait for everyone: a plain miss, as when the wait runs out.
      for (const waiter of waiters.splice(0)) waiter.resolve({ kind: 'gave-up' });
      void error;
    } finally {
      if (this.waits.get(name) === wait) this.waits.delete(name);
    }
  }

  /** Reads; on a miss, takes the lease or waits for another caller's fill (see onMiss). */
  async readOrLease<T>(subject: Subject, request: LeaseRequest, read: () => Promise<T | undefined>): Promise<LeasedRead<T>> {
    const value = await read();
    if (value !== undefined) return { read: value, lease: undefined, waited: false };
    const outcome = await this.onMiss(subject, request, read);
    switch (outcome.kind) {
      case 'filled':
        return { read: outcome.value, lease: undefined, waited: true };
      case 'lease':
        return { read: undefined, lease: outcome.lease, waited: false };
      case 'gave-up':
        return { read: undefined, lease: undefined, waited: true };
    }
  }

  /** Whether a token is one this sidecar granted from memory. */
  static isLocal(token: string): boolean {
    return token.startsWith(LOCAL_PREFIX);
  }

  /**
   * Consumes a memory-granted lease for a fill while Redis is unusable; a
   * token that is not the current one is stale, and so is one granted
   * before one of the fill's tags was invalidated. A token that is not the
   * current one leaves the current holder's lease alone (as Redis does), so
   * a lapsed holder's late fill cannot cost the new holder its fill.
   */
  consumeLocal(subject: Subject, token: string, tags: readonly string[] = []): void {
    const name = l1Key(subject.kind, subject.id);
    const held = this.local.get(name);
    if (held === undefined || held.token !== token) throw this.refused();
    this.local.delete(name);
    const { grantedAt } = splitToken(token);
    if (held.expiresAt < Date.now() || tags.some((tag) => (this.localTagStamps.get(tag) ?? 0) >= grantedAt)) throw this.refused();
  }

  /** Tags were invalidated here: memory leases granted before may not fill entries carrying them. */
  stampTags(tags: readonly string[]): void {
    const now = Date.now();
    for (const tag of tags) this.localTagStamps.set(tag, now);
  }

  /** A write landed: memory-granted leases of the subject are void. */
  revokeLocal(subject: Subject): void {
    this.local.delete(l1Key(subject.kind, subject.id));
  }

  /** A fill under a lease was refused as stale (here or by Redis): counted, and the error to answer with. */
  refused(): CacheError {
    this.counters.staleFillsRefused++;
    return staleLease();
  }

  /** Gives back a lease this call does not need after all; best effort (it lapses anyway). */
  private async release(subject: Subject, lease: LeaseGrant): Promise<void> {
    if (LeaseManager.isLocal(lease.token)) {
      const name = l1Key(subject.kind, subject.id);
      if (this.local.get(name)?.token === lease.token) this.local.delete(name);
      return;
    }
    await this.shared()
      ?.store.release(subject, splitToken(lease.token).base)
      .catch(() => undefined);
  }

  private async tryAcquire(subject: Subject, ttlMs: number): Promise<LeaseGrant | undefined> {
    const shared = this.shared();
    if (shared !== undefined) {
      try {
        // Read before the grant: an invalidation stamped at or after this time refuses the fill.
        const grantedAt = await shared.clockUs();
        const hold = await shared.store.tryAcquire(subject, ttlMs);
        if (hold === undefined) return undefined;
        const lease = { token: withGrantTime(hold.token, grantedAt), expiresAt: hold.expiresAt };
        if (hold.expiresAt > Date.now()) return lease;
        // A grant that took longer than the lease itself (a stalled event loop) is worth nothing.
        await this.release(subject, lease);
        return undefined;
      } catch (error) {
        if (!isCacheError(error, 'E_UNAVAILABLE')) throw error;
        // Redis went away between the check and the call: decide locally.
      }
    }
    const now = Date.now();
    const name = l1Key(subject.kind, subject.id);
    const held = this.local.get(name);
    if (held !== undefined && held.expiresAt > now) return undefined;
    const lease = { token: withGrantTime(LOCAL_PREFIX + randomToken(12), now), expiresAt: now + ttlMs };
    this.local.set(name, lease, { ttl: ttlMs });
    return lease;
  }

  private sleep(wakeKey: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      let sleepers = this.sleepers.get(wakeKey);
      if (sleepers === undefined) this.sleepers.set(wakeKey, (sleepers = new Set()));
      const set = sleepers;
      const done = () => {
        clearTimeout(timer);
        set.delete(done);
        if (set.size === 0 && this.sleepers.get(wakeKey) === set) this.sleepers.delete(wakeKey);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }

  private wake(wakeKey: string): void {
    const sleepers = this.sleepers.get(wakeKey);
    if (sleepers === undefined) return;
    for (const done of [...sleepers]) done();
  }
}
