/**
 * Backoff with full jitter, for retries of idempotent calls and for the
 * reconnection of Watch streams: a fleet of clients that lost their sidecar
 * at the same moment does not come back in lockstep.
 */

export interface RetryOptions {
  /** Attempts in all, the first included (1: no retry). */
  attempts: number;
  /** The first backoff's ceiling; each further one doubles it. */
  initialBackoffMs: number;
  /** The ceiling of every backoff. */
  maxBackoffMs: number;
}

/** Two retries, 25 ms then 50 ms ceilings: enough to ride out a sidecar's reconnect on localhost, short against a deadline. */
export const DEFAULT_RETRY: RetryOptions = Object.freeze({ attempts: 3, initialBackoffMs: 25, maxBackoffMs: 1000 });

/** The delay before retry number `retry` (0 for the first): uniform in [0, min(max, initial * 2^retry)]. */
export function backoffDelay(retry: number, initialMs: number, maxMs: number): number {
  return Math.random() * Math.min(maxMs, initialMs * 2 ** Math.min(retry, 30));
}

/** A backoff sequence that can be reset once things work again. */
export class Backoff {
  private retries = 0;

  constructor(
    private readonly initialMs: number,
    private readonly maxMs: number,
  ) {}

  next(): number {
    return backoffDelay(this.retries++, this.initialMs, this.maxMs);
  }

  reset(): void {
    this.retries = 0;
  }
}

export function validateRetry(options: RetryOptions): RetryOptions {
  if (!Number.isInteger(options.attempts) || options.attempts < 1 || options.attempts > 100) {
    throw new RangeError(`retry.attempts is ${options.attempts}; use a whole number from 1 (no retry) to 100`);
  }
  if (!(options.initialBackoffMs >= 0) || !(options.maxBackoffMs >= options.initialBackoffMs)) {
    throw new RangeError(`retry backoff ${options.initialBackoffMs}..${options.maxBackoffMs} ms is not a range; use 0 <= initialBackoffMs <= maxBackoffMs`);
  }
  return options;
}

/**
 * Runs `attempt` until it succeeds, `retryable` says no, the attempts are
 * used up, or the next backoff would end past `deadline` (epoch ms).
 */
export async function withRetries<T>(attempt: () => Promise<T>, options: RetryOptions, retryable: (error: unknown) => boolean, deadline: number): Promise<T> {
  for (let retry = 0; ; retry++) {
    try {
      return await attempt();
    } catch (error) {
      if (retry + 1 >= options.attempts || !retryable(error)) throw error;
      const delay = backoffDelay(retry, options.initialBackoffMs, options.maxBackoffMs);
      if (Date.now() + delay >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}
