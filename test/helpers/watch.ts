import type { EventStream, WatchResponse } from '../../src/client';

/**
 * Collects a Watch stream's messages in the background so tests can wait for
 * the one they expect (with a deadline) without racing the stream.
 */
export class WatchRecorder {
  readonly messages: WatchResponse[] = [];
  ended: Error | undefined | null = null;
  private readonly waiters = new Set<() => void>();

  constructor(readonly stream: EventStream<WatchResponse>) {
    stream.call.on('data', (message: WatchResponse) => {
      this.messages.push(message);
      this.notify();
    });
    stream.call.on('error', (error: Error) => {
      this.ended = error;
      this.notify();
    });
    stream.call.on('end', () => {
      this.ended ??= undefined;
      this.notify();
    });
  }

  /** Resolves with the first message (from `from` on) that matches, or fails at the deadline. */
  async waitFor(match: (message: WatchResponse) => boolean, what: string, timeoutMs = 10_000, from = 0): Promise<WatchResponse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.slice(from).find(match);
      if (found) return found;
      if (this.ended !== null) throw new Error(`watch stream ended (${this.ended?.message ?? 'OK'}) before ${what}`);
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.messages.map((m) => m.event?.$case))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, remaining);
        function done() {
          clearTimeout(timer);
          resolve();
        }
        this.waiters.add(done);
      });
    }
  }

  started(): Promise<WatchResponse> {
    return this.waitFor((m) => m.event?.$case === 'started', 'the started message');
  }

  cancel(): void {
    this.stream.cancel();
  }

  private notify(): void {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const wake of waiters) wake();
  }
}
