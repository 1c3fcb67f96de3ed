import { randomToken } from '../random';
import type { Config } from '../config';
import { corruptFence, noMajority } from '../errors';
import type { Logger } from '../log';
import type { LockMasters, MasterHold } from '../locks/ports';
import { isTimeout, linkOptions, RedisLink } from './connection';
import { decodeLockWake } from './event-wire';
import { FencingCounter } from './fencing';
import type { KeySpace } from './keys';
import { lockAcquire } from './scripts/lock-acquire';
import { lockExtend } from './scripts/lock-extend';
import { lockLeave } from './scripts/lock-leave';
import { lockRelease } from './scripts/lock-release';
import { ScriptRunner } from './scripts/script';

/**
 * How long a waiter keeps its place in a lock's queue without asking again.
 * A waiter asks at least every FALLBACK_POLL_MS, so only a waiter whose
 * sidecar died (or froze) loses its place; the waiters behind it wait this
 * much longer at most.
 */
export const WAITER_LEASE_MS = 3000;
/**
 * A waiter asks again after this long without a wake-up: for wake-ups lost
 * with a subscriber connection, and to keep its place. Not the hot path: a
 * release wakes the next waiter at once.
 */
export const FALLBACK_POLL_MS = 1000;
/** Clock drift allowance of a grant (the Redlock algorithm's): 1 % of the TTL + 2 ms. */
const DRIFT_FACTOR = 0.01;

/** The Redis links of the main tier that locks can use when they have no masters of their own. */
export interface MainRedis {
  link: RedisLink;
  subscriber: RedisLink;
}

/**
 * The Redis masters of distributed locks: CONTEXT_CACHE_LOCK_REDIS_URLS
 * when set (with connections of their own, commands and wake-ups), else the
 * main Redis links (owned by the shared tier), else none (L1-only: locks
 * are refused).
 */
export function createLockMasters(config: Config, main: MainRedis | undefined, keys: KeySpace, origin: string, log: Logger): RedisLockMasters | undefined {
  if (config.lockRedis !== undefined) {
    const options = linkOptions(config);
    const links = config.lockRedis.map((master) => new RedisLink('locks', master, options, log.child({ lockMaster: master.describe })));
    const subscribers = config.lockRedis.map((master) => new RedisLink('subscriber', master, options, log.child({ lockMaster: master.describe, wakeups: true })));
    return new RedisLockMasters(links, subscribers, true, config.lockRedis.map((m) => m.describe), keys, origin, log);
  }
  if (main !== undefined && config.redis !== undefined) {
    return new RedisLockMasters([main.link], [main.subscriber], false, [config.redis.describe], keys, origin, log);
  }
  return undefined;
}

/** A caller waiting for a lock: its place in the queues, and how to wake it. */
interface Waiter {
  readonly id: string;
  /** Its arrival (µs) as the queues know it: given by this sidecar with several masters, by Redis with one. */
  arrival: string;
  /** A wake-up came while it was not waiting yet: it tries again at once. */
  woken: boolean;
  wake: (() => void) | undefined;
}

type Attempt = { kind: 'granted'; hold: MasterHold } | { kind: 'busy'; retryInMs: number };

/**
 * Lock keys, their wait queues and fencing counters on the masters
 * (keys.lock, keys.lockQueue, keys.lockWaiters, keys.fence): the Redlock
 * algorithm — a grant needs a majority, within the TTL less the drift
 * allowance — over scripts that queue.
 *
 * A lock is granted in arrival order: a waiter joins the queue of every
 * master with its first attempt, and a free lock goes only to the head of
 * the queue. The release wakes the next waiter (a message on the lock
 * channel of the master, heard by every sidecar); the waiter then tries at
 * once. Nobody polls on the hot path: a waiter asks again by itself only
 * after FALLBACK_POLL_MS without a wake-up, or when the holder's TTL runs
 * out. With one master the fencing counter advances in the grant itself.
 */
export class RedisLockMasters implements LockMasters {
  private readonly scripts: ScriptRunner[];
  private readonly fencing: FencingCounter;
  private readonly waiters = new Map<string, Waiter>();
  private arrivals = 0;

  constructor(
    private readonly links: readonly RedisLink[],
    /** A subscriber connection per master, for wake-ups (on the main Redis: the bus's, shared). */
    private readonly subscribers: readonly RedisLink[],
    /** Whether these links are ours to start and close (dedicated lock masters) or the main tier's. */
    private readonly owned: boolean,
    private readonly describe: readonly string[],
    private readonly keys: KeySpace,
    origin: string,
    private readonly log: Logger,
  ) {
    this.scripts = links.map((link) => new ScriptRunner(link.client, { keys, origin }));
    // A hung master: drop its connection so that later commands fail at once instead of waiting for the timeout.
    this.fencing = new FencingCounter(
      links.map((link) => link.client),
      keys,
      (index, error) => this.failed(index, error),
    );
    for (const subscriber of subscribers) {
      subscriber.client.on('message', (channel: string, raw: string) => {
        if (channel !== keys.lockChannel) return;
        const wake = decodeLockWake(raw);
        if (wake !== undefined) this.wake(wake.waiter);
      });
      const subscribe = () =>
        subscriber.client.subscribe(keys.lockChannel).catch((error: Error) => this.log.warn({ err: error.message }, 'could not subscribe to lock wake-ups; waiters fall back to polling'));
      subscriber.on('ready', subscribe);
      if (subscriber.connected) void subscribe();
    }
  }

  get quorum(): number {
    return this.fencing.quorum;
  }

  get connectedMasters(): number {
    return this.links.filter((link) => link.connected).length;
  }

  onStateChange(listener: () => void): void {
    for (const link of this.links) link.on('state', listener);
  }

  start(): void {
    if (!this.owned) return;
    for (const link of [...this.links, ...this.subscribers]) link.start();
    this.log.info({ masters: this.describe, quorum: this.quorum }, 'distributed locks use dedicated Redis masters');
  }

  async close(): Promise<void> {
    for (const waiter of this.waiters.values()) waiter.wake?.();
    if (this.owned) await Promise.all([...this.links, ...this.subscribers].map((link) => link.close()));
  }

  async acquire(resource: string, ttlMs: number, waitMs: number, signal: AbortSignal): Promise<MasterHold | undefined> {
    const token = randomToken(16);
    if (waitMs <= 0) {
      const once = await this.attempt(resource, token, ttlMs, undefined);
      return once.kind === 'granted' ? once.hold : undefined;
    }
    const deadline = Date.now() + waitMs;
    // With several masters every queue must order the waiters alike: by this sidecar's clock (µs, and a counter within one).
    const arrival = this.links.length === 1 ? '' : String(Date.now() * 1000 + (this.arrivals++ % 1000));
    const waiter: Waiter = { id: randomToken(12), arrival, woken: false, wake: undefined };
    this.waiters.set(waiter.id, waiter);
    let queued = false;
    let granted = false;
    try {
      for (;;) {
        waiter.woken = false;
        const attempt = await this.attempt(resource, token, ttlMs, waiter);
        if (attempt.kind === 'granted') {
          granted = true;
          return attempt.hold;
        }
        queued = true;
        const remaining = deadline - Date.now();
        if (remaining <= 0 || signal.aborted) return undefined;
        if (!waiter.woken) await this.sleep(waiter, Math.min(remaining, attempt.retryInMs), signal);
        if (signal.aborted) return undefined;
      }
    } finally {
      this.waiters.delete(waiter.id);
      // Give the place up, waking whoever is next if the lock is free (best effort: the place lapses by itself).
      if (queued && !granted) void this.onEvery((scripts) => scripts.run(lockLeave, resource, waiter.id)).then((heads) => heads.forEach((head) => head && this.wake(head)));
    }
  }

  async extend(resource: string, token: string, ttlMs: number): Promise<MasterHold | 'not-held'> {
    const start = Date.now();
    const answers = await this.onEvery((scripts) => scripts.run(lockExtend, resource, token, ttlMs));
    const extended = answers.filter((answer) => answer === true).length;
    if (extended >= this.quorum) return { token, expiresAt: this.validUntil(start, ttlMs) };
    return this.refusedOrUnavailable(answers.filter((answer) => answer === false).length);
  }

  async release(resource: string, token: string): Promise<'released' | 'not-held'> {
    const answers = await this.onEvery((scripts) => scripts.run(lockRelease, resource, token));
    let released = 0;
    let refused = 0;
    for (const answer of answers) {
      if (answer === undefined) continue;
      if (!answer.released) refused++;
      else released++;
      // The next waiter may be one of ours: no need to wait for the message.
      if (answer.woken !== '') this.wake(answer.woken);
    }
    if (released >= this.quorum) return 'released';
    return this.refusedOrUnavailable(refused);
  }

  nextFence(resource: string): Promise<number> {
    return this.fencing.next(resource);
  }

  /** One acquisition attempt on every master: granted by a majority, or busy (rolled back where it was granted). */
  private async attempt(resource: string, token: string, ttlMs: number, waiter: Waiter | undefined): Promise<Attempt> {
    const start = Date.now();
    // One master: its fencing counter advances in the grant; several: by majority afterwards (nextFence).
    const fencingClock = this.links.length === 1 ? String(start * 1000) : '';
    const answers = await this.onEvery((scripts) => scripts.run(lockAcquire, resource, token, ttlMs, waiter?.id ?? '', waiter?.arrival ?? '', WAITER_LEASE_MS, fencingClock));
    let granted = 0;
    let busy = 0;
    let retryInMs = FALLBACK_POLL_MS;
    let fence: number | undefined;
    let corrupt: string | undefined;
    for (const answer of answers) {
      if (answer === undefined) continue;
      if (answer.kind === 'granted') {
        granted++;
        fence = answer.fence;
      } else if (answer.kind === 'corrupt-fence') {
        corrupt = answer.value;
      } else {
        busy++;
        // When the holder's TTL runs out nobody releases: the head tries then.
        if (answer.pttlMs > 0) retryInMs = Math.min(retryInMs, answer.pttlMs + 1);
        if (waiter !== undefined && waiter.arrival === '' && answer.arrival !== '') waiter.arrival = answer.arrival;
      }
    }
    if (corrupt === undefined && granted >= this.quorum) return { kind: 'granted', hold: { token, expiresAt: this.validUntil(start, ttlMs), fence } };
    if (granted > 0) {
      // No majority: give back what was granted, keeping the waiter's place.
      const requeue = waiter === undefined || waiter.arrival === '' ? undefined : { waiter: waiter.id, arrival: waiter.arrival, leaseMs: WAITER_LEASE_MS };
      await this.onEvery((scripts) => scripts.run(lockRelease, resource, token, requeue));
    }
    if (corrupt !== undefined) throw corruptFence(this.keys.fence(resource), corrupt);
    if (granted + busy >= this.quorum) return { kind: 'busy', retryInMs };
    throw noMajority();
  }

  /** Waits for a wake-up, the timeout, or the signal. */
  private sleep(waiter: Waiter, timeoutMs: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        waiter.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      signal.addEventListener('abort', done, { once: true });
      waiter.wake = done;
    });
  }

  private wake(waiterId: string): void {
    const waiter = this.waiters.get(waiterId);
    if (waiter === undefined) return;
    waiter.woken = true;
    waiter.wake?.();
  }

  /** `ttlMs` from `start`, less the drift allowance: until when a grant (or an extension) is valid on this clock. */
  private validUntil(start: number, ttlMs: number): number {
    return start + ttlMs - (Math.round(DRIFT_FACTOR * ttlMs) + 2);
  }

  /**
   * A failed extension or release means "not held" only when so many masters
   * refused the token that no majority can hold it, whatever the masters that
   * did not answer would have said; otherwise the hold may still be valid and
   * the failure is Redis being unavailable.
   */
  private refusedOrUnavailable(refused: number): 'not-held' {
    if (refused > this.links.length - this.quorum) return 'not-held';
    throw noMajority();
  }

  /** Runs a script on every master at once; a master that fails answers undefined. */
  private async onEvery<T>(run: (scripts: ScriptRunner) => Promise<T>): Promise<(T | undefined)[]> {
    const settled = await Promise.allSettled(this.scripts.map((scripts, index) => this.links[index]!.command(run(scripts))));
    return settled.map((result, index) => {
      if (result.status === 'fulfilled') return result.value;
      this.failed(index, result.reason instanceof Error ? result.reason : new Error(String(result.reason)));
      return undefined;
    });
  }

  private failed(index: number, error: Error): void {
    if (isTimeout(error)) this.links[index]?.reconnect();
    this.log.debug({ master: this.describe[index], err: error.message }, 'a lock master failed a command');
  }
}
