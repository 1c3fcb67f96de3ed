import { randomToken } from '../random';
import { ExecutionError, Lock, Redlock, ResourceLockedError } from '@sesamecare-oss/redlock';
import type { RedisClient } from './connection';
import { noMajority } from '../errors';

/** A held mutual-exclusion token. */
export interface MutexHold {
  token: string;
  /** Epoch milliseconds after which the hold may have lapsed (clock drift already subtracted). */
  expiresAt: number;
}

/**
 * The codebase's one mutual-exclusion mechanism: a token stored under a key
 * with a TTL on one Redis, or on a majority of independent Redis masters
 * (the Redlock algorithm, from the maintained @sesamecare-oss fork of
 * `redlock`). Fill leases use it on the L2 Redis; distributed locks use it on
 * the configured lock masters and add fencing tokens on top.
 *
 * The stored value is the token itself, so Lua scripts elsewhere can check a
 * hold atomically with the write it guards (`GET key == token`).
 *
 * Keys are Redis keys (from keys.ts); callers that know what the key stands
 * for (a lock's resource, a lease's subject) word the errors.
 */
export class Mutex {
  private readonly redlock: Redlock;

  /** `db`: the Redis database of the clients; the library's scripts SELECT it explicitly. */
  constructor(
    readonly clients: readonly RedisClient[],
    db: number,
    private readonly retryDelayMs = 50,
  ) {
    // Retries are ours (bounded by the caller's wait), so the library tries once.
    this.redlock = new Redlock(clients, { retryCount: 0, retryDelay: retryDelayMs, retryJitter: retryDelayMs / 2, driftFactor: 0.01, db });
    // The library emits 'error' for every vote against; the outcome is reported by the call.
    this.redlock.on('error', () => undefined);
  }

  /** A fresh random token. */
  static token(): string {
    return randomToken(16);
  }

  /**
   * One attempt. Resolves undefined when another holder has the key; throws
   * E_UNAVAILABLE when too few Redis masters answered to decide.
   */
  async tryAcquire(key: string, ttlMs: number): Promise<MutexHold | undefined> {
    try {
      const lock = await this.redlock.acquire([key], ttlMs);
      return { token: lock.value, expiresAt: lock.expiration };
    } catch (error) {
      if (await isBusy(error)) return undefined;
      throw noMajority(error);
    }
  }

  /**
   * Tries until the key is free or `waitMs` has passed (0: once), sleeping a
   * jittered retry delay in between. Resolves undefined when still busy.
   */
  async acquire(key: string, ttlMs: number, waitMs: number, signal?: AbortSignal): Promise<MutexHold | undefined> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const hold = await this.tryAcquire(key, ttlMs);
      if (hold !== undefined) return hold;
      const remaining = deadline - Date.now();
      if (remaining <= 0 || signal?.aborted) return undefined;
      const delay = Math.min(remaining, this.retryDelayMs / 2 + Math.random() * this.retryDelayMs);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  /** Extends a hold; 'not-held' when the token does not hold the key (any more). */
  async extend(key: string, token: string, ttlMs: number): Promise<MutexHold | 'not-held'> {
    try {
      const lock = await this.redlock.extend(this.lockFor(key, token), ttlMs);
      return { token, expiresAt: lock.expiration };
    } catch (error) {
      if (await isRefuted(error)) return 'not-held';
      throw noMajority(error);
    }
  }

  /** Releases a hold; 'not-held' when the token does not hold the key (any more). */
  async release(key: string, token: string): Promise<'released' | 'not-held'> {
    let released: number;
    try {
      const result = await this.redlock.release(this.lockFor(key, token));
      const stats = await Promise.all(result.attempts);
      released = Math.max(0, ...stats.map((s) => s.votesFor.size));
    } catch (error) {
      if (await isRefuted(error)) return 'not-held';
      throw noMajority(error);
    }
    return released === 0 ? 'not-held' : 'released';
  }

  private lockFor(key: string, token: string): Lock {
    // The expiry is checked by Redis, not by the library: pass "not expired".
    return new Lock(this.redlock, [key], token, [], Number.MAX_SAFE_INTEGER);
  }
}

/**
 * The votes of the last attempt behind a failed quorum: how many masters
 * agreed, and how many answered no because of the key's content (held by
 * another token, or not by this one) rather than failing. Undefined for
 * anything else.
 */
async function votes(error: unknown): Promise<{ members: number; quorum: number; agreed: number; refused: number } | undefined> {
  if (error instanceof ResourceLockedError) return { members: 1, quorum: 1, agreed: 0, refused: 1 };
  if (!(error instanceof ExecutionError) || error.attempts.length === 0) return undefined;
  const last = await error.attempts[error.attempts.length - 1]!;
  const refused = [...last.votesAgainst.values()].filter((e) => e instanceof ResourceLockedError).length;
  return { members: last.membershipSize, quorum: last.quorumSize, agreed: last.votesFor.size, refused };
}

/**
 * A failed acquisition is "busy" when the masters that answered form a
 * majority (so some of them hold the key for somebody else and a retry can
 * succeed once it is free). With fewer answers nobody can decide: Redis is
 * unavailable. On one master: busy exactly when it answered.
 */
async function isBusy(error: unknown): Promise<boolean> {
  const v = await votes(error);
  return v !== undefined && v.agreed + v.refused >= v.quorum;
}

/**
 * A failed extension or release means "not held" only when so many masters
 * refused the token that no majority can hold it, whatever the masters that
 * did not answer would have said; otherwise the hold may still be valid and
 * the failure is Redis being unavailable. On one master: when it refused.
 */
async function isRefuted(error: unknown): Promise<boolean> {
  const v = await votes(error);
  return v !== undefined && v.refused > v.members - v.quorum;
}
