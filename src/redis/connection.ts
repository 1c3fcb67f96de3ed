import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import calculateSlot from 'cluster-key-slot';
import Redis, { Cluster, type ChainableCommander, type RedisOptions } from 'ioredis';
import type { WorkTracer } from '../cache/ports';
import type { Config, HostPort, RedisConfig } from '../config';
import type { Logger } from '../log';
import { LatencyWindow } from '../model/latency';

export type LinkState = 'connecting' | 'connected' | 'down';

/** A connection to one server (or the Sentinel-named primary), or to a whole Redis Cluster. */
export type RedisClient = Redis | Cluster;

/** A call's error or its reply: how several calls sent at once come back. */
export type Settled<T> = { error: Error } | { reply: T };

/** One command of a batch: the key it touches (where it must go on a Cluster) and how to queue it in a pipeline. */
export interface BatchCall {
  key: string;
  queue(pipeline: ChainableCommander): void;
}

export interface LinkOptions {
  commandTimeoutMs: number;
  connectTimeoutMs: number;
  reconnectBaseMs: number;
  reconnectMaxMs: number;
}

/** The settings of every Redis connection the sidecar opens, from its configuration. */
export function linkOptions(config: Pick<Config, 'redisCommandTimeoutMs' | 'redisReconnectMaxMs'>): LinkOptions {
  return {
    commandTimeoutMs: config.redisCommandTimeoutMs,
    connectTimeoutMs: Math.max(1000, config.redisCommandTimeoutMs * 2),
    reconnectBaseMs: 100,
    reconnectMaxMs: config.redisReconnectMaxMs,
  };
}

/**
 * Exponential backoff with full jitter, capped: many sidecars that lost the
 * same Redis do not reconnect in lockstep.
 */
export function backoffDelay(attempt: number, baseMs: number, maxMs: number, random = Math.random): number {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.max(baseMs / 2, Math.round(random() * ceiling));
}

/** Whether a failed command timed out (ioredis's commandTimeout, or our own PING deadline). */
export function isTimeout(error: unknown): boolean {
  return /timed? ?out/i.test((error as Error)?.message ?? '');
}

export function redisOptions(config: RedisConfig, options: LinkOptions, role: string): RedisOptions {
  return {
    host: config.host,
    port: config.port,
    username: config.username,
    password: config.password,
    db: config.db,
    tls: tlsOptions(config, config.host),
    connectionName: `context-cache:${role}`,
    lazyConnect: true,
    // Commands fail fast while Redis is away instead of piling up in memory.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    autoResubscribe: false,
    commandTimeout: options.commandTimeoutMs,
    connectTimeout: options.connectTimeoutMs,
    // A connection given up on (a timeout) is destroyed after this long if it does not close by
    // itself; ioredis's 2 s default would hold back the reconnect after a partition heals.
    disconnectTimeout: options.commandTimeoutMs,
    retryStrategy: (times) => backoffDelay(times, options.reconnectBaseMs, options.reconnectMaxMs),
    // Pub/Sub needs a connection of its own; RESP2 keeps replies in the shapes the scripts expect.
    protocol: 2,
  };
}

function tlsOptions(config: RedisConfig, host: string): RedisOptions['tls'] {
  // SNI takes a host name, never an IP address; the certificate is verified against the host either way.
  return config.tls ? { ...(isIP(host) ? {} : { servername: host }), ...(config.tlsCa ? { ca: config.tlsCa } : {}) } : undefined;
}

/**
 * The ioredis client for a role and the configured topology:
 * - one server: a `Redis`;
 * - Sentinel: a `Redis` that asks the Sentinels for the primary, and on
 *   every reconnect asks again (after a failover it lands on the promoted
 *   replica; `failoverDetector` moves it as soon as Sentinel announces
 *   +switch-master, without waiting for the old primary's socket to die);
 * - Cluster: a `Cluster` for commands (slots discovered from the seeds,
 *   MOVED/ASK followed, the topology refreshed on failover), but a plain
 *   `Redis` on one node for the subscriber: classic Pub/Sub is broadcast to
 *   every node of a cluster, and on a connection of our own a lost
 *   subscription is a lost socket that we see — ioredis's cluster
 *   subscriber would move to another node silently, and the messages
 *   published meanwhile would be lost unnoticed. Each reconnect tries the
 *   next node the cluster link last knew (`endpoints`).
 */
function createClient(config: RedisConfig, options: LinkOptions, role: string, endpoints: () => readonly HostPort[]): RedisClient {
  const base = redisOptions(config, options, role);
  const topology = config.topology;
  switch (topology.kind) {
    case 'single':
      return new Redis(base);
    case 'sentinel':
      return new Redis({
        ...base,
        sentinels: topology.sentinels,
        name: topology.masterName,
        role: 'master',
        sentinelUsername: topology.sentinelUsername,
        sentinelPassword: topology.sentinelPassword,
        enableTLSForSentinelMode: config.tls,
        sentinelTLS: tlsOptions(config, topology.sentinels[0]!.host),
        sentinelCommandTimeout: options.commandTimeoutMs,
        sentinelRetryStrategy: (times) => backoffDelay(times, options.reconnectBaseMs, options.reconnectMaxMs),
        failoverDetector: true,
      });
    case 'cluster': {
      if (role === 'subscriber') {
        const client = new Redis({ ...base, host: topology.seeds[0]!.host, port: topology.seeds[0]!.port });
        let attempt = 0;
        client.options.retryStrategy = (times) => {
          const known = endpoints();
          const next = known.length > 0 ? known[attempt++ % known.length]! : topology.seeds[attempt++ % topology.seeds.length]!;
          client.options.host = next.host;
          client.options.port = next.port;
          client.options.tls = tlsOptions(config, next.host);
          return backoffDelay(times, options.reconnectBaseMs, options.reconnectMaxMs);
        };
        return client;
      }
      const { host: _host, port: _port, retryStrategy: _retry, enableOfflineQueue: _offline, ...nodeOptions } = base;
      return new Cluster(topology.seeds, {
        redisOptions: { ...nodeOptions, tls: tlsOptions(config, topology.seeds[0]!.host) },
        lazyConnect: true,
        enableOfflineQueue: false,
        enableReadyCheck: true,
        scaleReads: 'master',
        // A failover moves slots: follow redirections and refresh the slot map promptly.
        maxRedirections: 16,
        retryDelayOnFailover: 100,
        retryDelayOnClusterDown: 100,
        retryDelayOnTryAgain: 100,
        slotsRefreshTimeout: Math.max(1000, options.commandTimeoutMs),
        slotsRefreshInterval: 5000,
        clusterRetryStrategy: (times) => backoffDelay(times, options.reconnectBaseMs, options.reconnectMaxMs),
        // Reconnect to a node that restarts without any slot change (a replica); ioredis's default is never.
        clusterNodeRetryStrategy: (times) => backoffDelay(times, options.reconnectBaseMs, options.reconnectMaxMs),
      });
    }
  }
}

/**
 * One ioredis connection with a state anyone can read at any moment, a
 * time-bounded PING, and one log line per state change. Reconnection is
 * ioredis's, with our backoff; while the link is not connected, commands
 * fail at once.
 *
 * Events: 'state' (LinkState), 'ready' (every time the connection becomes usable).
 */
export class RedisLink extends EventEmitter {
  readonly client: RedisClient;
  /** Round trips of the commands sent over this link. */
  readonly latency = new LatencyWindow();
  /** Traces each round trip made on behalf of a traced call (ops/tracing.ts); unset: tracing off. */
  tracer: WorkTracer | undefined;
  private currentState: LinkState = 'connecting';
  private since = Date.now();
  private closed = false;

  constructor(
    /** `locks`: a lock master of CONTEXT_CACHE_LOCK_REDIS_URLS (the cache never uses it). */
    readonly role: 'commands' | 'subscriber' | 'locks',
    config: RedisConfig,
    private readonly options: LinkOptions,
    private readonly log: Logger,
    /** Cluster subscriber: the nodes to try in turn when reconnecting (the command link's view of the cluster). */
    endpoints: () => readonly HostPort[] = () => [],
  ) {
    super();
    this.client = createClient(config, options, role, endpoints);
    this.client.on('ready', () => {
      this.setState('connected');
      this.emit('ready');
    });
    this.client.on('close', () => this.setState('down'));
    // ioredis gives up on a connection in a few corner cases (seen under Sentinel: a failover
    // detected while a reconnect was under way ends it, 'Connection is closed.'): it emits 'end'
    // and never tries again. A sidecar must not stay detached for good, so we start it again.
    this.client.on('end', () => {
      this.setState('down');
      if (this.closed) return;
      const timer = setTimeout(() => {
        if (!this.closed) this.client.connect().catch(() => undefined);
      }, backoffDelay(1, options.reconnectBaseMs, options.reconnectMaxMs));
      timer.unref();
    });
    this.client.on('reconnecting', () => {
      if (this.currentState !== 'down') this.setState('down');
    });
    this.client.on('error', (error: Error) => {
      // ioredis reports every failed attempt; the state change is logged once instead.
      this.log.debug({ link: role, err: error.message }, 'redis connection error');
    });
    // A Cluster reports each node's errors too (hundreds during a failover); unheard, they would take the process down.
    if (this.client instanceof Cluster) {
      this.client.on('node error', (error: Error, node: string) => this.log.debug({ link: role, node, err: error.message }, 'redis cluster node error'));
    }
  }

  get state(): LinkState {
    return this.currentState;
  }

  get stateSince(): number {
    return this.since;
  }

  get connected(): boolean {
    return this.currentState === 'connected';
  }

  /** Starts connecting; never throws: a Redis that is down at start-up is retried in the background. */
  start(): void {
    this.client.connect().catch(() => undefined);
  }

  /**
   * Runs one operation (a command, a script, a pipeline) on this link: its
   * round trip is recorded, and a timeout marks the link down — a hung or
   * paused Redis — so that later calls skip Redis at once instead of each
   * waiting out the timeout. The rejection still reaches the caller.
   * `operation` names it in traces (a command or script name); `batch`
   * describes a pipeline (`batch()`), whose calls fail one by one.
   */
  async command<T>(work: Promise<T>, operation = 'command', batch?: { size: number; failures: () => Error[] }): Promise<T> {
    const traced = this.tracer?.start(`redis ${operation}`, { 'db.system.name': 'redis', 'db.operation.name': operation, 'db.operation.batch.size': batch?.size ?? 1, 'context_cache.redis.link': this.role });
    try {
      const reply = await this.latency.time(work);
      if (traced !== undefined) {
        // A pipeline resolves with each call's error: the span fails if one did.
        const failed = batch?.failures() ?? [];
        traced.end(failed.length === 0 ? undefined : { error: failed[0], attributes: { 'context_cache.redis.failed_calls': failed.length } });
      }
      return reply;
    } catch (error) {
      traced?.end({ error });
      if (isTimeout(error)) this.reconnect();
      throw error;
    }
  }

  /**
   * Sends several commands as one operation (one `command`): in one
   * pipeline on one server, or on a Cluster in one pipeline per master
   * (grouped by the slot of each call's key), all at once — a pipeline
   * cannot span masters. Each call's error or reply comes back in order.
   */
  async batch(calls: readonly BatchCall[], operation = 'pipeline'): Promise<Settled<unknown>[]> {
    if (calls.length === 0) return [];
    const cluster = this.cluster;
    const groups = new Map<string, number[]>();
    calls.forEach((call, index) => {
      const node = cluster === undefined ? '' : (cluster.slots[calculateSlot(call.key)]?.[0] ?? '');
      let group = groups.get(node);
      if (group === undefined) groups.set(node, (group = []));
      group.push(index);
    });
    const settled: Settled<unknown>[] = new Array(calls.length);
    const sends = [...groups.values()].map(async (indexes) => {
      const pipeline = this.client.pipeline();
      for (const index of indexes) calls[index]!.queue(pipeline);
      const replies = (await pipeline.exec()) ?? [];
      indexes.forEach((callIndex, position) => {
        const [error, reply] = replies[position] ?? [new Error('no reply in the pipeline')];
        settled[callIndex] = error ? { error } : { reply };
      });
    });
    await this.command(Promise.all(sends), operation, { size: calls.length, failures: () => settled.flatMap((answer) => ('error' in answer ? [answer.error] : [])) });
    return settled;
  }

  /** Whether this link speaks to a Redis Cluster. */
  get cluster(): Cluster | undefined {
    return this.client instanceof Cluster ? this.client : undefined;
  }

  /** PING with a deadline: true when Redis answered in time. */
  async ping(timeoutMs = this.options.commandTimeoutMs): Promise<boolean> {
    if (!this.connected) return false;
    let timer: NodeJS.Timeout | undefined;
    try {
      const answer = await Promise.race([
        this.client.ping(),
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('ping timed out')), timeoutMs))),
      ]);
      // A connection in subscribe mode answers a RESP2 PING with ["pong", ""], not PONG.
      return answer === 'PONG' || (Array.isArray(answer) && String(answer[0]).toLowerCase() === 'pong');
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Declares the link unusable after a command timed out on a connection
   * that still looks open (a hung or paused Redis): the socket is dropped so
   * ioredis reconnects with backoff, and callers skip Redis meanwhile.
   */
  reconnect(reason = 'a command timed out'): void {
    if (this.closed || this.currentState !== 'connected') return;
    this.log.warn({ link: this.role, reason }, 'dropping the redis connection to reconnect');
    this.setState('down');
    this.client.disconnect(true);
  }

  /** Closes the connection: QUIT when possible, a hard disconnect otherwise. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Late callers (after the shutdown grace) see a link that is down, and skip Redis.
    this.currentState = 'down';
    this.removeAllListeners();
    try {
      if (this.client.status === 'ready') await Promise.race([this.client.quit(), new Promise((resolve) => setTimeout(resolve, 500))]);
    } catch {
      // Already gone.
    }
    this.client.disconnect(false);
  }

  private setState(state: LinkState): void {
    if (state === this.currentState || this.closed) return;
    const previous = this.currentState;
    const downForMs = Date.now() - this.since;
    this.currentState = state;
    this.since = Date.now();
    if (state === 'connected') {
      this.log.info({ link: this.role, ...(previous === 'down' ? { downForMs } : {}) }, previous === 'down' ? 'redis restored' : 'redis connected');
    } else if (state === 'down') {
      const meanwhile = this.role === 'locks' ? 'locks need a majority of their masters' : 'serving from L1';
      this.log.warn(
        { link: this.role },
        previous === 'connecting' ? `redis unreachable; ${meanwhile} and retrying with backoff` : `redis lost; ${meanwhile} and reconnecting with backoff`,
      );
    }
    this.emit('state', state);
  }
}
