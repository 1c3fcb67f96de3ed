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
 * Events: 'data-lost' (details).
 */
export class DataLossDetector extends EventEmitter {
  private runId: string | undefined;
  private epoch: string | undefined;

  constructor(
    private readonly link: RedisLink,
    private readonly epochKey: string,
    private readonly log: Logger,
  ) {
    super();
    link.on('ready', () => {
      this.check().catch((error: Error) => this.log.warn({ err: error.message }, 'could not check Redis for data loss; will check on the next reconnect'));
    });
  }

  private async check(): Promise<void> {
    const client = this.link.client;
    const info = await client.info('server');
    const runId = /run_id:(\w+)/.exec(info)?.[1];
    const candidate = randomUUID();
    // SET NX GET: creates the epoch if missing and returns the previous value either way.
    const previous = (await client.set(this.epochKey, candidate, 'NX', 'GET')) as string | null;
    const epoch = previous ?? candidate;
    const known = this.runId !== undefined;
    const lost = known && (runId !== this.runId || epoch !== this.epoch);
    if (lost) {
      const details = { previousRunId: this.runId, runId, epochReplaced: epoch !== this.epoch };
      this.log.warn(details, 'redis came back without its previous data');
      this.emit('data-lost', details);
    }
    this.runId = runId;
    this.epoch = epoch;
  }
}
