import type { Deadline, handleServerStreamingCall, handleUnaryCall, ServerUnaryCall, ServerWritableStream, ServiceError } from '@grpc/grpc-js';
import type { TraceAttributes } from '../cache/ports';
import { invalidArgument, shuttingDown } from '../errors';
import type { Logger } from '../log';
import { toServiceError } from './status';

/** Kept free at the end of a caller's deadline to answer in. */
const DEADLINE_MARGIN_MS = 20;

/**
 * What a handler knows of its call besides the request, built once per call
 * (in the manner of nice-grpc's CallContext): nobody wires `cancelled` or
 * `close` listeners by hand.
 */
export interface CallContext {
  readonly method: string;
  /**
   * Aborts when the call is over for the caller: cancelled, its deadline
   * passed, its connection died — and for streams also when the stream
   * ended or failed, whoever ended it.
   */
  readonly signal: AbortSignal;
  /** The caller's deadline, epoch ms; Infinity for none. */
  readonly deadline: number;
  /** The deadline less a margin to answer in; Infinity for none. */
  readonly answerBy: number;
  /** Adds what the handler learned (tier, hit) to the call's span; undefined when the call is not traced. */
  readonly annotate: ((attributes: TraceAttributes) => void) | undefined;
}

/** Traces calls (ops/tracing.ts); with tracing off none is set and calls pay nothing for it. */
export interface CallTracer {
  /** The span of a call that is traced (undefined: not sampled). A stream's span ends by itself when the stream does. */
  start(method: string, call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>, streaming: boolean): TracedCall | undefined;
}

export interface TracedCall {
  /** Runs the handler with the span current, so that the work done for it (Redis, lease waits) becomes its children. */
  run<T>(handler: () => T): T;
  annotate(attributes: TraceAttributes): void;
  /** A unary call ended with this status code. */
  end(code: number): void;
}

/** Runs `listener` once when the call ends — at once if it already has. */
export function onCallEnd(context: CallContext, listener: () => void): void {
  if (context.signal.aborted) listener();
  else context.signal.addEventListener('abort', listener, { once: true });
}

/**
 * A request that did not decode (encoding.ts's strict decoder), in place of
 * the message: the tracker answers INVALID_ARGUMENT with the reason instead
 * of running the handler.
 */
export const UNDECODABLE = Symbol('undecodable request');

function undecodableReason(request: unknown): string | undefined {
  return typeof request === 'object' && request !== null && UNDECODABLE in request ? (request as { [UNDECODABLE]: string })[UNDECODABLE] : undefined;
}

/** Marks a handler whose responses are pre-encoded: Buffers, or ResponseWriters (see `acceptPreEncoded` in encoding.ts). */
export const PRE_ENCODED = Symbol('pre-encoded responses');

export interface HandlerOptions {
  /** The handler answers with (or writes) encoded messages as Buffers. */
  preEncoded?: boolean;
}

type Call = ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>;

function deadlineMs(deadline: Deadline): number {
  const ms = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(ms) ? ms : Number.POSITIVE_INFINITY;
}

/**
 * The context of one call. Its parts are made on first use: most unary
 * handlers never look at them, and an AbortController (or a closure) per
 * call is a cost on the hot path; the getters live on the prototype.
 */
class CallContextImpl implements CallContext {
  private controller: AbortController | undefined;

  constructor(
    readonly method: string,
    private readonly call: Call,
    private readonly endsWith: readonly string[],
    private readonly traced: TracedCall | undefined,
  ) {}

  get annotate(): ((attributes: TraceAttributes) => void) | undefined {
    const traced = this.traced;
    return traced && ((attributes) => traced.annotate(attributes));
  }

  get deadline(): number {
    return deadlineMs(this.call.getDeadline());
  }

  get answerBy(): number {
    return deadlineMs(this.call.getDeadline()) - DEADLINE_MARGIN_MS;
  }

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      const abort = (this.controller = new AbortController());
      if (this.call.cancelled) abort.abort(CALL_OVER);
      else for (const event of this.endsWith) this.call.once(event, () => abort.abort(CALL_OVER));
    }
    return this.controller.signal;
  }
}

/**
 * The reason of every call's abort. grpc-js emits `cancelled` when any
 * call's stream closes, finished or not, so a call whose handler asked for
 * its signal aborts it at the end; without a reason, abort() makes a
 * DOMException (a stack trace) per call. Nobody reads the reason.
 */
const CALL_OVER = Object.freeze(new Error('the call is over'));

const UNARY_ENDS = ['cancelled'] as const;
const STREAM_ENDS = ['cancelled', 'close', 'finish', 'error'] as const;

const isThenable = (value: unknown): value is PromiseLike<unknown> => typeof (value as PromiseLike<unknown> | undefined)?.then === 'function';

function declare<H extends object>(handler: H, options: HandlerOptions): H {
  if (options.preEncoded) Object.defineProperty(handler, PRE_ENCODED, { value: true });
  return handler;
}

/**
 * Wraps every handler: refuses new calls once shutdown began, counts calls in
 * flight so shutdown can wait for them, tracks open streams so shutdown can
 * end them, builds each call's context, and turns every failure into a
 * status in one place.
 */
export class CallTracker {
  private inFlight = 0;
  private draining = false;
  private readonly idleWaiters: (() => void)[] = [];
  private readonly streams = new Set<ServerWritableStream<unknown, unknown>>();

  /** Told of every finished unary call (metrics). */
  onCallEnd: ((method: string, code: number, seconds: number) => void) | undefined;
  /** Traces calls; unset: tracing off. */
  tracer: CallTracer | undefined;

  constructor(private readonly log: Logger) {}

  get accepting(): boolean {
    return !this.draining;
  }

  get openStreams(): number {
    return this.streams.size;
  }

  unary<Req, Res>(method: string, handler: (request: Req, context: CallContext) => Promise<Res> | Res, options: HandlerOptions = {}): handleUnaryCall<Req, Res> {
    return declare<handleUnaryCall<Req, Res>>((call, callback) => {
      if (this.draining) {
        callback(toServiceError(shuttingDown(), method, this.log));
        return;
      }
      const undecodable = undecodableReason(call.request);
      if (undecodable !== undefined) {
        callback(toServiceError(invalidArgument(undecodable), method, this.log));
        return;
      }
      this.inFlight++;
      const started = performance.now();
      const traced = this.tracer?.start(method, call as Call, false);
      const finish = (code: number) => {
        this.done();
        traced?.end(code);
        this.onCallEnd?.(method, code, (performance.now() - started) / 1000);
      };
      const succeed = (response: Res) => {
        finish(0);
        callback(null, response);
      };
      const fail = (error: unknown) => {
        const status = toServiceError(error, method, this.log);
        finish(status.code ?? 2);
        callback(status);
      };
      // A handler that can answer at once (an L1 hit) returns its response, not a promise:
      // no microtask hop and no promise chain for the hot path.
      let result: Promise<Res> | Res;
      try {
        const context = new CallContextImpl(method, call as Call, UNARY_ENDS, traced);
        result = traced === undefined ? handler(call.request, context) : traced.run(() => handler(call.request, context));
      } catch (error) {
        fail(error);
        return;
      }
      if (isThenable(result)) result.then(succeed, fail);
      else succeed(result);
    }, options);
  }

  /**
   * A long-lived server stream. The handler returns once the stream is set
   * up; the stream stays tracked until it ends, and shutdown ends it with
   * UNAVAILABLE instead of waiting for it. A handler that throws ends the
   * stream with the error's status.
   */
  serverStream<Req, Res>(
    method: string,
    handler: (call: ServerWritableStream<Req, Res>, context: CallContext) => Promise<void> | void,
    options: HandlerOptions = {},
  ): handleServerStreamingCall<Req, Res> {
    return declare<handleServerStreamingCall<Req, Res>>((call) => {
      if (this.draining) {
        endStream(call, toServiceError(shuttingDown(), method, this.log));
        return;
      }
      const undecodable = undecodableReason(call.request);
      if (undecodable !== undefined) {
        endStream(call, toServiceError(invalidArgument(undecodable), method, this.log));
        return;
      }
      const tracked = call as ServerWritableStream<unknown, unknown>;
      const traced = this.tracer?.start(method, tracked, true);
      const context = new CallContextImpl(method, tracked, STREAM_ENDS, traced);
      void context.signal;
      this.streams.add(tracked);
      onCallEnd(context, () => this.streams.delete(tracked));
      Promise.resolve()
        .then(traced === undefined ? () => handler(call, context) : () => traced.run(() => handler(call, context)))
        .catch((error: unknown) => {
          this.streams.delete(tracked);
          endStream(call, toServiceError(error, method, this.log));
        });
    }, options);
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
