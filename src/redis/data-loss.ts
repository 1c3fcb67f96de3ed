import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from '../log';
import type { RedisLink } from './connection';

/**
 * Tells whether the Redis we reconnected to still holds what it held before:
 * the same server process (INFO run_id) and the namespace's epoch key. A
 * restart, a failover or a FLUSHALL changes one of them; then anything this
 * sidecar cached may have been invalidated in ways it never heard of.
 *
 * Checked on every (re)connection, and every `intervalMs` while connected:
 * a FLUSHALL does not drop any connection.
 *
 * Events: 'data-lost' (details).
 */
export class DataLossDetector extends EventEmitter {
  private runId: string | undefined;
  private epoch: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  private failures = 0;

  constructor(
    private readonly link: RedisLink,
    private readonly epochKey: string,
    private readonly log: Logger,
    private readonly intervalMs = 5000,
  ) {
    super();
    link.on('ready', () => this.checkSafely());
  }

  start(): void {
    this.timer = setInterval(() => {
      if (this.link.connected) this.checkSafely();
    }, this.intervalMs);
    this.timer.unref();
  }

  /** Idempotent. */
  stop(): void {
    clearInterval(this.timer);
  }

  private checkSafely(): void {
    if (this.checking) return;
    this.checking = true;
    this.check()
      .then(() => (this.failures = 0))
      .catch((error: Error) => {
        // Once per run of failures at warn, not every interval.
        if (this.failures++ === 0) this.log.warn({ err: error.message }, 'could not check Redis for data loss; checking again later');
      })
      .finally(() => (this.checking = false));
  }

  private async check(): Promise<void> {
    const client = this.link.client;
    const info = await client.info('server').catch(() => '');
    const runId = /run_id:(\w+)/.exec(info)?.[1];
    const candidate = randomUUID();
    // SET NX GET: creates the epoch if missing and returns the previous value either way.
    const previous = (await client.set(this.epochKey, candidate, 'NX', 'GET')) as string | null;
    const epoch = previous ?? candidate;
    const known = this.epoch !== undefined;
    // run_id may be missing (INFO denied by an ACL): the epoch key alone still tells.
    const lost = known && (epoch !== this.epoch || (runId !== undefined && this.runId !== undefined && runId !== this.runId));
    if (lost) {
      const details = { previousRunId: this.runId, runId, epochReplaced: epoch !== this.epoch };
      this.log.warn(details, 'redis came back without its previous data');
      this.emit('data-lost', details);
    }
    this.runId = runId;
    this.epoch = epoch;
  }
}
