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

export function decodeBusMessage(raw: string, receivedAt: number): EventEnvelope[] {
  const message = JSON.parse(raw) as BusMessage;
  if (typeof message.o !== 'string') throw new Error('bus message without origin');
  const time = message.t === undefined ? receivedAt : Number(message.t);
  const envelope = (event: CacheEvent): EventEnvelope => ({ event, origin: message.o, time });
  const versions = Array.isArray(message.v) ? message.v : [];
  switch (message.e) {
    case 'k':
      return (message.k ?? []).map((key, index) =>
        envelope({
          kind: 'key',
          key,
          change: message.c === 'del' ? 'deleted' : 'set',
          version: Number(versions[index] ?? 0),
          // cjson encodes an empty Lua table as {}: anything but an array means no tags.
          tags: Array.isArray(message.g) ? message.g : [],
        }),
      );
    case 'g':
      return [envelope({ kind: 'tags', tags: Array.isArray(message.g) ? message.g : [] })];
    case 's':
      return [envelope({ kind: 'session', sessionId: message.s ?? '', change: message.c === 'fill' ? 'filled' : 'invalidated', version: Number(message.v ?? 0) })];
    case 'n':
      if (message.n === undefined) throw new Error('node event without node');
      return [envelope({ kind: 'node', node: message.n, sessionVersion: Number(message.v ?? 0), previousVersion: Number(message.p ?? 0) })];
    default:
      throw new Error(`unknown bus event type ${String(message.e)}`);
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
  readonly counters = { messagesIn: 0, echoes: 0, malformed: 0 };

  constructor(
    private readonly link: RedisLink,
    private readonly channel: string,
    private readonly origin: string,
    private readonly log: Logger,
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
      (error: Error) => this.log.warn({ err: error.message, channel: this.channel }, 'pub/sub subscribe failed; retrying on reconnect'),
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
    this.emit('events', envelopes);
  }
}
