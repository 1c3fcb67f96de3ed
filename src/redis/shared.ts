import type { SharedTier } from '../cache/ports';
import type { Config } from '../config';
import type { Logger } from '../log';
import { Bus } from './bus';
import type { ValueCodec } from './codec';
import { linkOptions, RedisLink } from './connection';
import { DataLossDetector } from './data-loss';
import { RedisEntryStore } from './entry-store';
import type { KeySpace } from './keys';
import { RedisLeaseStore } from './leases';
import { Mutex } from './mutex';
import { namespaceFlushed } from './scripts/namespace-flushed';
import { ScriptRunner } from './scripts/script';
import { RedisSessionStore } from './session-store';

/**
 * The Redis side of a sidecar, as the core sees it (`SharedTier`) and as the
 * stores need it: two connections (commands, and Pub/Sub), the entry and
 * session stores, fill leases, the bus and the data-loss detector. Built
 * from the configuration; `start()` connects, `close()` (idempotent) stops
 * the timers and closes both connections.
 */
export class RedisTier implements SharedTier {
  readonly link: RedisLink;
  readonly subscriber: RedisLink;
  readonly bus: Bus;
  readonly entries: RedisEntryStore;
  readonly sessions: RedisSessionStore;
  readonly leases: RedisLeaseStore;
  private readonly dataLoss: DataLossDetector;
  private readonly scripts: ScriptRunner;

  constructor(
    config: Config,
    private readonly keys: KeySpace,
    codec: ValueCodec,
    sidecarId: string,
    log: Logger,
  ) {
    const options = linkOptions(config);
    this.link = new RedisLink('commands', config.redis!, options, log);
    this.subscriber = new RedisLink('subscriber', config.redis!, options, log);
    this.scripts = new ScriptRunner(this.link.client, { keys, origin: sidecarId });
    const parts = { link: this.link, scripts: this.scripts, keys, codec, maxReadBytes: config.maxMessageBytes };
    this.entries = new RedisEntryStore(parts, (key, error) => log.warn({ key, err: error.message }, 'unusable value in Redis; treated as a miss'));
    this.sessions = new RedisSessionStore(parts, (sessionId, error) => log.warn({ sessionId, err: error.message }, 'unusable session in Redis; treated as a miss'));
    this.leases = new RedisLeaseStore(new Mutex([this.link.client], config.redis!.db), keys, this.link, (id, error) => log.warn({ subject: id, err: error.message }, 'unusable lease key in Redis; removed'));
    this.bus = new Bus(this.subscriber, keys.channel, sidecarId, log, config.pubsubHeartbeatMs);
    this.dataLoss = new DataLossDetector(this.link, keys.epoch, log, config.pubsubHeartbeatMs);
  }

  get connected(): boolean {
    return this.link.connected;
  }

  get downSince(): number | undefined {
    return this.link.connected ? undefined : this.link.stateSince;
  }

  onConnected(listener: () => void): void {
    this.link.on('ready', listener);
  }

  onDisconnected(listener: () => void): void {
    this.link.on('state', (state) => {
      if (state === 'down') listener();
    });
  }

  /** SCANs the namespace's cache keys away in batches (UNLINK: freed off Redis's main thread), then announces it. */
  async flushNamespace(): Promise<void> {
    const client = this.link.client;
    for (const match of this.keys.cachePatterns) {
      let cursor = '0';
      do {
        const [next, found] = await this.link.command(client.scan(cursor, 'MATCH', match, 'COUNT', 1000));
        if (found.length > 0) await this.link.command(client.unlink(...found));
        cursor = next;
      } while (cursor !== '0');
    }
    await this.link.command(this.scripts.run(namespaceFlushed));
  }

  async clockUs(): Promise<number> {
    const [seconds, micros] = await this.link.command(this.link.client.time());
    return Number(seconds) * 1_000_000 + Number(micros);
  }

  onDataLost(listener: () => void): void {
    this.dataLoss.on('data-lost', listener);
  }

  start(): void {
    this.link.start();
    this.bus.start();
    this.dataLoss.start();
  }

  async close(): Promise<void> {
    this.bus.stop();
    this.dataLoss.stop();
    await Promise.all([this.subscriber.close(), this.link.close()]);
  }
}
