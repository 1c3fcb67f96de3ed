import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import Redis, { type RedisOptions } from 'ioredis';
import type { Config, RedisConfig } from '../config';
import type { Logger } from '../log';
import { LatencyWindow } from '../model/latency';

export type LinkState = 'connecting' | 'connected' | 'down';

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
    // SNI takes a host name, never an IP address; the certificate is verified against the host either way.
    tls: config.tls ? { ...(isIP(config.host) ? {} : { servername: config.host }), ...(config.tlsCa ? { ca: config.tlsCa } : {}) } : undefined,
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

/**
 * One ioredis connection with a state anyone can read at any moment, a
 * time-bounded PING, and one log line per state change. Reconnection is
 * ioredis's, with our backoff; while the link is not connected, commands
 * fail at once.
 *
 * Events: 'state' (LinkState), 'ready' (every time the connection becomes usable).
 */
export class RedisLink extends EventEmitter {
  readonly client: Redis;
  /** Round trips of the commands sent over this link. */
  readonly latency = new LatencyWindow();
  private currentState: LinkState = 'connecting';
  private since = Date.now();
  private closed = false;

  constructor(
    /** `locks`: a lock master of CONTEXT_CACHE_LOCK_REDIS_URLS (the cache never uses it). */
    readonly role: 'commands' | 'subscriber' | 'locks',
    config: RedisConfig,
    private readonly options: LinkOptions,
    private readonly log: Logger,
  ) {
    super();
    this.client = new Redis(redisOptions(config, options, role));
    this.client.on('ready', () => {
      this.setState('connected');
      this.emit('ready');
    });
    this.client.on('close', () => this.setState('down'));
    this.client.on('reconnecting', () => {
      if (this.currentState !== 'down') this.setState('down');
    });
    this.client.on('error', (error: Error) => {
      // ioredis reports every failed attempt; the state change is logged once instead.
      this.log.debug({ link: role, err: error.message }, 'redis connection error');
    });
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
   */
  async command<T>(work: Promise<T>): Promise<T> {
    try {
      return await this.latency.time(work);
    } catch (error) {
      if (isTimeout(error)) this.reconnect();
      throw error;
    }
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
