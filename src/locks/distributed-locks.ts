import type { KeySpace } from '../cache/l2';
import type { Config } from '../config';
import { CacheError, unavailable } from '../errors';
import type { Logger } from '../log';
import { linkOptions, RedisLink } from '../redis/connection';
import { Mutex } from '../redis/mutex';
import { FencingCounter } from './fencing';

/** A granted lock. */
export interface LockGrant {
  resource: string;
  /** The holder's secret: the value of the lock key on the masters. */
  token: string;
  /** Strictly increasing per resource across all sidecars (see FencingCounter). */
  fence: number;
  /** Epoch ms on this sidecar's clock after which the lock may have lapsed (clock drift already subtracted). */
  expiresAt: number;
}

export interface LockCounters {
  /** Locks granted through this sidecar. */
  acquired: number;
  /** Acquisitions that gave up because the lock stayed busy. */
  busy: number;
}

/** What a stream-bound hold reports while it keeps its lock. */
export interface HoldListener {
  /** The lock was extended; `grant.expiresAt` is the new expiry. */
  extended(grant: LockGrant): void;
  /** An extension failed for good (E_LOCK_NOT_HELD or E_UNAVAILABLE); the hold has stopped. */
  lost(grant: LockGrant, error: CacheError): void;
}

/** Pause between attempts while a lock is busy (the Mutex adds jitter of the same size). */
const RETRY_DELAY_MS = 50;

interface Masters {
  links: readonly RedisLink[];
  /** Whether these links are ours to start and close (dedicated lock masters) or the main command link. */
  owned: boolean;
  describe: readonly string[];
  mutex: Mutex;
  fencing: FencingCounter;
}

/**
 * Distributed locks: mutual exclusion from the Mutex (Redlock over one Redis
 * or a majority of independent masters) plus a fencing token per grant.
 * Nothing here is ever decided from memory: without enough masters every
 * operation fails with E_UNAVAILABLE.
 *
 * The lock key of a resource is `cc:<ns>:lock:<resource>` (its value the
 * token), its fencing counter `cc:<ns>:fence:<resource>`.
 */
export class DistributedLocks {
  readonly counters: LockCounters = { acquired: 0, busy: 0 };
  private readonly masters: Masters | undefined;
  /** Locks granted here and not released here, by token, with the expiry this sidecar last saw. */
  private readonly granted = new Map<string, number>();
  private readonly holds = new Set<Hold>();
  /** Operations in flight, so that close() can wait for them before closing connections. */
  private readonly pending = new Set<Promise<unknown>>();
  private readonly closing = new AbortController();
  /** One per acquisition in flight: aborted by its caller's signal, or all at once by close(). */
  private readonly waits = new Set<AbortController>();
  private closed: Promise<void> | undefined;

  /**
   * Locks on CONTEXT_CACHE_LOCK_REDIS_URLS when set (with connections of
   * their own), else on the main Redis command link, else none (L1-only).
   */
  static create(config: Config, mainLink: RedisLink | undefined, keys: KeySpace, log: Logger): DistributedLocks {
    if (config.lockRedis !== undefined) {
      const options = linkOptions(config);
      const links = config.lockRedis.map((master) => new RedisLink('locks', master, options, log.child({ lockMaster: master.describe })));
      // Redlock selects one database on every master: the first URL's (each master's fencing counter lives in its own URL's).
      return new DistributedLocks(keys, log, { links, owned: true, describe: config.lockRedis.map((m) => m.describe), db: config.lockRedis[0]!.db });
    }
    if (mainLink !== undefined && config.redis !== undefined) {
      return new DistributedLocks(keys, log, { links: [mainLink], owned: false, describe: [config.redis.describe], db: config.redis.db });
    }
    return new DistributedLocks(keys, log, undefined);
  }

  constructor(
    private readonly keys: KeySpace,
    private readonly log: Logger,
    masters: { links: readonly RedisLink[]; owned: boolean; describe: readonly string[]; db: number } | undefined,
  ) {
    if (masters === undefined) return;
    const clients = masters.links.map((link) => link.client);
    const onError = (index: number, error: Error) => {
      // A hung master: drop its connection so that later commands fail at once instead of waiting for the timeout.
      if (/timed? ?out/i.test(error.message)) masters.links[index]?.reconnect();
    };
    this.masters = { ...masters, mutex: new Mutex(clients, masters.db, RETRY_DELAY_MS), fencing: new FencingCounter(clients, onError) };
  }

  /** Starts the connections to dedicated lock masters; the main link is started by its owner. */
  start(): void {
    const masters = this.masters;
    if (masters === undefined || !masters.owned) return;
    for (const link of masters.links) link.start();
    this.log.info({ masters: masters.describe, quorum: masters.fencing.quorum }, 'distributed locks use dedicated Redis masters');
  }

  /** Whether locks are configured at all (not L1-only). */
  get configured(): boolean {
    return this.masters !== undefined;
  }

  /** Calls `listener` whenever a lock master's connection changes state. */
  onStateChange(listener: () => void): void {
    for (const link of this.masters?.links ?? []) link.on('state', listener);
  }

  /** How many lock masters are connected right now (0 without Redis). */
  get connectedMasters(): number {
    return this.masters?.links.filter((link) => link.connected).length ?? 0;
  }

  /** Whether enough masters are connected to grant a lock right now. */
  get ready(): boolean {
    return this.masters !== undefined && this.connectedMasters >= this.masters.fencing.quorum;
  }

  /** GetStats' LockStats. `held`: granted here, not released here, and not expired as far as this sidecar knows. */
  stats(): { acquired: number; busy: number; held: number } {
    this.pruneGranted();
    return { ...this.counters, held: this.granted.size };
  }

  /**
   * Takes the lock on `resource` for `ttlMs`, trying for up to `waitMs`
   * (0: once) while another holder has it. E_LOCK_BUSY when it stays busy;
   * E_UNAVAILABLE when too few masters answer. When `signal` aborts, the
   * wait ends and a lock granted meanwhile is released again.
   */
  acquire(resource: string, ttlMs: number, waitMs: number, signal?: AbortSignal): Promise<LockGrant> {
    return this.run((masters) => this.acquireOn(masters, resource, ttlMs, waitMs, signal));
  }

  /** Pushes the expiry to `ttlMs` from now. E_LOCK_NOT_HELD for a wrong or expired token. */
  extend(resource: string, token: string, ttlMs: number): Promise<number> {
    return this.run(async (masters) => {
      let expiresAt: number;
      try {
        ({ expiresAt } = await masters.mutex.extend(this.keys.lock(resource), token, ttlMs));
      } catch (error) {
        throw this.translate(error, resource, token);
      }
      if (expiresAt <= Date.now()) {
        throw unavailable('Redis took longer than the new TTL to confirm the extension; the lock may lapse at any moment');
      }
      if (this.granted.has(token)) this.granted.set(token, expiresAt);
      return expiresAt;
    });
  }

  /** Releases the lock. E_LOCK_NOT_HELD for a wrong or expired token. */
  release(resource: string, token: string): Promise<void> {
    return this.run(async (masters) => {
      try {
        await masters.mutex.release(this.keys.lock(resource), token);
      } catch (error) {
        throw this.translate(error, resource, token);
      }
      this.granted.delete(token);
    });
  }

  /**
   * Acquires like `acquire`, as a hold: `keep()` extends it in the
   * background until `release()` (which never throws).
   */
  hold(resource: string, ttlMs: number, waitMs: number, signal?: AbortSignal): Promise<Hold> {
    return this.run(async (masters) => {
      const grant = await this.acquireOn(masters, resource, ttlMs, waitMs, signal);
      const hold = new Hold(grant, ttlMs, {
        extend: (token, ms) => this.extend(resource, token, ms),
        release: (token) => this.releaseQuietly(masters, resource, token),
        done: (finished) => this.holds.delete(finished),
        track: (promise) => this.track(promise),
        bug: (error) => this.log.error({ err: error }, 'a lock hold listener failed'),
      });
      this.holds.add(hold);
      return hold;
    });
  }

  /**
   * Shutdown: ends waits, lets operations in flight finish, releases every
   * stream-bound hold (a sidecar that goes away gives those locks back at
   * once instead of letting them lapse), then closes dedicated connections.
   * Locks granted by AcquireLock belong to their callers and stay.
   */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing.abort();
      for (const wait of this.waits) wait.abort();
      const releaseHolds = () => Promise.all([...this.holds].map((hold) => hold.release()));
      await releaseHolds();
      // Acquisitions in flight end (releasing what they got); a hold granted just before the abort is released after.
      await this.settle();
      await releaseHolds();
      await this.settle();
      if (this.masters?.owned) await Promise.all(this.masters.links.map((link) => link.close()));
    })();
    return this.closed;
  }

  private async acquireOn(masters: Masters, resource: string, ttlMs: number, waitMs: number, signal: AbortSignal | undefined): Promise<LockGrant> {
    const wait = new AbortController();
    const forward = () => wait.abort();
    if (signal?.aborted) wait.abort();
    else signal?.addEventListener('abort', forward, { once: true });
    this.waits.add(wait);
    try {
      return await this.acquireUntil(masters, resource, ttlMs, waitMs, wait.signal);
    } finally {
      this.waits.delete(wait);
      signal?.removeEventListener('abort', forward);
    }
  }

  private async acquireUntil(masters: Masters, resource: string, ttlMs: number, waitMs: number, abort: AbortSignal): Promise<LockGrant> {
    const key = this.keys.lock(resource);
    const giveUpAt = Date.now() + waitMs;
    for (;;) {
      const hold = await masters.mutex.acquire(key, ttlMs, Math.max(0, giveUpAt - Date.now()), abort);
      if (hold === undefined) {
        if (abort.aborted) throw this.abandoned();
        this.counters.busy++;
        throw busy(resource, waitMs);
      }
      if (abort.aborted) {
        await this.releaseQuietly(masters, resource, hold.token);
        throw this.abandoned();
      }
      let fence: number;
      try {
        fence = await masters.fencing.next(this.keys.fence(resource));
      } catch (error) {
        await this.releaseQuietly(masters, resource, hold.token);
        const raced = error instanceof CacheError && error.code === 'E_LOCK_BUSY';
        if (raced && Date.now() < giveUpAt && !abort.aborted) continue;
        if (raced) this.counters.busy++;
        throw error;
      }
      if (abort.aborted) {
        await this.releaseQuietly(masters, resource, hold.token);
        throw this.abandoned();
      }
      if (Date.now() >= hold.expiresAt) {
        await this.releaseQuietly(masters, resource, hold.token);
        throw unavailable(`Redis took longer than the TTL (${ttlMs} ms) to grant the lock; it was released again. Use a longer ttl`);
      }
      this.counters.acquired++;
      if (this.granted.size >= 10_000) this.pruneGranted();
      this.granted.set(hold.token, hold.expiresAt);
      return { resource, token: hold.token, fence, expiresAt: hold.expiresAt };
    }
  }

  /** Forgets locks that expired: callers that never release (relying on the TTL) must not grow the map. */
  private pruneGranted(): void {
    const now = Date.now();
    for (const [token, expiresAt] of this.granted) if (expiresAt <= now) this.granted.delete(token);
  }

  private async releaseQuietly(masters: Masters, resource: string, token: string): Promise<void> {
    this.granted.delete(token);
    try {
      await masters.mutex.release(this.keys.lock(resource), token);
    } catch (error) {
      // Not held any more, or Redis is away: either way it lapses by its TTL.
      this.log.debug({ err: (error as Error).message }, 'could not release a lock; it will lapse by its TTL');
    }
  }

  /** The Mutex's errors name the Redis key; callers know the resource. */
  private translate(error: unknown, resource: string, token: string): unknown {
    if (!(error instanceof CacheError) || error.code !== 'E_LOCK_NOT_HELD') return error;
    this.granted.delete(token);
    return new CacheError('E_LOCK_NOT_HELD', `the token does not hold the lock on ${quoted(resource)}: it expired, was released, or belongs to another holder`);
  }

  private abandoned(): CacheError {
    if (this.closing.signal.aborted) return shuttingDown();
    return new CacheError('E_DEADLINE', 'the caller went away (cancelled, or its deadline passed) before the lock was granted; any lock taken meanwhile was released');
  }

  private run<T>(operation: (masters: Masters) => Promise<T>): Promise<T> {
    if (this.masters === undefined) {
      return Promise.reject(
        unavailable('locks need Redis: this sidecar runs L1-only (set REDIS_URL, REDIS_HOST or CONTEXT_CACHE_LOCK_REDIS_URLS); a lock is never granted from memory alone'),
      );
    }
    if (this.closing.signal.aborted) return Promise.reject(shuttingDown());
    return this.track(operation(this.masters));
  }

  private track<T>(promise: Promise<T>): Promise<T> {
    const entry: Promise<unknown> = promise.catch(() => undefined).finally(() => this.pending.delete(entry));
    this.pending.add(entry);
    return promise;
  }

  private async settle(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }
}

/**
 * A lock kept for as long as its owner wants it (a HoldLock stream): extended
 * when a third of the TTL has passed. An extension that fails because Redis
 * is away is retried while at least a third of the TTL is left; then, or when
 * the token no longer holds the lock, the hold is lost.
 */
export class Hold {
  private timer: NodeJS.Timeout | undefined;
  private extending: Promise<void> | undefined;
  private state: 'acquired' | 'keeping' | 'stopped' = 'acquired';
  private released: Promise<void> | undefined;
  private listener: HoldListener | undefined;

  constructor(
    private current: LockGrant,
    readonly ttlMs: number,
    private readonly owner: {
      extend(token: string, ttlMs: number): Promise<number>;
      release(token: string): Promise<void>;
      done(hold: Hold): void;
      track<T>(promise: Promise<T>): Promise<T>;
      bug(error: unknown): void;
    },
  ) {}

  get grant(): LockGrant {
    return this.current;
  }

  /** Starts extending in the background; `listener` hears of every extension and of a loss. */
  keep(listener: HoldListener): void {
    if (this.state !== 'acquired') return;
    this.state = 'keeping';
    this.listener = listener;
    this.schedule(this.ttlMs / 3);
  }

  /** Stops extending and releases the lock (unless it was lost). Idempotent; never throws. */
  release(): Promise<void> {
    if (this.released !== undefined) return this.released;
    const holding = this.state !== 'stopped';
    this.state = 'stopped';
    clearTimeout(this.timer);
    this.released = this.owner.track(
      (async () => {
        // An extension in flight could land after the release; let it finish first.
        await this.extending?.catch(() => undefined);
        if (holding) await this.owner.release(this.current.token);
        this.owner.done(this);
      })(),
    );
    return this.released;
  }

  private schedule(delayMs: number): void {
    this.timer = setTimeout(() => {
      this.extending = this.owner.track(this.extendOnce().catch((error: unknown) => this.owner.bug(error)));
    }, delayMs);
  }

  private async extendOnce(): Promise<void> {
    let failure: CacheError;
    try {
      const expiresAt = await this.owner.extend(this.current.token, this.ttlMs);
      if (this.state !== 'keeping') return;
      this.current = { ...this.current, expiresAt };
      this.listener!.extended(this.current);
      this.schedule(this.ttlMs / 3);
      return;
    } catch (error) {
      failure = error instanceof CacheError ? error : new CacheError('E_UNAVAILABLE', `extending the lock failed: ${(error as Error).message}`, { cause: error });
    }
    if (this.state !== 'keeping') return;
    const retryMs = Math.min(1000, Math.max(10, this.ttlMs / 10));
    if (failure.code === 'E_UNAVAILABLE' && Date.now() + retryMs < this.current.expiresAt - this.ttlMs / 3) {
      this.schedule(retryMs);
      return;
    }
    this.state = 'stopped';
    this.released = this.owner.track(
      (async () => {
        // Redis may be back before the TTL runs out: give the lock back rather than block others until then.
        if (failure.code !== 'E_LOCK_NOT_HELD') await this.owner.release(this.current.token);
        this.owner.done(this);
      })(),
    );
    this.listener!.lost(this.current, failure);
  }
}

function busy(resource: string, waitMs: number): CacheError {
  return new CacheError(
    'E_LOCK_BUSY',
    waitMs === 0
      ? `the lock on ${quoted(resource)} is held by another holder; set wait_timeout to wait for it`
      : `the lock on ${quoted(resource)} is still held by another holder after waiting ${waitMs} ms (wait_timeout)`,
  );
}

function shuttingDown(): CacheError {
  return new CacheError('E_SHUTTING_DOWN', 'the sidecar is shutting down; retry on another instance or after it restarts');
}

/** A resource for a message: quoted, and cut short when long. */
export function quoted(resource: string): string {
  return JSON.stringify(resource.length > 80 ? `${resource.slice(0, 80)}…` : resource);
}
