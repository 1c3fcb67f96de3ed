import type { EventEnvelope } from '../model/events';

export type EventListener = (envelope: EventEnvelope) => void;

/**
 * Fan-out of events to in-process listeners (Watch streams, lease waiters,
 * metrics). Listeners must not throw and must not block; each stream bounds
 * its own buffer.
 */
export class EventHub {
  private readonly listeners = new Set<EventListener>();

  /** Set by the owner: where a listener's failure is reported (it never stops the others). */
  onListenerError: (error: unknown) => void = () => undefined;

  subscribe(listener: EventListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get size(): number {
    return this.listeners.size;
  }

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
