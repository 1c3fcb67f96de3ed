import { isCacheError, unavailable } from '../errors';
import type { Logger } from '../log';
import type { CoherenceMode, Entry, L1Value, Tier, WriteScope } from '../model/entry';
import type { AppendedHint, CacheEvent, RemoteEnvelope, RemoteEvent, ResyncReason } from '../model/events';
import { l1Key, type SubjectKind } from '../model/subject';
import type { EventHub } from './event-hub';
import type { L1Cache } from './l1';
import { LeaseManager } from './leases';
import { PENDING_KINDS, PendingInvalidations, type PendingKind } from './pending';
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
  /** Invalidations of local writes replayed into Redis once it was back. */
  replayed: number;
  /** Namespace-wide invalidations (the pending set overflowed). */
  namespaceFlushes: number;
}

/** A read as a tier answered it. */
export interface TierRead<V> {
  entry: Entry<V>;
  source: Tier;
  /** Served from L1 while it could not be trusted to be current (Redis unusable). */
  degraded: boolean;
}

/** What a write touched, as the replay names it. */
export interface Touched {
  kind: PendingKind;
  name: string;
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
  /** What the write changes: invalidated in Redis later if the write stays local. */
  touches: readonly Touched[];
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
/** How a kind invalidates its subjects in Redis (and in L1) during a replay; resolves with the events to announce. */
export type Replayer = (names: string[]) => Promise<readonly CacheEvent[]>;

export interface TiersOptions {
  /** How long after Redis became unusable L1 may still answer (Infinity: no bound). */
  degradedMaxAgeMs: number;
  /** The set of writes to replay (bounds for tests). */
  pending?: PendingInvalidations;
}

/**
 * How far ahead of this host's clock a version (Redis TIME in µs) of another
 * sidecar's event may be before it is taken for a forgery: far beyond any
 * real clock skew, far below the 2^53 that would pin an entry forever.
 */
const PLAUSIBLE_AHEAD_US = 10 * 60 * 1_000_000;

/**
 * A lower bound of how far Redis's clock runs ahead of this host's, learned
 * from Redis TIME: versions of remote events are judged against it.
 */
class RedisClockEstimate {
  private aheadUs = 0;

  observe(redisUs: number): void {
    this.aheadUs = Math.max(this.aheadUs, redisUs - Date.now() * 1000);
  }

  plausible(version: number): boolean {
    return version <= Date.now() * 1000 + this.aheadUs + PLAUSIBLE_AHEAD_US;
  }
}

/**
 * Resolves another sidecar's append: applied to L1 at once (at the least, the
 * copy is dropped) and returns what watchers are told now; `later` tells
 * them what comes of a fetch from Redis, in the order fetches complete.
 */
export type AppendedResolver = (hint: AppendedHint, later: (event: CacheEvent) => void) => CacheEvent | undefined;

/** Subjects per kind in one replay round trip. */
const REPLAY_BATCH = 256;
const REPLAY_RETRY_BASE_MS = 50;
const REPLAY_RETRY_MAX_MS = 2000;

export class Tiers {
  readonly counters: TierCounters = { l2Errors: 0, resyncs: 0, published: 0, replayed: 0, namespaceFlushes: 0 };
  readonly leases: LeaseManager;
  /** Writes that may not have reached Redis, to replay as invalidations. */
  readonly pending: PendingInvalidations;
  private readonly versions = new VersionClock();
  private readonly remoteAppliers: ((event: CacheEvent) => void)[] = [];
  private appendedResolver: AppendedResolver | undefined;
  private readonly redisClock = new RedisClockEstimate();
  /** Remote events refused as implausible (a version far ahead of Redis's clock). */
  implausibleEvents = 0;
  private readonly replayers = new Map<PendingKind, Replayer>();
  private replaying = false;
  private replayFailures = 0;
  private replayTimer: NodeJS.Timeout | undefined;
  /**
   * When the current outage began — the link went down, or a write stayed
   * local under a link that still answered — for the degraded-read cap;
   * undefined while Redis is usable and nothing is pending.
   */
  private unusableSince: number | undefined;
  private closed = false;
  private readonly modeListeners: ((mode: CoherenceMode) => void)[] = [];
  /** The mode the listeners were last told of. */
  private reportedMode: CoherenceMode | undefined;
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
    private readonly options: TiersOptions = { degradedMaxAgeMs: Number.POSITIVE_INFINITY },
  ) {
    this.pending = options.pending ?? new PendingInvalidations();
    this.leases = new LeaseManager(() => (this.sharedUsable() ? { store: shared!.leases, clockUs: () => this.redisClockUs() } : undefined), events);
    shared?.bus.onEvents((envelopes) => this.receive(envelopes));
    shared?.bus.onSubscribed((restored) => {
      // Before this subscription nothing told L1 about other sidecars' writes: whatever it
      // holds (local writes while Redis was away, or an earlier subscription's state) is suspect,
      // and so is any read still in flight from before.
      this.epoch++;
      if (restored || this.l1.entries > 0) this.resync('subscription-restored');
      this.noteMode();
    });
    shared?.bus.onChange(() => this.noteMode());
    shared?.onDataLost(() => this.resync('redis-data-lost'));
    shared?.onConnected(() => {
      if (this.pending.empty) this.unusableSince = undefined;
      this.scheduleReplay(0);
      shared.clockUs().then(
        (us) => this.redisClock.observe(us),
        () => undefined,
      );
      this.noteMode();
    });
    shared?.onDisconnected(() => {
      this.unusableSince ??= Date.now();
      this.noteMode();
    });
  }

  /**
   * Told of every change of `mode`, after the events it caused (a resync on
   * re-subscription) were announced: Watch streams tell their clients
   * whether to trust their own copies.
   */
  onModeChange(listener: (mode: CoherenceMode) => void): void {
    this.modeListeners.push(listener);
    this.reportedMode ??= this.mode;
  }

  private noteMode(): void {
    if (this.modeListeners.length === 0) return;
    const mode = this.mode;
    if (mode === this.reportedMode) return;
    this.reportedMode = mode;
    for (const listener of this.modeListeners) listener(mode);
  }

  /**
   * `degraded` also while Redis answers again but the writes it missed are
   * not replayed yet: until then this sidecar's L1 and Redis disagree.
   */
  get mode(): CoherenceMode {
    if (this.shared === undefined) return 'l1-only';
    if (!this.sharedUsable()) return 'degraded';
    return this.shared.bus.subscribed ? 'coherent' : 'detached';
  }

  /** Changes on every L1 flush and tag invalidation: a read that began before may not fill L1. */
  get generation(): number {
    return this.epoch;
  }

  /** Whether Redis can be used for an operation right now: connected, and nothing left to replay. */
  sharedUsable(): boolean {
    const usable = this.shared !== undefined && this.shared.connected && this.pending.empty && !this.replaying;
    if (usable) this.unusableSince = undefined;
    return usable;
  }

  /** Registers how a kind of subject is invalidated in Redis when the writes it missed are replayed. */
  onReplay(kind: PendingKind, replay: Replayer): void {
    this.replayers.set(kind, replay);
  }

  /** Stops replay retries. Idempotent. */
  close(): void {
    this.closed = true;
    clearTimeout(this.replayTimer);
  }

  /**
   * What L1 alone answers for one id, at once: the hot path of a Get, which
   * needs no promise when L1 holds the value. Undefined when L1 misses or
   * may not answer now: then `read`, which counts the miss.
   */
  readLocal<V extends L1Value>(kind: SubjectKind, id: string): TierRead<V> | undefined {
    const mode = this.mode;
    if (!this.l1Answers(mode)) return undefined;
    // A miss is counted by the `read` that follows it.
    const entry = this.l1.getIfHit<V>(l1Key(kind, id));
    return entry === undefined ? undefined : { entry, source: 'l1', degraded: mode === 'degraded' };
  }

  /** Past the cap, a degraded sidecar answers misses: the app reads its source of truth. */
  private l1Answers(mode: CoherenceMode): boolean {
    return mode !== 'detached' && (mode !== 'degraded' || this.degradedReadsAllowed());
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
    const degraded = mode === 'degraded';
    const l1Allowed = this.l1Answers(mode);
    ids.forEach((id, index) => {
      const entry = l1Allowed ? this.l1.get<V>(l1Key(spec.kind, id)) : undefined;
      if (entry !== undefined) results[index] = { entry, source: 'l1', degraded };
      else missing.push(index);
    });
    if (missing.length === 0 || (mode !== 'coherent' && mode !== 'detached')) return results;

    const generation = this.epoch;
    let entries: (Entry<V> | undefined)[];
    try {
      entries = await spec.fetch(missing.map((index) => ids[index]!));
    } catch (error) {
      this.failed(error, spec.operation);
      if (mode === 'detached' && this.degradedReadsAllowed()) {
        for (const index of missing) {
          const entry = this.l1.get<V>(l1Key(spec.kind, ids[index]!));
          if (entry !== undefined) results[index] = { entry, source: 'l1', degraded: true };
        }
      }
      return results;
    }
    const fill = this.mode === 'coherent' && generation === this.epoch;
    missing.forEach((index, position) => {
      const entry = entries[position];
      if (entry === undefined) return;
      results[index] = { entry, source: 'l2', degraded: false };
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
    let written = shared;
    if (written !== undefined) this.counters.published++;
    else {
      written = paths.local();
      // A read in flight may carry a version from Redis's clock above this write's local one: it may not fill L1.
      this.epoch++;
      if (this.shared !== undefined) this.recordPending(paths.touches);
    }
    const { result, events, after } = written;
    for (const event of events) this.announce(event);
    await after?.();
    return { ...result, scope: shared === undefined ? 'local' : 'shared' };
  }

  /**
   * A write stayed local: Redis and the other sidecars still hold what it
   * superseded. Remembered for the replay; if Redis answers right now (it
   * failed under this write), the replay starts at once.
   */
  private recordPending(touches: readonly Touched[]): void {
    this.unusableSince ??= Date.now();
    for (const { kind, name } of touches) this.pending.add(kind, name);
    this.noteMode();
    if (this.shared!.connected) this.scheduleReplay(0);
  }

  private scheduleReplay(delayMs: number): void {
    if (this.closed || this.replayTimer !== undefined) return;
    this.replayTimer = setTimeout(() => {
      this.replayTimer = undefined;
      void this.replay();
    }, delayMs);
    this.replayTimer.unref();
  }

  /**
   * Replays the pending set as invalidations, in batches, until it is empty
   * — before this sidecar returns to coherent mode or answers a write as
   * SHARED. Each kind's replayer deletes in Redis (revoking fill leases and
   * announcing, in the same script), drops its own L1 copies, and returns the
   * events for this sidecar's watchers. A set that overflowed becomes one
   * namespace-wide invalidation. A failure puts the batch back and retries
   * with backoff (and on the next reconnection).
   */
  private async replay(): Promise<void> {
    const shared = this.shared;
    if (shared === undefined || this.replaying || this.pending.empty || !shared.connected) return;
    this.replaying = true;
    const started = Date.now();
    let replayed = 0;
    try {
      while (shared.connected && !this.pending.empty) {
        if (this.pending.overflowed) {
          // Cleared first: a write that stays local while the flush runs must be replayed after it.
          this.pending.clear();
          try {
            await shared.flushNamespace();
          } catch (error) {
            this.pending.overflow();
            throw error;
          }
          this.counters.namespaceFlushes++;
          this.log.warn('more writes stayed local than can be named: invalidated the whole namespace in Redis and in every sidecar');
          this.resync('namespace-flushed');
          continue;
        }
        const batch = this.pending.take(REPLAY_BATCH);
        try {
          const events = await Promise.all(PENDING_KINDS.map((kind) => (batch[kind].length === 0 ? [] : this.replayers.get(kind)!(batch[kind]))));
          for (const event of events.flat()) this.announce(event);
        } catch (error) {
          this.pending.restore(batch);
          throw error;
        }
        const count = PENDING_KINDS.reduce((sum, kind) => sum + batch[kind].length, 0);
        replayed += count;
        this.counters.replayed += count;
      }
      this.replayFailures = 0;
      if (this.pending.empty && shared.connected) this.unusableSince = undefined;
      if (replayed > 0) this.log.info({ replayed, tookMs: Date.now() - started }, 'replayed the invalidations of writes that did not reach Redis');
    } catch (error) {
      this.failed(error, 'replay invalidations');
      this.replayFailures++;
      const ceiling = Math.min(REPLAY_RETRY_MAX_MS, REPLAY_RETRY_BASE_MS * 2 ** Math.min(this.replayFailures, 10));
      if (shared.connected) this.scheduleReplay(ceiling / 2 + Math.random() * (ceiling / 2));
    } finally {
      this.replaying = false;
      this.noteMode();
    }
    // Writes that stayed local while the last batch was in flight.
    if (!this.pending.empty && shared.connected && this.replayFailures === 0) this.scheduleReplay(0);
  }

  /** Whether L1 may still answer while degraded: within CONTEXT_CACHE_DEGRADED_MAX_AGE of the outage's start. */
  private degradedReadsAllowed(): boolean {
    if (this.options.degradedMaxAgeMs === Number.POSITIVE_INFINITY) return true;
    this.unusableSince ??= this.shared?.downSince ?? Date.now();
    return Date.now() - this.unusableSince < this.options.degradedMaxAgeMs;
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

  /** Registers how a hint of another sidecar's append is applied (the node fetched from Redis, or the copy dropped). */
  onAppended(resolve: AppendedResolver): void {
    this.appendedResolver = resolve;
  }

  /**
   * Other sidecars' events, applied at once and in order: nothing waits for
   * Redis here (an appended node is fetched on the side), so no
   * invalidation is ever held back.
   */
  private receive(envelopes: readonly RemoteEnvelope[]): void {
    for (const envelope of envelopes) {
      const later = (event: CacheEvent) => this.events.emit({ event, origin: envelope.origin, time: envelope.time });
      const event = this.applyRemote(envelope, later);
      if (event !== undefined) later(event);
    }
  }

  /**
   * A remote event is a hint, never state: it can make L1 forget, never
   * install data (an appended node is fetched from Redis) or raise a version
   * floor beyond what Redis's clock makes plausible. Returns what this
   * sidecar's watchers are told, if anything.
   */
  private applyRemote(envelope: RemoteEnvelope, later: (event: CacheEvent) => void): CacheEvent | undefined {
    const { event } = envelope;
    // Another sidecar invalidated the whole namespace: flush here too (this sidecar's own Resync reaches its watchers).
    if (event.kind === 'resync') {
      this.resync(event.reason);
      return undefined;
    }
    if (!this.plausible(event)) {
      this.implausibleEvents++;
      this.log.debug({ kind: event.kind }, 'dropped an implausible event (version far ahead of Redis\'s clock); forgot its subject');
      if (event.kind === 'key') this.l1.delete(l1Key('entry', event.key));
      else if (event.kind === 'session' || event.kind === 'appended') this.l1.delete(l1Key('session', event.sessionId));
      return undefined;
    }
    if (event.kind === 'appended') return this.appendedResolver ? this.appendedResolver(event, later) : this.forgetAppended(event);
    for (const apply of this.remoteAppliers) apply(event);
    return event;
  }

  private plausible(event: RemoteEvent): boolean {
    switch (event.kind) {
      case 'key':
      case 'session':
        return this.redisClock.plausible(event.version);
      case 'appended':
        return this.redisClock.plausible(event.sessionVersion) && event.previousVersion < event.sessionVersion;
      default:
        return true;
    }
  }

  /** Without a resolver, an append elsewhere only makes L1 drop its copy. */
  private forgetAppended(hint: AppendedHint): CacheEvent {
    this.l1.invalidate(l1Key('session', hint.sessionId), hint.sessionVersion);
    return { kind: 'session', sessionId: hint.sessionId, change: 'invalidated', version: hint.sessionVersion };
  }

  /** Tells this sidecar's watchers (and lease waiters) about a change made here. */
  private announce(event: CacheEvent): void {
    this.events.emit({ event, origin: this.sidecarId, time: Date.now() });
  }

  /** Redis's clock; a failure counts like any Redis failure and reads as "unavailable". */
  private async redisClockUs(): Promise<number> {
    try {
      const us = await this.shared!.clockUs();
      this.redisClock.observe(us);
      return us;
    } catch (error) {
      this.failed(error, 'read the Redis clock');
      throw unavailable('Redis did not answer TIME', error);
    }
  }
}
