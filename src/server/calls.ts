import type { ServiceError, handleServerStreamingCall, handleUnaryCall, ServerUnaryCall, ServerWritableStream } from '@grpc/grpc-js';
import { CacheError } from '../errors';
import type { Logger } from '../log';
import { toServiceError } from './status';

/**
 * Wraps every handler: refuses new calls once shutdown began, counts calls in
 * flight so shutdown can wait for them, tracks open streams so shutdown can
 * end them, and turns every failure into a status in one place.
 */
export class CallTracker {
  private inFlight = 0;
  private draining = false;
  private readonly idleWaiters: (() => void)[] = [];
  private readonly streams = new Set<ServerWritableStream<unknown, unknown>>();

  /** Told of every finished unary call (metrics). */
  onCallEnd: ((method: string, code: number, seconds: number) => void) | undefined;

  constructor(private readonly log: Logger) {}

  get accepting(): boolean {
    return !this.draining;
  }

  get openStreams(): number {
    return this.streams.size;
  }

  unary<Req, Res>(method: string, handler: (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res> | Res): handleUnaryCall<Req, Res> {
    return (call, callback) => {
      if (this.draining) {
        callback(toServiceError(shuttingDown(), method, this.log));
        return;
      }
      this.inFlight++;
      const started = process.hrtime.bigint();
      const finish = (code: number) => this.onCallEnd?.(method, code, Number(process.hrtime.bigint() - started) / 1e9);
      Promise.resolve()
        .then(() => handler(call.request, call))
        .then(
          (response) => {
            finish(0);
            callback(null, response);
          },
          (error: unknown) => {
            const status = toServiceError(error, method, this.log);
            finish(status.code ?? 2);
            callback(status);
          },
        )
        .finally(() => this.done());
    };
  }

  /**
   * A long-lived server stream. The handler returns once the stream is set
   * up; the stream stays tracked until it ends, and shutdown ends it with
   * UNAVAILABLE instead of waiting for it.
   */
  serverStream<Req, Res>(method: string, handler: (call: ServerWritableStream<Req, Res>) => Promise<void> | void): handleServerStreamingCall<Req, Res> {
    return (call) => {
      if (this.draining) {
        endStream(call, toServiceError(shuttingDown(), method, this.log));
        return;
      }
      const tracked = call as ServerWritableStream<unknown, unknown>;
      this.streams.add(tracked);
      const untrack = () => this.streams.delete(tracked);
      call.once('close', untrack);
      call.once('finish', untrack);
      call.once('cancelled', untrack);
      Promise.resolve()
        .then(() => handler(call))
        .catch((error: unknown) => {
          untrack();
          endStream(call, toServiceError(error, method, this.log));
        });
    };
  }

  /** Refuse new calls from now on and end open streams with UNAVAILABLE. */
  beginDrain(): void {
    this.draining = true;
    for (const stream of this.streams) {
      endStream(stream, toServiceError(shuttingDown(), 'shutdown', this.log));
    }
    this.streams.clear();
  }

  /** Resolves when no unary call is in flight. */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private done(): void {
    this.inFlight--;
    if (this.inFlight === 0) for (const resolve of this.idleWaiters.splice(0)) resolve();
  }
}

/** Ends a server stream with a status; grpc-js sends the status of an 'error' event once writes flush. */
export function endStream(call: ServerWritableStream<unknown, unknown> | ServerWritableStream<never, never>, error: Partial<ServiceError>): void {
  if (!call.writableEnded) call.emit('error', error);
}

function shuttingDown(): CacheError {
  return new CacheError('E_SHUTTING_DOWN', 'the sidecar is shutting down; retry on another instance or after it restarts');
}
