import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Logger } from '../log';
import type { RedisLink } from './connection';
import type { KeySpace } from './keys';

/**
 * Tells whether the Redis we reconnected to still holds what it held before:
 * the same server processes (INFO run_id of the server, of the primary
 * Sentinel names, or of every Cluster master) and the namespace's epoch keys
 * (one per bucket: on a Cluster each shard holds some). A restart, a
 * failover (a promoted replica is another process, and asynchronous
 * replication may have left it without the last acknowledged writes) or a
 * FLUSHALL changes one of them; then anything this sidecar cached may have
 * been invalidated in ways it never heard of, and what Redis holds may be
 * older than what was acknowledged. A resharding moves slots between the
 * same masters and changes neither.
 *
 * Checked on every (re)connection, and every `intervalMs` while connected:
 * a FLUSHALL, or a failover on a Cluster, drops no connection of ours.
 *
 * Events: 'data-lost' (details, with `identity`: a digest of the new
 * masters and epochs, the same in every sidecar that sees the same Redis).
 */
export interface DataLossDetails {
  previousMasters: string[];
  masters: string[];
  epochReplaced: boolean;
  identity: string;
}

export class DataLossDetector extends EventEmitter {
  private masters: Set<string> | undefined;
  private epochs: string[] | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checking = false;
  private failures = 0;

  constructor(
    private readonly link: RedisLink,
    private readonly keys: KeySpace,
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

  /** The run_id of each master ('' where INFO is denied by an ACL: the epochs alone still tell). */
  private async masterRunIds(): Promise<string[]> {
    const cluster = this.link.cluster;
    const servers = cluster ? cluster.nodes('master') : [this.link.client];
    if (servers.length === 0) throw new Error('no Cluster master is known yet');
    const infos = await Promise.all(servers.map((server) => this.link.command(server.info('server'), 'INFO').catch((error: Error) => (isNoPermission(error) ? '' : Promise.reject(error)))));
    return infos.map((info) => /run_id:(\w+)/.exec(info)?.[1] ?? '').sort();
  }

  private async check(): Promise<void> {
    const runIds = await this.masterRunIds();
    const candidate = randomUUID();
    // SET NX GET: creates the epoch if missing and returns the previous value either way.
    const answers = await this.link.batch(this.keys.bucketList.map((bucket) => ({ key: this.keys.epoch(bucket), queue: (p) => p.set(this.keys.epoch(bucket), candidate, 'NX', 'GET') })), 'SET');
    const epochs = answers.map((answer) => {
      if ('error' in answer) throw answer.error;
      return (answer.reply as string | null) ?? candidate;
    });
    const masters = new Set(runIds.filter((id) => id !== ''));
    if (this.masters !== undefined && this.epochs !== undefined) {
      const epochReplaced = epochs.some((epoch, index) => epoch !== this.epochs![index]);
      const newMaster = [...masters].some((id) => !this.masters!.has(id));
      if (epochReplaced || newMaster) {
        const identity = createHash('sha256').update([...masters].sort().join(',')).update('|').update(epochs.join(',')).digest('hex').slice(0, 24);
        const details: DataLossDetails = { previousMasters: [...this.masters], masters: [...masters], epochReplaced, identity };
        this.log.warn(details, epochReplaced ? 'redis came back without its previous data' : 'a redis master was replaced (failover or restart): it may lack the last writes');
        this.emit('data-lost', details);
      }
    }
    this.masters = masters;
    this.epochs = epochs;
  }
}

function isNoPermission(error: Error): boolean {
  return /NOPERM|no permissions/i.test(error.message);
}
