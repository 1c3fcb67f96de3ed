import type { LeaseHold, LeaseStore } from '../cache/ports';
import type { Subject } from '../model/subject';
import type { KeySpace } from './keys';
import type { Mutex } from './mutex';

/** Fill leases on the main Redis: a Mutex key per subject (keys.lease), checked by the fill scripts. */
export class RedisLeaseStore implements LeaseStore {
  constructor(
    private readonly mutex: Mutex,
    private readonly keys: KeySpace,
  ) {}

  tryAcquire(subject: Subject, ttlMs: number): Promise<LeaseHold | undefined> {
    return this.mutex.tryAcquire(this.keys.lease(subject), ttlMs);
  }

  async release(subject: Subject, token: string): Promise<void> {
    await this.mutex.release(this.keys.lease(subject), token);
  }
}
