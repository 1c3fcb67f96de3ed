import type { LeaseHold, LeaseStore } from '../cache/ports';
import { CorruptValueError } from '../errors';
import type { Subject } from '../model/subject';
import type { RedisLink } from './connection';
import { removeWrongTypes } from './entry-store';
import type { KeySpace } from './keys';
import type { Mutex } from './mutex';

/** Fill leases on the main Redis: a Mutex key per subject (keys.lease), checked by the fill scripts. */
export class RedisLeaseStore implements LeaseStore {
  /** Lease keys found holding another Redis type (GetStats adds them to the corrupt values). */
  readonly counters = { corrupt: 0 };

  constructor(
    private readonly mutex: Mutex,
    private readonly keys: KeySpace,
    private readonly link: RedisLink,
    private readonly onCorrupt: (key: string, error: CorruptValueError) => void,
  ) {}

  /**
   * Busy means another caller holds the lease — or that the key holds
   * something no lease wrote (SET NX fails on any existing key, and a
   * planted hash has no TTL: the subject would read "busy" forever). Only
   * then, on a busy answer, its type is checked; a key of the wrong type is
   * removed, counted, and the lease tried once more.
   */
  async tryAcquire(subject: Subject, ttlMs: number): Promise<LeaseHold | undefined> {
    const key = this.keys.lease(subject);
    const hold = await this.mutex.tryAcquire(key, ttlMs);
    if (hold !== undefined) return hold;
    const removed = await removeWrongTypes(this.link, [[key, 'string']]);
    if (removed.length === 0) return undefined;
    this.counters.corrupt++;
    this.onCorrupt(subject.id, new CorruptValueError(`the fill lease key ${key} held the wrong Redis type; removed`));
    return this.mutex.tryAcquire(key, ttlMs);
  }

  async release(subject: Subject, token: string): Promise<void> {
    await this.mutex.release(this.keys.lease(subject), token);
  }
}
