/**
 * What distributed locks need of their Redis masters (one Redis, or a
 * majority of independent ones); `src/redis/lock-masters.ts` implements it.
 * Every method rejects with E_UNAVAILABLE when too few masters answer to
 * decide; nothing is ever decided from memory.
 */
export interface MasterHold {
  /** The holder's secret: the value of the lock key on the masters. */
  token: string;
  /** Epoch ms on this sidecar's clock after which the hold may have lapsed (clock drift already subtracted). */
  expiresAt: number;
  /** The grant's fencing token when the masters issued it with the grant (one master); else nextFence() gives it. */
  fence?: number;
}

export interface LockMasters {
  /** How many masters must agree. */
  readonly quorum: number;
  /** How many masters are connected right now. */
  readonly connectedMasters: number;
  /** Told whenever a master's connection changes state. */
  onStateChange(listener: () => void): void;
  /** Starts the connections this owns (dedicated lock masters); idempotent close. */
  start(): void;
  close(): Promise<void>;
  /**
   * Tries until free or `waitMs` passed (0: once); undefined when still busy.
   * Stops early when `signal` aborts. Waiters are granted the lock in the
   * order they asked, across sidecars; trying once never overtakes a waiter.
   */
  acquire(resource: string, ttlMs: number, waitMs: number, signal: AbortSignal): Promise<MasterHold | undefined>;
  extend(resource: string, token: string, ttlMs: number): Promise<MasterHold | 'not-held'>;
  release(resource: string, token: string): Promise<'released' | 'not-held'>;
  /** The next fencing token of the resource (called while holding its lock); E_LOCK_BUSY when another holder raced for it. */
  nextFence(resource: string): Promise<number>;
}
