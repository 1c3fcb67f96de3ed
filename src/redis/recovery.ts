import type { Logger } from '../log';
import { backoffDelay, type RedisLink } from './connection';
import type { KeySpace } from './keys';

/** What the recovery key holds once the namespace was flushed for that state of Redis. */
const DONE = 'done';

export interface RecoveryTiming {
  /** How long a claim lasts unless its holder refreshes it (it does, page by page of the flush): a holder that dies lets another take over. */
  claimMs: number;
  /** How long "done" is remembered: sidecars noticing the same state of Redis later leave it alone. */
  doneMs: number;
  /** Backoff between attempts (after an error, or while another sidecar's claim is running). */
  retryBaseMs: number;
  retryMaxMs: number;
  /** Attempts before giving up (the next detected change of Redis starts afresh). */
  maxAttempts: number;
}

export const DEFAULT_RECOVERY_TIMING: RecoveryTiming = { claimMs: 30_000, doneMs: 10 * 60_000, retryBaseMs: 200, retryMaxMs: 5000, maxAttempts: 40 };

export type RecoveryOutcome = 'flushed' | 'done-elsewhere' | 'gave-up' | 'closed';

/**
 * Makes sure one sidecar flushes the namespace for each new state of Redis
 * (a failover, a restart, a FLUSHALL: `identity` names it, the same in every
 * sidecar), and that one does even when things go wrong on the way:
 *
 * - the claim is a key holding the claimer's ID for `claimMs`, refreshed as
 *   the flush goes on, replaced by "done" once it is over;
 * - a claimer whose reply was lost (a timeout, a reconnection in the middle
 *   of a failover) finds its own ID on its next attempt and flushes;
 * - the others keep looking until they read "done": should the claimer die
 *   or give up, its claim lapses and the next one to look claims it.
 */
export class NamespaceRecovery {
  readonly counts = { flushed: 0, claimedElsewhere: 0, failed: 0 };
  private closed = false;

  constructor(
    private readonly link: RedisLink,
    private readonly keys: KeySpace,
    private readonly sidecarId: string,
    /** Flushes the namespace; calls `refresh` between pages so that a long flush keeps its claim. */
    private readonly flush: (refresh: () => Promise<void>) => Promise<void>,
    private readonly log: Logger,
    private readonly timing: RecoveryTiming = DEFAULT_RECOVERY_TIMING,
  ) {}

  /**
   * Resolves when the namespace was flushed for `identity`, here or by
   * another sidecar, or after the last attempt. `settled` is called once,
   * after the first attempt (whatever its outcome): this sidecar's L1 is
   * dropped then, not after a wait for the others.
   */
  async recover(identity: string, settled: () => void = () => undefined): Promise<RecoveryOutcome> {
    const key = this.keys.recovery(identity);
    let notified = false;
    const notify = () => {
      if (notified) return;
      notified = true;
      settled();
    };
    try {
      for (let attempt = 0; attempt < this.timing.maxAttempts; attempt++) {
        if (this.closed) return 'closed';
        try {
          const holder = await this.claim(key);
          if (holder === DONE) {
            this.counts.claimedElsewhere++;
            return 'done-elsewhere';
          }
          if (holder === this.sidecarId) {
            await this.flush(() => this.refresh(key));
            await this.link.command(this.link.client.set(key, DONE, 'PX', this.timing.doneMs), 'SET');
            this.counts.flushed++;
            this.log.warn({ identity }, 'flushed the namespace in Redis after it lost data or a master was replaced');
            return 'flushed';
          }
          // Another sidecar is flushing (or its claim just lapsed): look again after a while.
        } catch (error) {
          // Redis is likely still settling (a failover in progress): try again; a claim of ours is recognized as ours.
          this.counts.failed++;
          this.log.warn({ err: (error as Error).message, attempt }, 'could not flush the namespace after Redis lost data or a master was replaced; retrying');
        }
        notify();
        await this.pause(backoffDelay(attempt, this.timing.retryBaseMs, this.timing.retryMaxMs));
      }
      this.log.error({ identity, attempts: this.timing.maxAttempts }, 'gave up flushing the namespace after Redis lost data or a master was replaced');
      return 'gave-up';
    } finally {
      notify();
    }
  }

  /** Idempotent: attempts in progress stop at their next step. */
  close(): void {
    this.closed = true;
  }

  /** The claim's holder after trying to take it: this sidecar's ID, another's, DONE, or null (it lapsed meanwhile). */
  private async claim(key: string): Promise<string | null> {
    const taken = await this.link.command(this.link.client.set(key, this.sidecarId, 'PX', this.timing.claimMs, 'NX'), 'SET');
    if (taken === 'OK') return this.sidecarId;
    return this.link.command(this.link.client.get(key), 'GET');
  }

  private async refresh(key: string): Promise<void> {
    await this.link.command(this.link.client.pexpire(key, this.timing.claimMs), 'PEXPIRE');
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms).unref());
  }
}
