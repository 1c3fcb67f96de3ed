import { isCacheError, unavailable } from '../errors';
import type { Logger } from '../log';
import type { CoherenceMode, Entry, L1Value, Tier, WriteScope } from '../model/entry';
import type { CacheEvent, EventEnvelope, ResyncReason } from '../model/events';
import { l1Key, type SubjectKind } from '../model/subject';
import type { EventHub } from './event-hub';
import type { L1Cache } from './l1';
import { LeaseManager } from './leases';
import type { SharedTier } from './ports';

/**
 * Issues versions for writes that could not reach Redis: microseconds of
 * wall clock — the scale of the versions Redis assigns — bumped past the
 * last one issued and past `known`, the highest version of the key seen so
 * far (from Redis's clock, which may run ahead of this host's), so a local
 * write always supersedes what L1 knows.
 */
export class VersionClock {
  private last = 0;

  next(known = 0): number {
    this.last = Math.max(this.last + 1, Date.now() * 1000, known + 1);
    return this.last;
  }
}

export interface TierCounters {
  /** Redis operations that failed (the call degraded to L1). */
  l2Errors: number;
  resyncs: number;
  /** Shared writes (each publishes its event on the bus, from the Redis side). */
  published: number;
}

/** A read as a tier answered it. */
export interface TierRead<V> {
  entry: Entry<V>;
  source: Tier;
}

/** How one kind of subject is read through the tiers. */
export interface ReadSpec<V extends L1Value> {
  kind: SubjectKind;
  /** For the log, when Redis fails. */
  operation: string;
  /** The shared tier's copies of `ids` (rejects when Redis fails). */
  fetch(ids: readonly string[]): Promise<(Entry<V> | undefined)[]>;
  /** Stores a copy that came from Redis in L1; by default L1's own rules (never older than what it knows). */
  remember?(id: string, entry: Entry<V>): void;
}

/** A write as it happened on one path: what to answer, and what to announce to this sidecar's watchers. */
export interface Written<T> {
  result: T;
  events: readonly CacheEvent[];
  /** Best-effort follow-up once the write is announced (it must not throw: the write already happened). */
  after?(): Promise<void>;
}

/** The two paths of a write: through Redis (which announces to other sidecars itself), or this sidecar's memory alone. */
export interface WritePaths<T> {
  operation: string;
  /** Writes to Redis and applies the outcome to L1; rejects when Redis fails, or with a CacheError for a refused write. */
  shared(): Promise<Written<T>>;
  /** Applies the write to L1 alone, with a version from `localVersion`; throws a CacheError for a refused write. */
  local(): Written<T>;
}

/**
 * The one write path, and the one read path, of every kind of cached data
 * (generic entries and sessions alike). It owns what decides where data
 * comes from and goes to:
 *  - the coherence mode (how far L1 can be trusted right now),
 *  - the generation (a read that began before a flush may not fill L1),
 *  - the versions of local writes,
 *  - the shared/local decision of each write, and the fallback when Redis fails,
 *  - the counters of all of it, and the announcement of every change.
 * `EntryCache` and `SessionStore` say what their data is; this says where it goes.
 */
export class Tiers {
  readonly counters: TierCounters = { l2Errors: 0, resyncs: 0, published: 0 };
  readonly leases: LeaseManager;
  private readonly versions = new VersionClock();
  private readonly remoteAppliers: ((event: CacheEvent) => void)[] = [];
  /**
   * Bumped on every flush, every (re)subscription and every tag
   * invalidation: a read that began before any of them may not fill L1 (its
   * value may be one of those invalidated, and a tag invalidation leaves no
   * per-key floor behind).
   */
  private epoch = 0;

  constructor(
    readonly l1: L1Cache,
    private readonly shared: SharedTier | undefined,
    private readonly events: EventHub,
    private readonly sidecarId: string,
    private readonly log: Logger,
  ) {
    this.leases = new LeaseManager(() => (this.sharedUsable() ? { store: shared!.leases, clockUs: () => this.redisClockUs() } : undefined), events);
    shared?.bus.onEvents((envelopes) => {
      for (const envelope of envelopes) this.applyRemote(envelope);
    });
    shared?.bus.onSubscribed((restored) => {
      // Before this subscription nothing told L1 about other sidecars' writes: whatever it
      // holds (local writes while Redis was away, or an earlier subscription's state) is suspect,
      // and so is any read still in flight from before.
      this.epoch++;
      if (restored || this.l1.entries > 0) this.resync('subscription-restored');
    });
    shared?.onDataLost(() => this.resync('redis-data-lost'));
  }

  get mode(): CoherenceMode {
    if (this.shared === undefined) return 'l1-only';
    if (!this.shared.connected) return 'degraded';
    return this.shared.bus.subscribed ? 'coherent' : 'detached';
  }

  /** Changes on every L1 flush and tag invalidation: a read that began before may not fill L1. */
  get generation(): number {
    return this.epoch;
  }

  /** Whether Redis can be used for an operation right now. */
  sharedUsable(): boolean {
    return this.shared !== undefined && this.shared.connected;
  }

  /**
   * L1 first; the IDs L1 cannot answer come from Redis in one round trip.
   * Detached (the bus is down), L1 is bypassed: it may have missed
   * invalidations. When Redis fails, detached reads fall back to L1 — stale
   * at worst, which beats nothing — and the others are misses. Redis's
   * answers fill L1 only while coherent and if nothing was flushed meanwhile.
   */
  async read<V extends L1Value>(ids: readonly string[], spec: ReadSpec<V>): Promise<(TierRead<V> | undefined)[]> {
    const mode = this.mode;
    const results: (TierRead<V> | undefined)[] = new Array(ids.length);
    const missing: number[] = [];
    ids.forEach((id, index) => {
      const entry = mode === 'detached' ? undefined : this.l1.get<V>(l1Key(spec.kind, id));
      if (entry !== undefined) results[index] = { entry, source: 'l1' };
      else missing.push(index);
    });
    if (missing.length === 0 || (mode !== 'coherent' && mode !== 'detached')) return results;

    const generation = this.epoch;
    let entries: (Entry<V> | undefined)[];
    try {
      entries = await spec.fetch(missing.map((index) => ids[index]!));
    } catch (error) {
      this.failed(error, spec.operation);
      if (mode === 'detached') {
        for (const index of missing) {
          const entry = this.l1.get<V>(l1Key(spec.kind, ids[index]!));
          if (entry !== undefined) results[index] = { entry, source: 'l1' };
        }
      }
      return results;
    }
    const fill = this.mode === 'coherent' && generation === this.epoch;
    missing.forEach((index, position) => {
      const entry = entries[position];
      if (entry === undefined) return;
      results[index] = { entry, source: 'l2' };
      if (!fill) return;
      if (spec.remember) spec.remember(ids[index]!, entry);
      else this.l1.set(l1Key(spec.kind, ids[index]!), entry);
    });
    return results;
  }

  /**
   * Every write: through Redis when it is usable, else (or when Redis fails
   * underneath it) into this sidecar's memory alone, answered as `local`.
   * A refused write (a CacheError: a failed condition, a stale lease) is
   * refused on either path, never retried locally. The events of the path
   * taken are announced to this sidecar's watchers.
   */
  async write<T>(paths: WritePaths<T>): Promise<T & { scope: WriteScope }> {
    let shared: Written<T> | undefined;
    if (this.sharedUsable()) {
      try {
        shared = await paths.shared();
      } catch (error) {
        if (isCacheError(error)) throw error;
        this.failed(error, paths.operation);
      }
    }
    if (shared !== undefined) this.counters.published++;
    // A read in flight may carry a version from Redis's clock above this write's local one: it may not fill L1.
    else this.epoch++;
    const { result, events, after } = shared ?? paths.local();
    for (const event of events) this.announce(event);
    await after?.();
    return { ...result, scope: shared === undefined ? 'local' : 'shared' };
  }

  /** The version of a write that stays local: above anything L1 knows of the subject. */
  localVersion(kind: SubjectKind, id: string): number {
    return this.versions.next(this.l1.knownVersion(l1Key(kind, id)));
  }

  /** A tag invalidation: reads in flight may hold values that carried the tags. */
  invalidateReadsInFlight(): void {
    this.epoch++;
  }

  /**
   * Nothing cached locally can be trusted any more (events were lost, or
   * Redis lost its data): drop L1 and tell every watcher to do the same.
   */
  resync(reason: ResyncReason): void {
    this.epoch++;
    this.counters.resyncs++;
    const dropped = this.l1.entries;
    this.l1.clear();
    this.log.warn({ reason, droppedEntries: dropped }, 'resync: L1 flushed and watchers told to resynchronize');
    this.announce({ kind: 'resync', reason });
  }

  /** Registers how a kind of data applies other sidecars' events to L1, before watchers hear of them. */
  onRemoteEvent(apply: (event: CacheEvent) => void): void {
    this.remoteAppliers.push(apply);
  }

  /** Counts a failed Redis operation (the caller degrades); the link has already reacted to a timeout. */
  failed(error: unknown, operation: string): void {
    this.counters.l2Errors++;
    this.log.debug({ operation, err: (error as Error)?.message ?? String(error) }, 'redis operation failed; degrading to L1');
  }

  private applyRemote(envelope: EventEnvelope): void {
    for (const apply of this.remoteAppliers) apply(envelope.event);
    this.events.emit(envelope);
  }

  /** Tells this sidecar's watchers (and lease waiters) about a change made here. */
  private announce(event: CacheEvent): void {
    this.events.emit({ event, origin: this.sidecarId, time: Date.now() });
  }

  /** Redis's clock; a failure counts like any Redis failure and reads as "unavailable". */
  private async redisClockUs(): Promise<number> {
    try {
      return await this.shared!.clockUs();
    } catch (error) {
      this.failed(error, 'read the Redis clock');
      throw unavailable('Redis did not answer TIME', error);
    }
  }
}
