import { status, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import type { WatchRequest, WatchResponse, WatchResumeToken } from '../gen/contextcache/v1/context_cache';
import { toContextCacheError, type ContextCacheError } from './errors';
import { Backoff } from './retry';

export type WatchState = 'connecting' | 'live' | 'down' | 'failed' | 'closed';

export interface ResumingWatchOptions {
  /** The first reconnection's backoff ceiling (default 50 ms); it doubles per failed attempt. */
  initialBackoffMs?: number;
  /** The ceiling of every reconnection backoff (default 2 s). */
  maxBackoffMs?: number;
  /** Told of every change of state, with the error that ended a stream (down, failed). */
  onStateChange?: (state: WatchState, error?: ContextCacheError) => void;
}

export interface ResumingWatchCounters {
  /** Streams opened after the first. */
  reconnects: number;
  /** Reconnections that resumed without a gap. */
  resumed: number;
  /** Reconnections that could not resume (a Resync with RESUME_GAP followed). */
  gaps: number;
}

/** Status codes that no retry can fix: the request itself is wrong. */
const FATAL = new Set<number>([status.INVALID_ARGUMENT, status.UNIMPLEMENTED, status.PERMISSION_DENIED]);

/**
 * A Watch that outlives its streams: when a stream ends (the connection was
 * cut, the sidecar restarted or shut down), it opens a new one after a
 * backoff with full jitter, with `resume_after` set to the token of the
 * last message delivered, so that nothing is missed — or, when the sidecar
 * no longer has what was missed, the new stream says so with a Resync
 * (RESUME_GAP). Every message reaches `onMessage` in order, exactly as the
 * streams delivered it. Only a request the sidecar refuses as invalid stops
 * it (state `failed`).
 */
export class ResumingWatch {
  readonly counters: ResumingWatchCounters = { reconnects: 0, resumed: 0, gaps: 0 };
  private call: ClientReadableStream<WatchResponse> | undefined;
  private token: WatchResumeToken | undefined;
  private currentState: WatchState = 'connecting';
  private readonly backoff: Backoff;
  private timer: NodeJS.Timeout | undefined;
  private opened = 0;

  constructor(
    private readonly open: (request: WatchRequest) => ClientReadableStream<WatchResponse>,
    private readonly request: WatchRequest,
    private readonly onMessage: (message: WatchResponse) => void,
    private readonly options: ResumingWatchOptions = {},
  ) {
    this.backoff = new Backoff(options.initialBackoffMs ?? 50, options.maxBackoffMs ?? 2000);
  }

  get state(): WatchState {
    return this.currentState;
  }

  /** The token of the last message delivered: where the next stream resumes. */
  get resumeToken(): WatchResumeToken | undefined {
    return this.token;
  }

  /** Opens the first stream. */
  start(): this {
    if (this.call === undefined && this.currentState === 'connecting') this.connect();
    return this;
  }

  /** Ends the current stream and stops reconnecting. Idempotent. */
  close(): void {
    if (this.currentState === 'closed') return;
    clearTimeout(this.timer);
    const call = this.call;
    this.call = undefined;
    this.setState('closed');
    call?.cancel();
  }

  private connect(): void {
    const resuming = this.token !== undefined;
    if (this.opened++ > 0) this.counters.reconnects++;
    this.setState('connecting');
    const call = this.open({ ...this.request, resumeAfter: this.token });
    this.call = call;
    call.on('data', (message: WatchResponse) => {
      if (this.call !== call) return;
      if (message.event?.$case === 'started') {
        if (resuming) {
          if (message.event.value.resumed) this.counters.resumed++;
          else this.counters.gaps++;
        }
        this.backoff.reset();
        this.setState('live');
      }
      if (message.resumeToken !== undefined) this.token = message.resumeToken;
      this.onMessage(message);
    });
    const ended = (error: ServiceError | undefined) => {
      if (this.call !== call) return;
      this.call = undefined;
      const failure = toContextCacheError(error ?? { code: status.UNAVAILABLE, details: 'the Watch stream ended' }, 'watch');
      if (FATAL.has(failure.code)) {
        this.setState('failed', failure);
        return;
      }
      this.setState('down', failure);
      this.timer = setTimeout(() => {
        if (this.currentState === 'down') this.connect();
      }, this.backoff.next());
    };
    call.on('error', (error: ServiceError) => ended(error));
    call.on('end', () => ended(undefined));
  }

  private setState(state: WatchState, error?: ContextCacheError): void {
    if (state === this.currentState && error === undefined) return;
    this.currentState = state;
    this.options.onStateChange?.(state, error);
  }
}
