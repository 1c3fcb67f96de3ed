import { credentials, InterceptingCall, Metadata, status, type CallOptions, type ChannelOptions, type ClientReadableStream, type Interceptor, type ServiceError } from '@grpc/grpc-js';
import {
  ContextCacheClient as GeneratedClient,
  ContextCacheService,
  type DeepPartial,
  type HoldLockResponse,
  type WatchResponse,
} from '../gen/contextcache/v1/context_cache';
import * as messages from '../gen/contextcache/v1/context_cache';

/*
 * The public surface, named on purpose: what an application needs to call
 * the sidecar. Everything else (generated codecs, the service definition)
 * stays internal and may change without notice.
 */

// Enums of the API (values and types).
export {
  InclusionReason,
  KeyChange,
  LinkState,
  RedisMode,
  RedisNodeRole,
  ResyncReason,
  Role,
  SessionChange,
  Source,
  WriteScope,
} from '../gen/contextcache/v1/context_cache';

// Messages: requests, responses and what they carry.
export type {
  AcquireLockRequest,
  AcquireLockResponse,
  AppendNodeRequest,
  AppendNodeResponse,
  BuildContextRequest,
  BuildContextResponse,
  ContextNode,
  DeepPartial,
  DeleteRequest,
  DeleteResponse,
  EntryInfo,
  ExtendLockRequest,
  ExtendLockResponse,
  GetManyRequest,
  GetManyResponse,
  GetManyResult,
  GetRequest,
  GetResponse,
  GetSessionNodesRequest,
  GetSessionNodesResponse,
  GetStatsResponse,
  HoldLockRequest,
  HoldLockResponse,
  InvalidateSessionRequest,
  InvalidateSessionResponse,
  InvalidateTagsRequest,
  InvalidateTagsResponse,
  KeyInvalidated,
  L1Stats,
  L2Stats,
  Lease,
  LeaseStats,
  LockStats,
  Node,
  NodeAppended,
  PubSubStats,
  RedisNode,
  RedisTopology,
  PutSessionNodesRequest,
  PutSessionNodesResponse,
  ReleaseLockRequest,
  ReleaseLockResponse,
  ResolveShortIdsRequest,
  ResolveShortIdsResponse,
  Resync,
  SessionInvalidated,
  SetRequest,
  SetResponse,
  TagsInvalidated,
  TierStats,
  WatchRequest,
  WatchResponse,
  WatchStarted,
  WatchStats,
} from '../gen/contextcache/v1/context_cache';

/** gRPC status codes, as `ContextCacheError.code` carries them. */
export { status as Status };

/**
 * Every failed call rejects with this: the gRPC status code (e.g.
 * `Status.UNAVAILABLE` while the sidecar shuts down, `Status.ABORTED` for a
 * refused conditional write or a stale lease) and the sidecar's message,
 * which names the field or rule at fault. It has the shape of grpc-js's
 * ServiceError, so code written against that keeps working.
 */
export class ContextCacheError extends Error {
  readonly code: status;
  readonly details: string;
  readonly metadata: Metadata;

  constructor(error: Partial<ServiceError> & { message?: string }) {
    super(error.message ?? error.details ?? 'call failed', { cause: error });
    this.name = 'ContextCacheError';
    this.code = error.code ?? status.UNKNOWN;
    this.details = error.details ?? '';
    this.metadata = error.metadata ?? new Metadata();
  }
}

type Service = typeof ContextCacheService;
type UnaryName = { [K in keyof Service]: Service[K]['responseStream'] extends false ? K : never }[keyof Service];
type RequestOf<K extends keyof Service> = Parameters<Service[K]['requestSerialize']>[0];
type ResponseOf<K extends keyof Service> = ReturnType<Service[K]['responseDeserialize']>;

export interface ClientOptionsExtra {
  authToken?: string | (() => string);
  interceptors?: Interceptor[];
}

/** Adds the bearer token to every call's metadata. */
function bearer(token: () => string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token()}`);
        next(metadata, listener);
      },
    });
}

export interface ClientCallOptions {
  /** Absolute deadline or milliseconds from now. */
  deadline?: Date | number;
}

/** A server stream as an async iterable that can be cancelled. */
export interface EventStream<T> extends AsyncIterable<T> {
  cancel(): void;
  readonly call: ClientReadableStream<T>;
}

/**
 * A promise-based TypeScript client for the sidecar. Requests are partial:
 * unset fields take their proto defaults. Every call accepts a deadline;
 * failures reject with a ContextCacheError carrying the status code and the
 * sidecar's message.
 */
export class ContextCacheClient {
  /** The underlying grpc-js client, for what this wrapper does not cover. */
  readonly raw: GeneratedClient;

  /**
   * `authToken`: the sidecar's bearer token (CONTEXT_CACHE_AUTH_TOKEN_FILE),
   * or a function returning the current one (read a rotated Secret file in
   * it); sent as `authorization: Bearer <token>` on every call. The other
   * options are grpc-js channel and client options.
   */
  constructor(address: string, options: Partial<ChannelOptions> & ClientOptionsExtra = {}) {
    const { authToken, interceptors = [], ...channel } = options;
    const token = typeof authToken === 'string' ? () => authToken : authToken;
    this.raw = new GeneratedClient(address, credentials.createInsecure(), {
      interceptors: token === undefined ? interceptors : [bearer(token), ...interceptors],
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // Contexts of hundreds of nodes are large responses: a 64 KiB HTTP/2 window would stall them.
      'grpc-node.flow_control_window': 16 * 1024 * 1024,
      // What the sidecar may send by default (CONTEXT_CACHE_MAX_MESSAGE_BYTES), not grpc-js's 4 MiB.
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
      ...channel,
    });
  }

  /** Calls any unary RPC by its method name, e.g. `call('get', { key })`. */
  call<K extends UnaryName>(method: K, request: DeepPartial<RequestOf<K>>, options: ClientCallOptions = {}): Promise<ResponseOf<K>> {
    const definition = ContextCacheService[method];
    // Filling defaults through the request type's own fromPartial keeps encoding total.
    const full = (requestCodecs[method] as { fromPartial(p: unknown): RequestOf<K> }).fromPartial(request);
    const callOptions: CallOptions = options.deadline === undefined ? {} : { deadline: toDeadline(options.deadline) };
    return new Promise((resolve, reject) => {
      this.raw.makeUnaryRequest(
        definition.path,
        definition.requestSerialize as (value: RequestOf<K>) => Buffer,
        definition.responseDeserialize as (value: Buffer) => ResponseOf<K>,
        full,
        callOptions,
        (error: ServiceError | null, response?: ResponseOf<K>) => (error ? reject(new ContextCacheError(error)) : resolve(response!)),
      );
    });
  }

  get = (r: DeepPartial<RequestOf<'get'>>, o?: ClientCallOptions) => this.call('get', r, o);
  getMany = (r: DeepPartial<RequestOf<'getMany'>>, o?: ClientCallOptions) => this.call('getMany', r, o);
  set = (r: DeepPartial<RequestOf<'set'>>, o?: ClientCallOptions) => this.call('set', r, o);
  delete = (r: DeepPartial<RequestOf<'delete'>>, o?: ClientCallOptions) => this.call('delete', r, o);
  invalidateTags = (r: DeepPartial<RequestOf<'invalidateTags'>>, o?: ClientCallOptions) => this.call('invalidateTags', r, o);
  getSessionNodes = (r: DeepPartial<RequestOf<'getSessionNodes'>>, o?: ClientCallOptions) => this.call('getSessionNodes', r, o);
  putSessionNodes = (r: DeepPartial<RequestOf<'putSessionNodes'>>, o?: ClientCallOptions) => this.call('putSessionNodes', r, o);
  appendNode = (r: DeepPartial<RequestOf<'appendNode'>>, o?: ClientCallOptions) => this.call('appendNode', r, o);
  invalidateSession = (r: DeepPartial<RequestOf<'invalidateSession'>>, o?: ClientCallOptions) => this.call('invalidateSession', r, o);
  resolveShortIds = (r: DeepPartial<RequestOf<'resolveShortIds'>>, o?: ClientCallOptions) => this.call('resolveShortIds', r, o);
  buildContext = (r: DeepPartial<RequestOf<'buildContext'>>, o?: ClientCallOptions) => this.call('buildContext', r, o);
  acquireLock = (r: DeepPartial<RequestOf<'acquireLock'>>, o?: ClientCallOptions) => this.call('acquireLock', r, o);
  extendLock = (r: DeepPartial<RequestOf<'extendLock'>>, o?: ClientCallOptions) => this.call('extendLock', r, o);
  releaseLock = (r: DeepPartial<RequestOf<'releaseLock'>>, o?: ClientCallOptions) => this.call('releaseLock', r, o);
  getStats = (o?: ClientCallOptions) => this.call('getStats', {}, o);

  /** Opens a Watch stream; iterate it, and cancel it when done. */
  watch(request: DeepPartial<RequestOf<'watch'>>, options: ClientCallOptions = {}): EventStream<WatchResponse> {
    return this.stream('watch', request, options);
  }

  /** Opens a stream-bound lock; the lock lives until the stream is cancelled. */
  holdLock(request: DeepPartial<RequestOf<'holdLock'>>, options: ClientCallOptions = {}): EventStream<HoldLockResponse> {
    return this.stream('holdLock', request, options);
  }

  close(): void {
    this.raw.close();
  }

  private stream<K extends 'watch' | 'holdLock'>(method: K, request: DeepPartial<RequestOf<K>>, options: ClientCallOptions): EventStream<ResponseOf<K>> {
    const definition = ContextCacheService[method];
    const full = (requestCodecs[method] as { fromPartial(p: unknown): RequestOf<K> }).fromPartial(request);
    const call = this.raw.makeServerStreamRequest(
      definition.path,
      definition.requestSerialize as (value: RequestOf<K>) => Buffer,
      definition.responseDeserialize as (value: Buffer) => ResponseOf<K>,
      full,
      options.deadline === undefined ? {} : { deadline: toDeadline(options.deadline) },
    );
    return {
      call,
      cancel: () => call.cancel(),
      [Symbol.asyncIterator]: () => {
        const inner = call[Symbol.asyncIterator]() as AsyncIterator<ResponseOf<K>>;
        return {
          next: () => inner.next().catch((error: ServiceError) => Promise.reject(new ContextCacheError(error))),
          return: (value?: unknown) => inner.return?.(value) ?? Promise.resolve({ done: true as const, value: undefined }),
        };
      },
    };
  }
}

function toDeadline(deadline: Date | number): Date {
  return typeof deadline === 'number' ? new Date(Date.now() + deadline) : deadline;
}

/** Each method's request codec, found by the request type's name in the generated module. */
const requestCodecs = Object.fromEntries(
  Object.entries(ContextCacheService).map(([method, definition]) => {
    const typeName = definition.path.slice(definition.path.lastIndexOf('/') + 1) + 'Request';
    return [method, (messages as unknown as Record<string, unknown>)[typeName]];
  }),
) as Record<keyof Service, unknown>;
