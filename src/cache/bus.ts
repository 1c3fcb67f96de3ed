import { EventEmitter } from 'node:events';
import type { Logger } from '../log';
import type { RedisLink } from '../redis/connection';
import type { NodeRecord } from '../context/node';
import type { CacheEvent, EventEnvelope } from './events';

/**
 * The wire form of an event on the namespace's Pub/Sub channel: compact
 * JSON, keys/tags/session with versions as strings (Lua's cjson would round
 * 16-digit numbers), never a cached value. Most messages are written by the
 * Lua scripts that perform the write, so a write and its announcement are
 * one atomic step.
 */
export interface BusMessage {
  /** Origin sidecar. */
  o: string;
  /** When it happened: epoch milliseconds as a string (Redis TIME or the origin's clock). */
  t?: string;
  /** k: keys, g: tags, s: session, n: node appended. */
  e: 'k' | 'g' | 's' | 'n';
  c?: 'set' | 'del' | 'inv' | 'fill';
  k?: string[];
  v?: string[] | string;
  g?: string[];
  s?: string;
  n?: NodeRecord;
  /** Node events: the session's version before the append. */
  p?: string;
}

/** Thrown for a message this version cannot trust; the message is ignored and counted. */
class MalformedMessage extends Error {}

const isString = (value: unknown): value is string => typeof value === 'string';
const isStringArray = (value: unknown): value is string[] => Array.isArray(value) && value.every(isString);

function integer(value: unknown, what: string): number {
  const number = typeof value === 'string' || typeof value === 'number' ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(number) || number < 0) throw new MalformedMessage(`${what} is not a non-negative integer`);
  return number;
}

/** A node as published by APPEND_SCRIPT (JSON.stringify of a NodeRecord); anything else is refused. */
function node(value: unknown): NodeRecord {
  const n = value as Partial<NodeRecord> | null;
  if (
    n === null ||
    typeof n !== 'object' ||
    ![n.id, n.shortId, n.sessionId, n.parentId, n.content].every(isString) ||
    !Number.isSafeInteger(n.role) ||
    (n.role as number) < 0 ||
    (n.role as number) > 2 ** 31 - 1 ||
    !Number.isSafeInteger(n.createdAt) ||
    !isStringArray(n.refs) ||
    typeof n.metadata !== 'object' ||
    n.metadata === null ||
    !Object.values(n.metadata).every(isString)
  ) {
    throw new MalformedMessage('node event with a malformed node');
  }
  return n as NodeRecord;
}

/**
 * Parses and checks one message. Messages come from other sidecars — of
 * another version during a rollout — or from anyone with PUBLISH rights on
 * the channel: nothing in them is trusted until checked.
 */
export function decodeBusMessage(raw: string, receivedAt: number): EventEnvelope[] {
  let message: BusMessage;
  try {
    message = JSON.parse(raw) as BusMessage;
  } catch {
    throw new MalformedMessage('not JSON');
  }
  if (message === null || typeof message !== 'object' || !isString(message.o)) throw new MalformedMessage('no origin');
  const time = message.t === undefined ? receivedAt : integer(message.t, 'time');
  const origin = message.o;
  const envelope = (event: CacheEvent): EventEnvelope => ({ event, origin, time });
  // cjson encodes an empty Lua table as {}: anything but an array of strings means none.
  const tags = isStringArray(message.g) ? message.g : [];
  switch (message.e) {
    case 'k': {
      const keys = message.k;
      const versions = message.v;
      if (!isStringArray(keys) || !isStringArray(versions) || versions.length !== keys.length) throw new MalformedMessage('key event without keys and versions');
      return keys.map((key, index) =>
        envelope({ kind: 'key', key, change: message.c === 'del' ? 'deleted' : 'set', version: integer(versions[index], 'version'), tags }),
      );
    }
    case 'g':
      // cjson encodes an empty list of keys as {} too.
      return [envelope({ kind: 'tags', tags, keys: isStringArray(message.k) ? message.k : [] })];
    case 's':
      if (!isString(message.s)) throw new MalformedMessage('session event without session');
      return [envelope({ kind: 'session', sessionId: message.s, change: message.c === 'fill' ? 'filled' : 'invalidated', version: integer(message.v, 'version') })];
    case 'n': {
      const sessionVersion = integer(message.v, 'version');
      let appended: NodeRecord;
      try {
        appended = node(message.n);
      } catch (error) {
        // The session did change: whatever this sidecar holds of it is older. Drop it rather than ignore the event.
        if (isString(message.s)) return [envelope({ kind: 'session', sessionId: message.s, change: 'invalidated', version: sessionVersion })];
        throw error;
      }
      return [envelope({ kind: 'node', node: appended, sessionVersion, previousVersion: integer(message.p ?? '0', 'previous version') })];
    }
    default:
      throw new MalformedMessage(`unknown event type ${String(message.e)}`);
  }
}

/**
 * The subscriber side of the Pub/Sub bus: one dedicated connection, one
 * channel per namespace. Events from this sidecar's own writes come back as
 * echoes and are ignored (they were applied locally already).
 *
 * Pub/Sub is at-most-once: whatever is published while the subscription is
 * down is lost. The bus therefore reports every (re)subscription; the cache
 * treats a re-subscription after a gap as "anything may have changed".
 *
 * Events: 'subscribed' (restored: boolean), 'unsubscribed', 'events' (EventEnvelope[]).
 */
export class Bus extends EventEmitter {
  private subscribedNow = false;
  private everSubscribed = false;
  private heartbeat: NodeJS.Timeout | undefined;
  readonly counters = { messagesIn: 0, echoes: 0, malformed: 0 };

  /**
   * `heartbeatMs`: how often the subscription proves it is alive with a PING
   * on its own connection. A subscriber socket can go half-open (a failover,
   * a NAT or conntrack entry lost) while commands still work; without the
   * heartbeat nothing would notice for minutes, and no invalidation would
   * arrive meanwhile.
   */
  constructor(
    private readonly link: RedisLink,
    private readonly channel: string,
    private readonly origin: string,
    private readonly log: Logger,
    private readonly heartbeatMs = 5000,
  ) {
    super();
    link.client.on('message', (channel: string, raw: string) => {
      if (channel === this.channel) this.receive(raw);
    });
    link.on('ready', () => this.subscribe());
    link.on('state', (state) => {
      if (state !== 'connected' && this.subscribedNow) {
        this.subscribedNow = false;
        this.emit('unsubscribed');
      }
    });
  }

  get subscribed(): boolean {
    return this.subscribedNow;
  }

  start(): void {
    this.link.start();
    this.heartbeat = setInterval(() => this.beat(), this.heartbeatMs);
    this.heartbeat.unref();
  }

  /** Stops the heartbeat; the link is closed by its owner. Idempotent. */
  stop(): void {
    clearInterval(this.heartbeat);
  }

  private beat(): void {
    if (!this.subscribedNow) return;
    // A PING that does not come back within the command timeout: drop the connection; the
    // reconnect re-subscribes, and the re-subscription resynchronizes.
    void this.link.ping().then((alive) => {
      if (!alive && this.subscribedNow) this.link.reconnect('the pub/sub heartbeat got no answer');
    });
  }

  private subscribe(): void {
    this.link.client.subscribe(this.channel).then(
      () => {
        const restored = this.everSubscribed;
        this.everSubscribed = true;
        this.subscribedNow = true;
        if (restored) this.log.info({ channel: this.channel }, 'pub/sub subscription restored');
        this.emit('subscribed', restored);
      },
      (error: Error) => {
        // Reconnect (with backoff) to try again, rather than stay unsubscribed until something else breaks.
        this.log.warn({ err: error.message, channel: this.channel }, 'pub/sub subscribe failed; reconnecting to retry');
        this.link.reconnect('SUBSCRIBE failed');
      },
    );
  }

  private receive(raw: string): void {
    let envelopes: EventEnvelope[];
    try {
      envelopes = decodeBusMessage(raw, Date.now());
    } catch (error) {
      this.counters.malformed++;
      this.log.warn({ err: (error as Error).message }, 'ignored a malformed pub/sub message');
      return;
    }
    if (envelopes[0]?.origin === this.origin) {
      this.counters.echoes++;
      return;
    }
    this.counters.messagesIn++;
    try {
      this.emit('events', envelopes);
    } catch (error) {
      // Inside ioredis's socket handler: a throw here would take the process down.
      this.log.error({ err: error }, 'applying a pub/sub event failed');
    }
  }
}
