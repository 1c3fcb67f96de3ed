import { EventEmitter } from 'node:events';
import type { EventBus } from '../cache/ports';
import type { Logger } from '../log';
import type { RemoteEnvelope } from '../model/events';
import type { RedisLink } from './connection';
import { decodeBusMessage } from './event-wire';

/**
 * The subscriber side of the Pub/Sub bus: one dedicated connection, one
 * channel per namespace. Events from this sidecar's own writes come back as
 * echoes and are ignored (they were applied locally already).
 *
 * Pub/Sub is at-most-once: whatever is published while the subscription is
 * down is lost. The bus therefore reports every (re)subscription; the cache
 * treats a re-subscription after a gap as "anything may have changed".
 *
 */
const MALFORMED_LOG_INTERVAL_MS = 10_000;

export class Bus implements EventBus {
  private readonly emitter = new EventEmitter();
  private subscribedNow = false;
  private everSubscribed = false;
  private heartbeat: NodeJS.Timeout | undefined;
  readonly counters = { messagesIn: 0, malformed: 0 };
  /** Malformed messages are logged at most once per interval, with how many there were: a flood is one line. */
  private malformedLoggedAt = 0;
  private malformedSinceLog = 0;

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
    link.client.on('message', (channel: string, raw: string) => {
      if (channel === this.channel) this.receive(raw);
    });
    link.on('ready', () => this.subscribe());
    link.on('state', (state) => {
      if (state !== 'connected' && this.subscribedNow) {
        this.subscribedNow = false;
        this.emitter.emit('change');
      }
    });
  }

  get subscribed(): boolean {
    return this.subscribedNow;
  }

  onEvents(listener: (envelopes: readonly RemoteEnvelope[]) => void): void {
    this.emitter.on('events', listener);
  }

  onSubscribed(listener: (restored: boolean) => void): void {
    this.emitter.on('subscribed', listener);
  }

  /** Told whenever `subscribed` changes (health reporting). */
  onChange(listener: () => void): void {
    this.emitter.on('change', listener);
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
        this.emitter.emit('subscribed', restored);
        this.emitter.emit('change');
      },
      (error: Error) => {
        // Reconnect (with backoff) to try again, rather than stay unsubscribed until something else breaks.
        this.log.warn({ err: error.message, channel: this.channel }, 'pub/sub subscribe failed; reconnecting to retry');
        this.link.reconnect('SUBSCRIBE failed');
      },
    );
  }

  private receive(raw: string): void {
    let envelopes: RemoteEnvelope[];
    try {
      envelopes = decodeBusMessage(raw, Date.now());
    } catch (error) {
      this.counters.malformed++;
      this.malformedSinceLog++;
      const now = Date.now();
      if (now - this.malformedLoggedAt >= MALFORMED_LOG_INTERVAL_MS) {
        this.log.warn({ err: (error as Error).message, count: this.malformedSinceLog }, 'ignored malformed pub/sub messages');
        this.malformedLoggedAt = now;
        this.malformedSinceLog = 0;
      }
      return;
    }
    // An echo of this sidecar's own write: applied locally already.
    if (envelopes[0]?.origin === this.origin) return;
    this.counters.messagesIn++;
    try {
      this.emitter.emit('events', envelopes);
    } catch (error) {
      // Inside ioredis's socket handler: a throw here would take the process down.
      this.log.error({ err: error }, 'applying a pub/sub event failed');
    }
  }
}
