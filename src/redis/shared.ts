import type { SharedTier } from '../cache/ports';
import type { Config, RedisConfig } from '../config';
import type { Logger } from '../log';
import { Bus } from './bus';
import type { ValueCodec } from './codec';
import type { HostPort } from '../config';
import { linkOptions, RedisLink } from './connection';
import { DataLossDetector, type DataLossDetails } from './data-loss';
import { RedisEntryStore } from './entry-store';
import type { KeySpace } from './keys';
import { RedisLeaseStore } from './leases';
import { Mutex } from './mutex';
import { namespaceFlushed } from './scripts/namespace-flushed';
import { ScriptRunner } from './scripts/script';
import { NamespaceRecovery } from './recovery';
import { RedisSessionStore } from './session-store';

/** The nodes (masters and replicas) the command link knows of a Cluster; none off a Cluster. */
function clusterEndpoints(link: RedisLink): HostPort[] {
  return (link.cluster?.nodes('all') ?? []).map((node) => ({ host: node.options.host!, port: node.options.port! }));
}

export interface TopologyNode {
  address: string;
  role: 'primary' | 'replica';
  reachable: boolean;
  /** Hash slots served (Cluster primaries). */
  slots: number;
}

export interface TopologyView {
  mode: 'single' | 'cluster' | 'sentinel';
  nodes: TopologyNode[];
  allSlotsServed: boolean;
}

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
  private readonly dataLostListeners: (() => void)[] = [];
  private readonly recovery: NamespaceRecovery;

  private readonly config: RedisConfig;

  constructor(
    config: Config,
    private readonly keys: KeySpace,
    codec: ValueCodec,
    sidecarId: string,
    log: Logger,
  ) {
    this.config = config.redis!;
    const options = linkOptions(config);
    this.link = new RedisLink('commands', config.redis!, options, log);
    // On a Cluster the subscriber is a connection to one node; when it drops, it tries the nodes the command link knows.
    this.subscriber = new RedisLink('subscriber', config.redis!, options, log, () => clusterEndpoints(this.link));
    this.scripts = new ScriptRunner(this.link.client, { keys, origin: sidecarId });
    const parts = { link: this.link, scripts: this.scripts, keys, codec, maxReadBytes: config.maxMessageBytes };
    this.entries = new RedisEntryStore(parts, (key, error) => log.warn({ key, err: error.message }, 'unusable value in Redis; treated as a miss'));
    this.sessions = new RedisSessionStore(parts, (sessionId, error) => log.warn({ sessionId, err: error.message }, 'unusable session in Redis; treated as a miss'));
    this.leases = new RedisLeaseStore(new Mutex([this.link.client], config.redis!.db), keys, this.link, (id, error) => log.warn({ subject: id, err: error.message }, 'unusable lease key in Redis; removed'));
    this.bus = new Bus(this.subscriber, keys.channel, sidecarId, log, config.pubsubHeartbeatMs);
    this.dataLoss = new DataLossDetector(this.link, keys, log, config.pubsubHeartbeatMs);
    this.recovery = new NamespaceRecovery(this.link, keys, sidecarId, (refresh) => this.flushNamespace(refresh), log);
    // Every sidecar drops its own L1 at once (the claimer after its flush); all hear of the flush itself on the bus.
    this.dataLoss.on('data-lost', (details: DataLossDetails) => void this.recovery.recover(details.identity, () => this.dataLostListeners.forEach((listener) => listener())));
  }

  /** Namespace flushes after a failover or a restart that this sidecar carried out (claimedElsewhere: another one did). */
  get recoveries(): { readonly flushed: number; readonly claimedElsewhere: number; readonly failed: number } {
    return this.recovery.counts;
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

  /**
   * SCANs the namespace's cache keys away in batches (on a Cluster, on every
   * master; UNLINK: freed off Redis's main thread, one key per command as
   * they may lie in different slots), then announces it.
   */
  async flushNamespace(betweenPages: () => Promise<void> = async () => undefined): Promise<void> {
    const client = this.link.client;
    const servers = this.link.cluster?.nodes('master') ?? [client];
    for (const server of servers) {
      for (const match of this.keys.cachePatterns) {
        let cursor = '0';
        do {
          const [next, found] = await this.link.command(server.scan(cursor, 'MATCH', match, 'COUNT', 1000), 'SCAN');
          if (found.length > 0) await this.link.batch(found.map((key) => ({ key, queue: (p) => p.unlink(key) })), 'UNLINK');
          cursor = next;
          await betweenPages();
        } while (cursor !== '0');
      }
    }
    await this.link.command(this.scripts.run(namespaceFlushed), namespaceFlushed.name);
  }

  /** The deployment as this sidecar sees it, for GetStats and /metrics. */
  topology(): TopologyView {
    const mode = this.config.topology.kind;
    const cluster = this.link.cluster;
    if (cluster === undefined) {
      // One server, or the primary Sentinel named: where the command connection is now.
      const stream = (this.link.client as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
      const address = stream?.remoteAddress !== undefined ? `${stream.remoteAddress}:${stream.remotePort}` : `${this.config.host}:${this.config.port}`;
      return { mode, nodes: [{ address, role: 'primary', reachable: this.link.connected, slots: 0 }], allSlotsServed: this.link.connected };
    }
    const slotsOf = new Map<string, number>();
    let served = 0;
    cluster.slots.forEach((owners) => {
      const primary = owners?.[0];
      if (primary === undefined) return;
      slotsOf.set(primary, (slotsOf.get(primary) ?? 0) + 1);
    });
    const nodes: TopologyNode[] = cluster.nodes('all').map((node) => {
      const address = `${node.options.host}:${node.options.port}`;
      const slots = slotsOf.get(address) ?? 0;
      const reachable = node.status === 'ready';
      if (reachable) served += slots;
      return { address, role: slots > 0 || cluster.nodes('master').includes(node) ? 'primary' : 'replica', reachable, slots };
    });
    nodes.sort((a, b) => (a.role === b.role ? a.address.localeCompare(b.address) : a.role === 'primary' ? -1 : 1));
    return { mode, nodes, allSlotsServed: served === 16384 };
  }

  async clockUs(): Promise<number> {
    const [seconds, micros] = await this.link.command(this.link.client.time(), 'TIME');
    return Number(seconds) * 1_000_000 + Number(micros);
  }

  onDataLost(listener: () => void): void {
    this.dataLostListeners.push(listener);
  }

  start(): void {
    this.link.start();
    this.bus.start();
    this.dataLoss.start();
  }

  async close(): Promise<void> {
    this.recovery.close();
    this.bus.stop();
    this.dataLoss.stop();
    await Promise.all([this.subscriber.close(), this.link.close()]);
  }
}
