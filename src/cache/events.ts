/**
 * What happened in the cache, as the core reports it: to this sidecar's Watch
 * streams, whether it happened here or on another sidecar. Events name keys,
 * tags and sessions with versions; the only payload they carry is an
 * appended node, because live sync is what that event is for.
 */
import type { NodeRecord } from '../context/node';

export type ResyncReason = 'subscription-restored' | 'redis-data-lost' | 'stream-overflow';

export type CacheEvent =
  | { kind: 'key'; key: string; change: 'set' | 'deleted'; version: number; tags: readonly string[] }
  | { kind: 'tags'; tags: readonly string[]; keys: readonly string[] }
  | { kind: 'session'; sessionId: string; change: 'invalidated' | 'filled'; version: number }
  | { kind: 'node'; node: NodeRecord; sessionVersion: number; previousVersion: number }
  | { kind: 'resync'; reason: ResyncReason };

export interface EventEnvelope {
  event: CacheEvent;
  /** The sidecar where it happened. */
  origin: string;
  /** Epoch milliseconds on the origin's clock. */
  time: number;
}

export type EventListener = (envelope: EventEnvelope) => void;

/**
 * Fan-out of events to in-process listeners (Watch streams). Listeners must
 * not throw and must not block; each stream bounds its own buffer.
 */
export class EventHub {
  private readonly listeners = new Set<EventListener>();
  delivered = 0;

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get size(): number {
    return this.listeners.size;
  }

  /** Set by the owner: where a listener's failure is reported (it never stops the others). */
  onListenerError: (error: unknown) => void = () => undefined;

  emit(envelope: EventEnvelope): void {
    for (const listener of this.listeners) {
      try {
        listener(envelope);
      } catch (error) {
        this.onListenerError(error);
      }
    }
  }
}
