import type { Config } from '../config';
import type { Logger } from '../log';
import type { LockMasters, MasterHold } from '../locks/ports';
import { isTimeout, linkOptions, RedisLink } from './connection';
import { FencingCounter } from './fencing';
import type { KeySpace } from './keys';
import { Mutex } from './mutex';

/** Pause between attempts while a lock is busy (the Mutex adds jitter of the same size). */
const RETRY_DELAY_MS = 50;

/**
 * The Redis masters of distributed locks: CONTEXT_CACHE_LOCK_REDIS_URLS
 * when set (with connections of their own), else the main Redis command
 * link (owned by the shared tier), else none (L1-only: locks are refused).
 */
export function createLockMasters(config: Config, mainLink: RedisLink | undefined, keys: KeySpace, log: Logger): RedisLockMasters | undefined {
  if (config.lockRedis !== undefined) {
    const options = linkOptions(config);
    const links = config.lockRedis.map((master) => new RedisLink('locks', master, options, log.child({ lockMaster: master.describe })));
    // Redlock selects one database on every master: the first URL's (each master's fencing counter lives in its own URL's).
    return new RedisLockMasters(links, true, config.lockRedis.map((m) => m.describe), config.lockRedis[0]!.db, keys, log);
  }
  if (mainLink !== undefined && config.redis !== undefined) {
    return new RedisLockMasters([mainLink], false, [config.redis.describe], config.redis.db, keys, log);
  }
  return undefined;
}

/** Lock keys and fencing counters on the masters (keys.lock, keys.fence), through the Mutex and the FencingCounter. */
export class RedisLockMasters implements LockMasters {
  private readonly mutex: Mutex;
  private readonly fencing: FencingCounter;

  constructor(
    private readonly links: readonly RedisLink[],
    /** Whether these links are ours to start and close (dedicated lock masters) or the main command link. */
    private readonly owned: boolean,
    private readonly describe: readonly string[],
    db: number,
    private readonly keys: KeySpace,
    private readonly log: Logger,
  ) {
    const clients = links.map((link) => link.client);
    this.mutex = new Mutex(clients, db, RETRY_DELAY_MS);
    // A hung master: drop its connection so that later commands fail at once instead of waiting for the timeout.
    this.fencing = new FencingCounter(clients, keys, (index, error) => {
      if (isTimeout(error)) links[index]?.reconnect();
    });
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
    for (const link of this.links) link.start();
    this.log.info({ masters: this.describe, quorum: this.quorum }, 'distributed locks use dedicated Redis masters');
  }

  async close(): Promise<void> {
    if (this.owned) await Promise.all(this.links.map((link) => link.close()));
  }

  acquire(resource: string, ttlMs: number, waitMs: number, signal: AbortSignal): Promise<MasterHold | undefined> {
    return this.mutex.acquire(this.keys.lock(resource), ttlMs, waitMs, signal);
  }

  extend(resource: string, token: string, ttlMs: number): Promise<MasterHold | 'not-held'> {
    return this.mutex.extend(this.keys.lock(resource), token, ttlMs);
  }

  release(resource: string, token: string): Promise<'released' | 'not-held'> {
    return this.mutex.release(this.keys.lock(resource), token);
  }

  nextFence(resource: string): Promise<number> {
    return this.fencing.next(resource);
  }
}
