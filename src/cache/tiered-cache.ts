import { conflict, CacheError, tooLarge } from '../errors';
import type { Logger } from '../log';
import type { RedisLink } from '../redis/connection';
import type { Bus } from './bus';
import type { CacheEvent, EventEnvelope, EventHub, ResyncReason } from './events';
import { L1Cache, type Entry } from './l1';
import type { L2Store } from './l2';
import { LeaseManager, type LeasedRead, type LeaseRequest } from './leases';
import type { Mutex } from '../redis/mutex';

export type Tier = 'l1' | 'l2';

/** L1 key of a generic entry; sessions live in the same L1 under another prefix. */
export const lk = (key: string): string => `k:${key}`;
const keyOfL1 = (l1Key: string): string => l1Key.slice(2);
/** `local`: only this sidecar's memory holds the write; `shared`: Redis and every sidecar do. */
export type WriteScope = 'local' | 'shared';

export interface ReadResult {
  entry: Entry;
  source: Tier;
}

export interface SetOptions {
  ttlMs: number;
  tags: readonly string[];
  /** Compare-and-set on the current version (0: no condition). */
  ifVersion: number;
  ifAbsent: boolean;
  /** A fill under a lease from a Get miss; '' for a plain write. */
  leaseToken: string;
}

export interface WriteResult {
  entry: Entry;
  scope: WriteScope;
}

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

/** The shared tier, when Redis is configured: the store, its link, the bus and the lease mutex. */
export interface SharedTier {
  l2: L2Store;
  link: RedisLink;
  bus: Bus;
  leaseMutex: Mutex;
}

/**
 * How far L1 can be trusted right now.
 *  - `l1-only`:  no Redis configured; L1 is the cache.
 *  - `coherent`: subscribed to the bus, so every invalidation reaches L1.
 *  - `detached`: Redis answers but the subscription is down: invalidations
 *                may be missed, so reads bypass L1 and go to Redis.
 *  - `degraded`: Redis is unreachable: L1 serves what it has, writes stay local.
 */
export type CoherenceMode = 'l1-only' | 'coherent' | 'detached' | 'degraded';

export interface TieredCacheCounters {
  l2Errors: number;
  resyncs: number;
  localWrites: number;
  /** Events published on the bus (each shared write publishes one). */
  published: number;
}

/**
 * The generic key/value cache: the one place that decides which tier
 * answers a read, where a write goes, and when L1 can no longer be trusted.
 * It knows nothing of gRPC.
 */
export class TieredCache {
  readonly counters: TieredCacheCounters = { l2Errors: 0, resyncs: 0, localWrites: 0, published: 0 };
  readonly leases: LeaseManager;
  readonly versions = new VersionClock();
  private readonly remoteAppliers: ((event: CacheEvent) => void)[] = [];
  /**
   * Bumped on every flush and every tag invalidation: a read that began
   * before either may not fill L1 (its value may be one of those invalidated,
   * and a tag invalidation leaves no per-key floor behind).
   */
  private epoch = 0;

  constructor(
    readonly l1: L1Cache,
    private readonly shared: SharedTier | undefined,
    private readonly events: EventHub,
    private readonly sidecarId: string,
    private readonly log: Logger,
  ) {
    this.leases = new LeaseManager(
      () => (this.sharedUsable() ? { mutex: this.shared!.leaseMutex, clockUs: () => this.redisClockUs() } : undefined),
      events,
    );
    shared?.bus.on('events', (envelopes: EventEnvelope[]) => {
      for (const envelope of envelopes) this.applyRemote(envelope);
    });
    shared?.bus.on('subscribed', (restored: boolean) => {
      // Before this subscription nothing told L1 about other sidecars' writes: whatever it
      // holds (local writes while Redis was away, or an earlier subscription's state) is suspect,
      // and so is any read still in flight from before.
      this.epoch++;
      if (restored || this.l1.entries > 0) this.resync('subscription-restored');
    });
  }

  /** Changes on every L1 flush and tag invalidation: a read that began before may not fill L1. */
  get generation(): number {
    return this.epoch;
  }

  get mode(): CoherenceMode {
    if (this.shared === undefined) return 'l1-only';
    if (!this.shared.link.connected) return 'degraded';
    return this.shared.bus.subscribed ? 'coherent' : 'detached';
  }

  async get(key: string): Promise<ReadResult | undefined> {
    return (await this.getMany([key]))[0];
  }

  /** A read that, on a miss, grants a fill lease or waits for another caller's fill. */
  getOrLease(key: string, request: LeaseRequest): Promise<LeasedRead<ReadResult>> {
    return this.leases.readOrLease(() => this.get(key), this.leaseKey(key), lk(key), request);
  }

  /** L1 first; the keys L1 cannot answer go to Redis in one round trip. */
  async getMany(keys: readonly string[]): Promise<(ReadResult | undefined)[]> {
    const mode = this.mode;
    const results: (ReadResult | undefined)[] = new Array(keys.length);
    const missing: number[] = [];
    keys.forEach((key, index) => {
      const entry = mode === 'detached' ? undefined : this.l1.get(lk(key));
      if (entry !== undefined) results[index] = { entry, source: 'l1' };
      else missing.push(index);
    });
    if (missing.length === 0 || (mode !== 'coherent' && mode !== 'detached')) return results;

    const generation = this.epoch;
    const missingKeys = missing.map((index) => keys[index]!);
    let entries: (Entry | undefined)[];
    try {
      entries = await this.shared!.l2.getMany(missingKeys);
    } catch (error) {
      this.l2Failed(error, 'read');
      if (mode === 'detached') for (const index of missing) results[index] = this.l1Fallback(keys[index]!);
      return results;
    }
    const fill = this.mode === 'coherent' && generation === this.epoch;
    missing.forEach((index, position) => {
      const entry = entries[position];
      if (entry === undefined) return;
      results[index] = { entry, source: 'l2' };
      if (fill) this.l1.set(lk(keys[index]!), entry);
    });
    return results;
  }

  async set(key: string, value: Buffer, options: SetOptions): Promise<WriteResult> {
    if (this.sharedUsable()) {
      try {
        const entry = await this.shared!.l2.set(key, value, options, () => this.leases.refused());
        this.leases.revokeLocal(this.leaseKey(key));
        this.counters.published++;
        this.l1.set(lk(key), entry);
        this.announce({ kind: 'key', key, change: 'set', version: entry.version, tags: entry.tags });
        return { entry, scope: 'shared' };
      } catch (error) {
        if (error instanceof CacheError) throw error;
        this.l2Failed(error, 'write');
      }
    }
    return this.setLocal(key, value, options);
  }

  async delete(keys: readonly string[]): Promise<{ deleted: number; scope: WriteScope }> {
    const unique = [...new Set(keys)];
    if (this.sharedUsable()) {
      try {
        const { existed, versions } = await this.shared!.l2.delete(unique);
        this.counters.published++;
        unique.forEach((key, index) => {
          this.l1.invalidate(lk(key), versions[index]!);
          this.announce({ kind: 'key', key, change: 'deleted', version: versions[index]!, tags: [] });
        });
        return { deleted: existed, scope: 'shared' };
      } catch (error) {
        this.l2Failed(error, 'delete');
      }
    }
    this.counters.localWrites++;
    let deleted = 0;
    for (const key of unique) {
      const version = this.versions.next(this.l1.knownVersion(lk(key)));
      this.leases.revokeLocal(this.leaseKey(key));
      if (this.l1.peek(lk(key)) !== undefined) deleted++;
      this.l1.invalidate(lk(key), version);
      this.announce({ kind: 'key', key, change: 'deleted', version, tags: [] });
    }
    return { deleted, scope: 'local' };
  }

  async invalidateTags(tags: readonly string[]): Promise<{ localEntriesRemoved: number; scope: WriteScope }> {
    let scope: WriteScope = 'local';
    let removedInRedis: string[] = [];
    if (this.sharedUsable()) {
      try {
        removedInRedis = await this.shared!.l2.invalidateTags(tags);
        this.counters.published++;
        scope = 'shared';
      } catch (error) {
        this.l2Failed(error, 'invalidate tags');
      }
    }
    if (scope === 'local') this.counters.localWrites++;
    this.epoch++;
    this.leases.stampTags(tags);
    const removedHere = this.l1.invalidateTags(tags).map(keyOfL1);
    this.announce({ kind: 'tags', tags, keys: [...new Set([...removedInRedis, ...removedHere])] });
    return { localEntriesRemoved: removedHere.length, scope };
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

  /** Registers how another part (sessions) applies remote events to L1, before watchers hear of them. */
  onRemoteEvent(apply: (event: CacheEvent) => void): void {
    this.remoteAppliers.push(apply);
  }

  /** Applies another sidecar's event to L1 and passes it on to watchers. */
  private applyRemote(envelope: EventEnvelope): void {
    const { event } = envelope;
    if (event.kind === 'key') this.l1.invalidate(lk(event.key), event.version);
    else if (event.kind === 'tags') {
      this.epoch++;
      this.l1.invalidateTags(event.tags);
    }
    for (const apply of this.remoteAppliers) apply(event);
    this.events.emit(envelope);
  }

  /** Tells this sidecar's watchers (and waiters) about a change made here. */
  announce(event: CacheEvent): void {
    this.events.emit({ event, origin: this.sidecarId, time: Date.now() });
  }

  private setLocal(key: string, value: Buffer, options: SetOptions): WriteResult {
    if (options.leaseToken !== '') this.leases.consumeLocal(this.leaseKey(key), options.leaseToken, options.tags);
    else this.leases.revokeLocal(this.leaseKey(key));
    const current = this.l1.peek(lk(key));
    if (options.ifAbsent && current !== undefined) {
      throw conflict(`key "${key}" exists (version ${current.version}); if_absent refused the write`);
    }
    if (options.ifVersion !== 0 && current?.version !== options.ifVersion) {
      throw conflict(
        current === undefined
          ? `key "${key}" does not exist; if_version ${options.ifVersion} refused the write`
          : `key "${key}" has version ${current.version}, not ${options.ifVersion}; if_version refused the write`,
      );
    }
    const now = Date.now();
    const entry: Entry = { value, version: this.versions.next(this.l1.knownVersion(lk(key))), tags: options.tags, expiresAt: now + options.ttlMs };
    if (!this.l1.set(lk(key), entry, now)) {
      throw tooLarge(`the value does not fit in this sidecar's memory tier (${this.l1.maxBytes} bytes) and Redis is not reachable, so it cannot be stored`);
    }
    if (this.shared !== undefined) this.counters.localWrites++;
    this.announce({ kind: 'key', key, change: 'set', version: entry.version, tags: entry.tags });
    return { entry, scope: 'local' };
  }

  private leaseKey(key: string): string {
    return this.shared?.l2.keys.lease(key) ?? lk(key);
  }

  private l1Fallback(key: string): ReadResult | undefined {
    const entry = this.l1.get(lk(key));
    return entry === undefined ? undefined : { entry, source: 'l1' };
  }

  /** Redis's clock; a failure counts like any Redis failure and reads as "unavailable". */
  private async redisClockUs(): Promise<number> {
    try {
      return await this.shared!.l2.clockUs();
    } catch (error) {
      this.l2Failed(error, 'read the Redis clock');
      throw new CacheError('E_UNAVAILABLE', 'Redis did not answer TIME', { cause: error });
    }
  }

  /** Whether Redis can be used for this operation right now. */
  sharedUsable(): boolean {
    return this.shared !== undefined && this.shared.link.connected;
  }

  /** Counts a failed Redis operation; a timeout marks the link down so later calls skip Redis. */
  l2Failed(error: unknown, operation: string): void {
    this.counters.l2Errors++;
    const message = (error as Error).message ?? String(error);
    if (/timed? ?out/i.test(message)) this.shared?.link.reconnect();
    this.log.debug({ operation, err: message }, 'redis operation failed; degrading to L1');
  }
}
