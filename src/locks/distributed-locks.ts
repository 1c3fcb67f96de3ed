import { deadlinePassed, isCacheError, lockBusy, lockNotHeld, shuttingDown, unavailable } from '../errors';
import type { Logger } from '../log';
import { GrantTable } from './grants';
import { Hold, type LockGrant } from './hold';
import type { LockMasters } from './ports';

export interface LockCounters {
  /** Locks granted through this sidecar. */
  acquired: number;
  /** Acquisitions that gave up because the lock stayed busy. */
  busy: number;
}

/**
 * Distributed locks: mutual exclusion from the lock masters (Redlock over
 * one Redis or a majority of independent masters) plus a fencing token per
 * grant. Nothing here is ever decided from memory: without enough masters
 * every operation fails with E_UNAVAILABLE, and without masters at all
 * (L1-only) every operation is refused.
 *
 * This class is acquisition and lifecycle: waits that end with their caller
 * or with shutdown, operations tracked so `close()` can let them finish, and
 * stream-bound holds (`Hold`) released at shutdown.
 */
export class DistributedLocks {
  readonly counters: LockCounters = { acquired: 0, busy: 0 };
  private readonly granted = new GrantTable();
  private readonly holds = new Set<Hold>();
  /** Operations in flight, so that close() can wait for them before closing connections. */
  private readonly pending = new Set<Promise<unknown>>();
  private readonly closing = new AbortController();
  /** One per acquisition in flight: aborted by its caller's signal, or all at once by close(). */
  private readonly waits = new Set<AbortController>();
  private closed: Promise<void> | undefined;

  constructor(
    private readonly masters: LockMasters | undefined,
    private readonly log: Logger,
  ) {}

  /** Starts the connections of dedicated lock masters; the main link is started by its owner. */
  start(): void {
    this.masters?.start();
  }

  /** Whether locks are configured at all (not L1-only). */
  get configured(): boolean {
    return this.masters !== undefined;
  }

  /** Calls `listener` whenever a lock master's connection changes state. */
  onStateChange(listener: () => void): void {
    this.masters?.onStateChange(listener);
  }

  /** How many lock masters are connected right now (0 without Redis). */
  get connectedMasters(): number {
    return this.masters?.connectedMasters ?? 0;
  }

  /** Whether enough masters are connected to grant a lock right now. */
  get ready(): boolean {
    return this.masters !== undefined && this.masters.connectedMasters >= this.masters.quorum;
  }

  /** GetStats' LockStats. `held`: granted here, not released here, and not expired as far as this sidecar knows. */
  stats(): { acquired: number; busy: number; held: number } {
    return { ...this.counters, held: this.granted.held };
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
      const hold = await masters.extend(resource, token, ttlMs);
      if (hold === 'not-held') {
        this.granted.forget(token);
        throw lockNotHeld(resource);
      }
      if (hold.expiresAt <= Date.now()) {
        throw unavailable('Redis took longer than the new TTL to confirm the extension; the lock may lapse at any moment');
      }
      this.granted.extended(token, hold.expiresAt);
      return hold.expiresAt;
    });
  }

  /** Releases the lock. E_LOCK_NOT_HELD for a wrong or expired token. */
  release(resource: string, token: string): Promise<void> {
    return this.run(async (masters) => {
      const outcome = await masters.release(resource, token);
      this.granted.forget(token);
      if (outcome === 'not-held') throw lockNotHeld(resource);
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
      await this.masters?.close();
    })();
    return this.closed;
  }

  private async acquireOn(masters: LockMasters, resource: string, ttlMs: number, waitMs: number, signal: AbortSignal | undefined): Promise<LockGrant> {
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

  private async acquireUntil(masters: LockMasters, resource: string, ttlMs: number, waitMs: number, abort: AbortSignal): Promise<LockGrant> {
    const giveUpAt = Date.now() + waitMs;
    for (;;) {
      const hold = await masters.acquire(resource, ttlMs, Math.max(0, giveUpAt - Date.now()), abort);
      if (hold === undefined) {
        if (abort.aborted) throw this.abandoned();
        this.counters.busy++;
        throw lockBusy(resource, waitMs);
      }
      if (abort.aborted) {
        await this.releaseQuietly(masters, resource, hold.token);
        throw this.abandoned();
      }
      let fence: number;
      try {
        fence = hold.fence ?? (await masters.nextFence(resource));
      } catch (error) {
        await this.releaseQuietly(masters, resource, hold.token);
        const raced = isCacheError(error, 'E_LOCK_BUSY');
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
      this.granted.add(hold.token, hold.expiresAt);
      return { resource, token: hold.token, fence, expiresAt: hold.expiresAt };
    }
  }

  private async releaseQuietly(masters: LockMasters, resource: string, token: string): Promise<void> {
    this.granted.forget(token);
    try {
      await masters.release(resource, token);
    } catch (error) {
      // Redis is away: the lock lapses by its TTL (as one that is not held any more already did).
      this.log.debug({ err: (error as Error).message }, 'could not release a lock; it will lapse by its TTL');
    }
  }

  private abandoned(): Error {
    if (this.closing.signal.aborted) return shuttingDown();
    return deadlinePassed('the caller went away (cancelled, or its deadline passed) before the lock was granted; any lock taken meanwhile was released');
  }

  private run<T>(operation: (masters: LockMasters) => Promise<T>): Promise<T> {
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
