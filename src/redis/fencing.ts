import type { RedisClient } from './connection';
import { corruptFence, fenceRaced, unavailable } from '../errors';
import type { KeySpace } from './keys';
import { fenceAdvance } from './scripts/fence-advance';
import { ScriptRunner } from './scripts/script';

/**
 * Fencing tokens for locks held through Redlock: one counter per resource on
 * every lock master, no TTL.
 *
 * `next()` runs while the caller holds the resource's lock. It reads the
 * counter from every master that answers (at least a majority must), takes
 * the highest value plus one, and stores it with "SET if greater" on every
 * master, succeeding when a majority stored it. Any two majorities share a
 * master, so the next holder's read sees this token (or a higher one) and
 * issues a greater one: tokens strictly increase in the order the lock was
 * held, across all sidecars, even when a minority of masters is down or
 * comes back empty.
 *
 * Two callers can only compute the same candidate when their holds overlap
 * (a lock that lapsed during a pause); then each master stores the candidate
 * for at most one of them, so at most one gets a majority, and the other
 * fails with E_LOCK_BUSY.
 *
 * A token is also never lower than the wall clock in microseconds, so a
 * majority of masters losing the counters (restart without persistence,
 * FLUSHALL, eviction of keys without TTL) does not send tokens back to 1:
 * they continue from the clock, above every token issued before the loss
 * unless a sidecar's clock ran ahead of the others by more than the outage.
 */
export class FencingCounter {
  readonly quorum: number;
  private readonly scripts: ScriptRunner[];

  constructor(
    private readonly clients: readonly RedisClient[],
    private readonly keys: KeySpace,
    /** Told about every failed command (by master index), e.g. to drop a link that timed out. */
    private readonly onError: (index: number, error: Error) => void = () => undefined,
  ) {
    this.quorum = Math.floor(clients.length / 2) + 1;
    this.scripts = clients.map((client) => new ScriptRunner(client, { keys, origin: '' }));
  }

  /** The next token of `resource` (its counter lives at keys.fence(resource) on every master). */
  async next(resource: string): Promise<number> {
    const key = this.keys.fence(resource);
    const reads = await Promise.allSettled(this.clients.map((client) => client.get(key)));
    let answered = 0;
    let highest = 0;
    let unusable: string | undefined;
    reads.forEach((read, index) => {
      if (read.status === 'rejected') {
        this.onError(index, asError(read.reason));
        return;
      }
      answered++;
      const value = read.value === null ? 0 : Number(read.value);
      if (!Number.isSafeInteger(value) || value < 0) unusable = read.value!;
      else if (value > highest) highest = value;
    });
    // A counter no token can exceed (beyond 2^53, or not a number) would refuse every grant as a race, forever.
    if (unusable !== undefined) throw corruptFence(key, unusable);
    if (answered < this.quorum) {
      throw unavailable(`only ${answered} of ${this.clients.length} lock masters answered; a fencing token needs a majority (${this.quorum})`);
    }

    const candidate = Math.max(highest + 1, Date.now() * 1000);
    const writes = await Promise.allSettled(this.scripts.map((scripts) => scripts.run(fenceAdvance, resource, candidate)));
    let stored = 0;
    let refused = 0;
    writes.forEach((write, index) => {
      if (write.status === 'rejected') this.onError(index, asError(write.reason));
      else if (write.value) stored++;
      else refused++;
    });
    if (stored >= this.quorum) return candidate;
    if (refused > this.clients.length - this.quorum) throw fenceRaced();
    throw unavailable(`only ${stored} of ${this.clients.length} lock masters stored the fencing token; it needs a majority (${this.quorum})`);
  }
}

function asError(reason: unknown): Error {
  return reason instanceof Error ? reason : new Error(String(reason));
}
