import { credentials, InterceptingCall, status, type CallOptions, type ChannelOptions, type ClientReadableStream, type Interceptor, type ServiceError } from '@grpc/grpc-js';
import * as messages from '../gen/contextcache/v1/context_cache';
import {
  ContextCacheClient as GeneratedClient,
  BuildContextRequest,
  ContextCacheService,
  Node as NodeMessage,
  WatchRequest,
  WriteScope,
  type DeepPartial,
  type GetManyResponse,
  type GetSessionNodesResponse,
  type HoldLockResponse,
  type Node,
  type WatchResponse,
} from '../gen/contextcache/v1/context_cache';
import { decodeBuildContextResponse, decodeGetManyResponse, decodeGetResponse, decodeGetSessionNodesResponse } from './codec';
import { ContextCacheError, toContextCacheError } from './errors';
import { getOrLoadEntry, getOrLoadSessionNodes, type LoadCounters, type LoadOptions, type LoadingPort } from './get-or-load';
import { NearCache, type NearCacheOptions, type NearCacheStats, type NearContextResponse, type NearGetResponse, type NearSessionResponse } from './near-cache';
import { DEFAULT_RETRY, validateRetry, withRetries, type RetryOptions } from './retry';
import { ResumingWatch, type ResumingWatchOptions } from './watch-stream';

type Service = typeof ContextCacheService;
type UnaryName = { [K in keyof Service]: Service[K]['responseStream'] extends false ? K : never }[keyof Service];
type RequestOf<K extends keyof Service> = Parameters<Service[K]['requestSerialize']>[0];
type ResponseOf<K extends keyof Service> = ReturnType<Service[K]['responseDeserialize']>;

export interface ClientOptions {
  /**
   * The sidecar's bearer token (CONTEXT_CACHE_AUTH_TOKEN_FILE), or a
   * function returning the current one (read a rotated Secret file in it);
   * sent as `authorization: Bearer <token>` on every call.
   */
  authToken?: string | (() => string);
  interceptors?: Interceptor[];
  /** Deadline of a unary call made without one, in ms (default 5,000). */
  deadlineMs?: number;
  /**
   * Deadline of a call that may wait for another caller's fill
   * (lease_on_miss, getOrLoad, getOrLoadSession, buildContext with
   * loadSession), in ms (default 15,000: beyond the default lease TTL).
   */
  leaseDeadlineMs?: number;
  /**
   * Retries of idempotent calls (reads, Delete, InvalidateTags,
   * InvalidateSession) that failed with UNAVAILABLE, with backoff and full
   * jitter, within the call's deadline; false: none. Writes, fills, lease
   * grants and locks are never retried.
   */
  retry?: Partial<RetryOptions> | false;
  /** An in-process near cache for get, getMany and getSessionNodes; off unless set. */
  nearCache?: NearCacheOptions;
  /** Reconnection backoff of resumable Watch streams (the near cache's included). */
  watchBackoff?: Pick<ResumingWatchOptions, 'initialBackoffMs' | 'maxBackoffMs'>;
  /**
   * Told of failures that no call rejects with: a getOrLoad fill that failed
   * (the loaded value is returned all the same), a near-cache stream that
   * the sidecar refused.
   */
  onBackgroundError?: (error: ContextCacheError) => void;
}

export interface ClientCallOptions {
  /** Absolute deadline or milliseconds from now. */
  deadline?: Date | number;
}

export interface BuildContextOptions extends ClientCallOptions {
  /**
   * Loads a session the cache does not hold (the one asked for, or one that
   * referenced nodes belong to) from the application's database. With it,
   * buildContext fills the sessions the sidecar reports missing, under fill
   * leases (one loader per session across all sidecars), and builds the
   * context once more.
   */
  loadSession?: (sessionId: string) => Promise<DeepPartial<Node>[]>;
  /** TTL of the sessions filled, in ms (default: the sidecar's). */
  sessionTtlMs?: number;
}

/** A server stream as an async iterable that can be cancelled. */
export interface EventStream<T> extends AsyncIterable<T> {
  cancel(): void;
  readonly call: ClientReadableStream<T>;
}

/** The near cache as an application sees it. */
export interface NearCacheView {
  /** Whether reads are answered from it right now (its Watch stream is live and the sidecar coherent). */
  readonly live: boolean;
  /** Resolves true once it is live, or false after `timeoutMs`. */
  whenLive(timeoutMs?: number): Promise<boolean>;
  stats(): NearCacheStats;
  /**
   * The near cache's answer for `key`, synchronously: what `get` would
   * answer without a round trip, or undefined (not held, or not live: then
   * call `get`). For hot paths that cannot afford a promise.
   */
  get(key: string): NearGetResponse | undefined;
  /**
   * The context `buildContext` would answer without a call, synchronously:
   * built from the sessions held (the sidecar's rules), or undefined (not
   * every session it reads is held, tokens to count, not live: then call
   * `buildContext`). For hot paths that cannot afford a promise.
   */
  buildContext(request: DeepPartial<BuildContextRequest>): NearContextResponse | undefined;
  /** Whether the key's value is held (counts nothing). */
  has(key: string): boolean;
  hasSession(sessionId: string): boolean;
  /** Calls `listener` with every message of the near cache's Watch stream, after the near cache applied it; returns a function that removes it. */
  onMessage(listener: (message: WatchResponse) => void): () => void;
}

const UNIX_OR_HOST = /^(unix:|unix-abstract:|dns:|ipv4:|ipv6:|\[|[^:/]+:\d+$|[^:/]+$)/;

function validateAddress(address: string): string {
  if (typeof address !== 'string' || address.trim() === '') throw new TypeError('address is empty; use host:port (127.0.0.1:50051) or unix:/path/to.sock');
  if (!UNIX_OR_HOST.test(address)) throw new TypeError(`address "${address}" is not one the client dials; use host:port (127.0.0.1:50051), [::1]:port or unix:/path/to.sock`);
  return address;
}

function positiveMs(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!(value > 0)) throw new RangeError(`${name} is ${value}; use a positive number of milliseconds`);
  return value;
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

function toDeadline(deadline: Date | number): Date {
  return typeof deadline === 'number' ? new Date(Date.now() + deadline) : deadline;
}

/** Sessions fetched for the near cache at once, and waiting for their turn: a background task must not crowd out the app's own calls. */
const MAX_SESSION_FETCHES = 4;
const MAX_SESSIONS_WAITING = 1000;

/** A node as the sidecar keeps and serves it: what the wire gives back of the node sent (strings as UTF-8 makes them, defaults filled). */
function asServed(node: DeepPartial<Node>): Node {
  return NodeMessage.decode(NodeMessage.encode(NodeMessage.fromPartial(node)).finish());
}

const asBuffer = (value: unknown): Buffer =>
  Buffer.isBuffer(value) ? value : value instanceof Uint8Array ? Buffer.from(value.buffer, value.byteOffset, value.byteLength) : Buffer.alloc(0);

/** Calls that change nothing, or whose repetition changes nothing: retried on UNAVAILABLE. */
function idempotent(method: string, request: { leaseOnMiss?: boolean }): boolean {
  switch (method) {
    case 'get':
    case 'getSessionNodes':
      // A granted lease whose answer was lost would make every caller wait for it.
      return request.leaseOnMiss !== true;
    case 'getMany':
    case 'resolveShortIds':
    case 'buildContext':
    case 'getStats':
    case 'delete':
    case 'invalidateTags':
    case 'invalidateSession':
      return true;
    default:
      return false;
  }
}

const durationMs = (duration: { seconds?: number; nanos?: number } | undefined) => (duration === undefined ? 0 : (duration.seconds ?? 0) * 1000 + (duration.nanos ?? 0) / 1e6);

/**
 * A promise-based TypeScript client for the sidecar. Requests are partial:
 * unset fields take their proto defaults. Every call has a deadline (its
 * own, or the client's default); failures reject with a ContextCacheError
 * carrying the status code and the sidecar's message. With `nearCache`,
 * reads are answered from this process's memory while a Watch stream keeps
 * it coherent.
 */
export class ContextCacheClient {
  /** The underlying grpc-js client, for what this wrapper does not cover. */
  readonly raw: GeneratedClient;
  /** The near cache, when configured. */
  readonly nearCache: NearCacheView | undefined;
  private readonly near: NearCache | undefined;
  private readonly nearWatch: ResumingWatch | undefined;
  private readonly nearListeners = new Set<(message: WatchResponse) => void>();
  private readonly deadlineMs: number;
  private readonly leaseDeadlineMs: number;
  private readonly retry: RetryOptions | undefined;
  private readonly watchBackoff: ClientOptions['watchBackoff'];
  private readonly onBackgroundError: (error: ContextCacheError) => void;
  private readonly loads = new Map<string, Promise<unknown>>();
  /** Sessions the near cache asked for, being fetched (at most MAX_SESSION_FETCHES) and waiting (at most MAX_SESSIONS_WAITING). */
  private readonly fetchingSessions = new Set<string>();
  private readonly sessionsWaiting = new Set<string>();
  private readonly loadCounters: LoadCounters = { filled: 0, staleFills: 0, uncached: 0 };
  private closed = false;

  /**
   * `address`: host:port, [::1]:port or unix:/path/to.sock (the sidecar's
   * CONTEXT_CACHE_LISTEN). Options beyond ClientOptions are grpc-js channel
   * options.
   */
  constructor(address: string, options: ClientOptions & Partial<ChannelOptions> = {}) {
    const { authToken, interceptors = [], deadlineMs, leaseDeadlineMs, retry, nearCache, watchBackoff, onBackgroundError, ...channel } = options;
    this.deadlineMs = positiveMs(deadlineMs, 5000, 'deadlineMs');
    this.leaseDeadlineMs = positiveMs(leaseDeadlineMs, 15_000, 'leaseDeadlineMs');
    this.retry = retry === false ? undefined : validateRetry({ ...DEFAULT_RETRY, ...retry });
    this.watchBackoff = watchBackoff;
    this.onBackgroundError = onBackgroundError ?? (() => undefined);
    const token = typeof authToken === 'string' ? () => authToken : authToken;
    this.raw = new GeneratedClient(validateAddress(address), credentials.createInsecure(), {
      interceptors: token === undefined ? interceptors : [bearer(token), ...interceptors],
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // A sidecar on localhost that restarts is back within a second: grpc-js's 1 s first backoff is too slow.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 2000,
      // Contexts of hundreds of nodes are large responses: a 64 KiB HTTP/2 window would stall them.
      'grpc-node.flow_control_window': 16 * 1024 * 1024,
      // What the sidecar may send by default (CONTEXT_CACHE_MAX_MESSAGE_BYTES), not grpc-js's 4 MiB.
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
      // The client serves no channelz: its per-call bookkeeping would be work for nobody.
      'grpc.enable_channelz': 0,
      ...channel,
    });
    if (nearCache !== undefined) {
      const near = (this.near = new NearCache(nearCache));
      near.wantSession = (sessionId) => this.fetchSession(sessionId);
      this.nearWatch = new ResumingWatch(
        (request) => this.openStream('watch', request, {}),
        WatchRequest.fromPartial({}),
        (message) => {
          near.apply(message);
          for (const listener of this.nearListeners) listener(message);
        },
        {
          ...watchBackoff,
          onStateChange: (state, error) => {
            if (state !== 'live') near.streamDown();
            if (state === 'failed' && error !== undefined) this.onBackgroundError(error);
          },
        },
      ).start();
      this.nearCache = {
        get live() {
          return near.live;
        },
        whenLive: (timeoutMs = 10_000) => near.whenLive(timeoutMs),
        stats: () => near.stats(),
        get: (key) => near.getEntry(key),
        buildContext: (request) => this.localContext(request),
        has: (key) => near.has(key),
        hasSession: (sessionId) => near.hasSession(sessionId),
        onMessage: (listener) => {
          this.nearListeners.add(listener);
          return () => this.nearListeners.delete(listener);
        },
      };
    }
  }

  /**
   * Resolves once the channel to the sidecar is connected and, with a near
   * cache, once the near cache is live (its Watch stream started and the
   * sidecar coherent); rejects with DEADLINE_EXCEEDED otherwise. Calls work
   * without it: this is for start-up checks, and for tests.
   */
  async ready(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    await new Promise<void>((resolve, reject) =>
      this.raw.waitForReady(deadline, (error) =>
        error ? reject(new ContextCacheError({ code: status.DEADLINE_EXCEEDED, details: `not connected to the sidecar within ${timeoutMs} ms (${error.message})` }, 'ready')) : resolve(),
      ),
    );
    if (this.near !== undefined && !(await this.near.whenLive(Math.max(0, deadline - Date.now())))) {
      throw new ContextCacheError({ code: status.DEADLINE_EXCEEDED, details: `the near cache was not live within ${timeoutMs} ms (its Watch stream: ${this.nearWatch!.state})` }, 'ready');
    }
  }

  /**
   * Calls any unary RPC by its method name, e.g. `call('get', { key })`,
   * with the default deadline and, for idempotent calls, retries on
   * UNAVAILABLE. The near cache is not involved.
   */
  call<K extends UnaryName>(method: K, request: DeepPartial<RequestOf<K>>, options: ClientCallOptions = {}): Promise<ResponseOf<K>> {
    const definition = ContextCacheService[method];
    // Filling defaults through the request type's own fromPartial keeps encoding total.
    const full = (requestCodecs[method] as { fromPartial(p: unknown): RequestOf<K> }).fromPartial(request);
    const deadline = options.deadline === undefined ? this.defaultDeadline(method, full) : toDeadline(options.deadline);
    const attempt = () =>
      new Promise<ResponseOf<K>>((resolve, reject) => {
        const callOptions: CallOptions = { deadline };
        this.raw.makeUnaryRequest(
          definition.path,
          definition.requestSerialize as (value: RequestOf<K>) => Buffer,
          (responseDecoders[method] ?? definition.responseDeserialize) as (value: Buffer) => ResponseOf<K>,
          full,
          callOptions,
          (error: ServiceError | null, response?: ResponseOf<K>) => (error ? reject(new ContextCacheError(error, method)) : resolve(response!)),
        );
      });
    if (this.retry === undefined || !idempotent(method, full as { leaseOnMiss?: boolean })) return attempt();
    return withRetries(attempt, this.retry, (error) => (error as ContextCacheError).code === status.UNAVAILABLE, deadline.getTime());
  }

  /** Reads one key: from the near cache when it holds it, else from the sidecar (and keeps the answer). */
  get = (request: DeepPartial<RequestOf<'get'>>, options?: ClientCallOptions): Promise<NearGetResponse> => {
    const near = this.near;
    const key = request.key;
    if (near === undefined || key === undefined || (request.ifVersionNot ?? 0) !== 0) return this.call('get', request, options);
    const hit = near.getEntry(key);
    if (hit !== undefined) return Promise.resolve(hit);
    const ticket = near.ticket();
    return this.call('get', request, options).then((response) => {
      if (response.found && !response.notModified) near.installEntry(key, ticket, response.value, response.info);
      return response;
    });
  };

  /** Reads several keys: those the near cache holds from it, the others in one call. */
  getMany = async (request: DeepPartial<RequestOf<'getMany'>>, options?: ClientCallOptions): Promise<GetManyResponse> => {
    const near = this.near;
    const keys = (request.keys ?? []).filter((key): key is string => typeof key === 'string');
    if (near === undefined || keys.length === 0) return this.call('getMany', request, options);
    const results: GetManyResponse['results'] = new Array(keys.length);
    const missing: number[] = [];
    keys.forEach((key, index) => {
      const hit = near.getEntry(key);
      if (hit === undefined) missing.push(index);
      else results[index] = { key, found: true, value: hit.value, info: hit.info };
    });
    if (missing.length === 0) return { results };
    const ticket = near.ticket();
    const fetched = await this.call('getMany', { keys: missing.map((index) => keys[index]!) }, options);
    missing.forEach((index, position) => {
      const result = fetched.results[position]!;
      results[index] = result;
      if (result.found) near.installEntry(result.key, ticket, result.value, result.info);
    });
    return { results };
  };

  /** Writes one entry; with a near cache, the written value is kept (a later write anywhere drops it). */
  set = async (request: DeepPartial<RequestOf<'set'>>, options?: ClientCallOptions) => {
    const near = this.near;
    const key = request.key;
    if (near === undefined || key === undefined) return this.call('set', request, options);
    const ticket = near.ticket();
    try {
      const response = await this.call('set', request, options);
      if (!this.reached(response.scope) || !near.installEntry(key, ticket, asBuffer(request.value), response.info, true)) near.forgetEntry(key);
      return response;
    } catch (error) {
      near.forgetEntry(key);
      throw error;
    }
  };

  delete = (request: DeepPartial<RequestOf<'delete'>>, options?: ClientCallOptions) =>
    this.forgetting(this.call('delete', request, options), () => (request.keys ?? []).forEach((key) => typeof key === 'string' && this.near?.forgetEntry(key)));
  invalidateTags = (request: DeepPartial<RequestOf<'invalidateTags'>>, options?: ClientCallOptions) =>
    this.forgetting(this.call('invalidateTags', request, options), () => this.near?.forgetTags((request.tags ?? []).filter((tag): tag is string => typeof tag === 'string')));

  /** Reads a session: from the near cache when it holds it, else from the sidecar (and keeps the answer). */
  getSessionNodes = (request: DeepPartial<RequestOf<'getSessionNodes'>>, options?: ClientCallOptions): Promise<NearSessionResponse> => {
    const near = this.near;
    const sessionId = request.sessionId;
    if (near === undefined || !near.keepSessions || sessionId === undefined) return this.call('getSessionNodes', request, options);
    const hit = near.getSession(sessionId);
    if (hit !== undefined) return Promise.resolve(hit);
    const ticket = near.ticket();
    return this.call('getSessionNodes', request, options).then((response: GetSessionNodesResponse) => {
      if (response.found) near.installSession(sessionId, ticket, response);
      return response;
    });
  };

  /** Stores a session; with a near cache that keeps sessions, the nodes written are kept (a later change anywhere drops them). */
  putSessionNodes = async (request: DeepPartial<RequestOf<'putSessionNodes'>>, options?: ClientCallOptions) => {
    const near = this.near;
    const sessionId = request.sessionId;
    if (near === undefined || !near.keepSessions || !sessionId) return this.call('putSessionNodes', request, options);
    const ticket = near.ticket();
    try {
      const response = await this.call('putSessionNodes', request, options);
      near.sessionChanged(sessionId);
      // The session as the sidecar keeps it: each node as the wire gives it back, its session filled in, each ID once.
      const nodes = (request.nodes ?? []).map((node) => asServed({ ...node, sessionId: node?.sessionId || sessionId }));
      const kept = this.reached(response.scope) && near.installSession(sessionId, ticket, { found: true, nodes, info: response.info, lease: undefined });
      if (!kept) near.forgetSession(sessionId);
      return response;
    } catch (error) {
      near.forgetSession(sessionId);
      throw error;
    }
  };

  /** Appends a node; with a near cache, a session it holds at the version appended to gets the node in place. */
  appendNode = async (request: DeepPartial<RequestOf<'appendNode'>>, options?: ClientCallOptions) => {
    const near = this.near;
    const sessionId = request.node?.sessionId;
    if (near === undefined || !sessionId) return this.call('appendNode', request, options);
    try {
      const response = await this.call('appendNode', request, options);
      if (this.reached(response.scope)) near.appended(sessionId, asServed(request.node!), response.previousSessionVersion, response.sessionVersion);
      else near.forgetSession(sessionId);
      return response;
    } catch (error) {
      near.forgetSession(sessionId);
      throw error;
    }
  };
  invalidateSession = (request: DeepPartial<RequestOf<'invalidateSession'>>, options?: ClientCallOptions) =>
    this.forgetting(this.call('invalidateSession', request, options), () => request.sessionId && this.near?.forgetSession(request.sessionId));
  resolveShortIds = (request: DeepPartial<RequestOf<'resolveShortIds'>>, options?: ClientCallOptions) => this.call('resolveShortIds', request, options);
  acquireLock = (request: DeepPartial<RequestOf<'acquireLock'>>, options?: ClientCallOptions) => this.call('acquireLock', request, options);
  extendLock = (request: DeepPartial<RequestOf<'extendLock'>>, options?: ClientCallOptions) => this.call('extendLock', request, options);
  releaseLock = (request: DeepPartial<RequestOf<'releaseLock'>>, options?: ClientCallOptions) => this.call('releaseLock', request, options);
  getStats = (options?: ClientCallOptions) => this.call('getStats', {}, options);

  /**
   * Builds a prompt's context. With `loadSession`, the sessions the sidecar
   * reports missing (the session itself when `session_found` is false, and
   * `missing_session_ids`) are loaded and filled under leases, and the
   * context is built once more — twice when the session itself was missing,
   * since only then are its references' sessions known. Each session is
   * loaded at most once per call; the last answer is returned as it is.
   */
  buildContext(request: DeepPartial<RequestOf<'buildContext'>>, options: BuildContextOptions = {}): Promise<NearContextResponse> {
    // Built in this process: whole (every session it read is held), nothing to load, no chain of promises.
    const local = this.localContext(request);
    return local !== undefined ? Promise.resolve(local) : this.buildContextLoading(request, options);
  }

  private async buildContextLoading(request: DeepPartial<RequestOf<'buildContext'>>, options: BuildContextOptions): Promise<NearContextResponse> {
    const { loadSession, sessionTtlMs, ...call } = options;
    let built = await this.buildContextOnce(request, call, false);
    if (loadSession === undefined) return built;
    const tried = new Set<string>();
    // A session that was not cached has references nobody could see yet: the second answer names their sessions.
    for (let round = 0; round < 2; round++) {
      const missing = new Set(built.missingSessionIds);
      if (!built.sessionFound && request.sessionId) missing.add(request.sessionId);
      for (const sessionId of tried) missing.delete(sessionId);
      if (missing.size === 0) return built;
      for (const sessionId of missing) tried.add(sessionId);
      await Promise.all([...missing].map((sessionId) => this.getOrLoadSession(sessionId, () => loadSession(sessionId), { ttlMs: sessionTtlMs, deadline: call.deadline })));
      built = await this.buildContextOnce(request, call);
    }
    return built;
  }

  /**
   * One BuildContext: built in this process from the sessions the near
   * cache holds when it can be, else the same request's complete context
   * if kept, else the sidecar's (whose sessions are then fetched for the
   * next one).
   */
  private async buildContextOnce(request: DeepPartial<RequestOf<'buildContext'>>, call: ClientCallOptions, buildLocally = true): Promise<NearContextResponse> {
    const near = this.near;
    if (near === undefined || !near.keepSessions) return this.call('buildContext', request, call);
    const full = BuildContextRequest.fromPartial(request);
    const local = buildLocally ? near.buildContext(full) : undefined;
    if (local !== undefined) return local;
    const canonical = JSON.stringify(BuildContextRequest.toJSON(full));
    const hit = near.getContext(canonical);
    if (hit !== undefined) return hit;
    const ticket = near.contextTicket();
    const built = await this.call('buildContext', full, call);
    near.installContext(canonical, ticket, built);
    near.contextAnswered(full, built);
    return built;
  }

  /** The context the near cache builds from the sessions it holds, if it can (see NearCache.buildContext). */
  private localContext(request: DeepPartial<RequestOf<'buildContext'>>): NearContextResponse | undefined {
    const near = this.near;
    return near === undefined || !near.buildsContexts ? undefined : near.buildContext(BuildContextRequest.fromPartial(request));
  }

  /** Whether a write answered with `scope` reached what the near cache mirrors (see NearCache.keepsLocalWrites). */
  private reached(scope: WriteScope): boolean {
    return scope === WriteScope.WRITE_SCOPE_SHARED || (scope === WriteScope.WRITE_SCOPE_LOCAL && this.near!.keepsLocalWrites);
  }

  /**
   * Fetches a session the near cache asked for (to build contexts from), in
   * the background: a few at a time, a bounded number waiting, each once.
   * A failure is left alone: the next context that needs it asks again.
   */
  private fetchSession(sessionId: string): void {
    const near = this.near;
    if (near === undefined || this.closed || this.fetchingSessions.has(sessionId) || this.sessionsWaiting.has(sessionId)) return;
    if (this.fetchingSessions.size >= MAX_SESSION_FETCHES) {
      if (this.sessionsWaiting.size < MAX_SESSIONS_WAITING) this.sessionsWaiting.add(sessionId);
      return;
    }
    this.fetchingSessions.add(sessionId);
    const ticket = near.ticket();
    this.call('getSessionNodes', { sessionId })
      .then(
        (response) => {
          if (response.found && near.installSession(sessionId, ticket, response)) near.fetchedSession();
        },
        () => undefined,
      )
      .finally(() => {
        this.fetchingSessions.delete(sessionId);
        const next = this.sessionsWaiting.values().next();
        if (next.done) return;
        this.sessionsWaiting.delete(next.value);
        this.fetchSession(next.value);
      });
  }

  /**
   * The value of `key`: from the near cache or the sidecar when cached;
   * otherwise `loader` runs — in one caller across every sidecar of the
   * namespace at a time (a fill lease), the others wait for its value — and
   * its value is cached with `ttlMs` and `tags`. Callers of this client for
   * the same key share one call. A fill refused because the key changed
   * meanwhile returns the loaded value without caching it. The Buffer
   * returned may be shared: do not modify it.
   */
  getOrLoad(key: string, loader: () => Promise<Buffer | Uint8Array | string>, options: LoadOptions = {}): Promise<Buffer> {
    return this.singleFlight('k:' + key, () => getOrLoadEntry(this.loadingPort, this.loadCounters, key, loader, this.leaseCall(options)));
  }

  /** The same for a session: `loader` returns its nodes (from the application's database); returns the nodes in conversation order. */
  getOrLoadSession(sessionId: string, loader: () => Promise<DeepPartial<Node>[]>, options: Omit<LoadOptions, 'tags'> = {}): Promise<Node[]> {
    return this.singleFlight('s:' + sessionId, () => getOrLoadSessionNodes(this.loadingPort, this.loadCounters, sessionId, loader, this.leaseCall(options)));
  }

  /** How the get-or-load helpers' loaders fared. */
  loadStats(): LoadCounters {
    return { ...this.loadCounters };
  }

  /** Opens a Watch stream; iterate it, and cancel it when done. It ends with its connection: see watchResumable. */
  watch(request: DeepPartial<RequestOf<'watch'>>, options: ClientCallOptions = {}): EventStream<WatchResponse> {
    return this.iterable(this.openStream('watch', request, options));
  }

  /**
   * A Watch that reconnects by itself, with backoff, and resumes after the
   * last message delivered: `onMessage` sees every event once, or a Resync
   * when the sidecar could not keep what was missed. Close it when done.
   */
  watchResumable(request: DeepPartial<RequestOf<'watch'>>, onMessage: (message: WatchResponse) => void, options: ResumingWatchOptions = {}): ResumingWatch {
    return new ResumingWatch((full) => this.openStream('watch', full, {}), WatchRequest.fromPartial(request), onMessage, { ...this.watchBackoff, ...options }).start();
  }

  /** Opens a stream-bound lock; the lock lives until the stream is cancelled. */
  holdLock(request: DeepPartial<RequestOf<'holdLock'>>, options: ClientCallOptions = {}): EventStream<HoldLockResponse> {
    return this.iterable(this.openStream('holdLock', request, options));
  }

  /** Closes the near cache's stream and the channel. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.nearWatch?.close();
    this.near?.close();
    this.raw.close();
  }

  private readonly loadingPort: LoadingPort = {
    get: (request, options) => this.get(request, options),
    set: (request, options) => this.set(request, options),
    getSessionNodes: (request, options) => this.getSessionNodes(request, options),
    putSessionNodes: (request, options) => this.putSessionNodes(request, options),
    onFillError: (error) => this.onBackgroundError(toContextCacheError(error)),
  };

  private leaseCall<O extends { deadline?: Date | number }>(options: O): O {
    return { ...options, deadline: options.deadline === undefined ? new Date(Date.now() + this.leaseDeadlineMs) : toDeadline(options.deadline) };
  }

  private singleFlight<T>(name: string, load: () => Promise<T>): Promise<T> {
    const running = this.loads.get(name) as Promise<T> | undefined;
    if (running !== undefined) return running;
    const flight = load().finally(() => this.loads.delete(name));
    this.loads.set(name, flight);
    return flight;
  }

  /** A write's promise; whatever the near cache held of what it changes is dropped, whether it succeeded or not. */
  private async forgetting<T>(write: Promise<T>, forget: () => unknown): Promise<T> {
    try {
      return await write;
    } finally {
      forget();
    }
  }

  private defaultDeadline(method: string, request: unknown): Date {
    const r = request as { leaseOnMiss?: boolean; waitTimeout?: { seconds: number; nanos: number } };
    if (r.leaseOnMiss) return new Date(Date.now() + this.leaseDeadlineMs);
    if (method === 'acquireLock') return new Date(Date.now() + this.deadlineMs + durationMs(r.waitTimeout));
    return new Date(Date.now() + this.deadlineMs);
  }

  private openStream<K extends 'watch' | 'holdLock'>(method: K, request: DeepPartial<RequestOf<K>>, options: ClientCallOptions): ClientReadableStream<ResponseOf<K>> {
    const definition = ContextCacheService[method];
    const full = (requestCodecs[method] as { fromPartial(p: unknown): RequestOf<K> }).fromPartial(request);
    return this.raw.makeServerStreamRequest(
      definition.path,
      definition.requestSerialize as (value: RequestOf<K>) => Buffer,
      definition.responseDeserialize as (value: Buffer) => ResponseOf<K>,
      full,
      options.deadline === undefined ? {} : { deadline: toDeadline(options.deadline) },
    );
  }

  private iterable<T>(call: ClientReadableStream<T>): EventStream<T> {
    return {
      call,
      cancel: () => call.cancel(),
      [Symbol.asyncIterator]: () => {
        const inner = call[Symbol.asyncIterator]() as AsyncIterator<T>;
        return {
          next: () => inner.next().catch((error: ServiceError) => Promise.reject(new ContextCacheError(error))),
          return: (value?: unknown) => inner.return?.(value) ?? Promise.resolve({ done: true as const, value: undefined }),
        };
      },
    };
  }
}

/** The hot responses' decoders, written by hand (./codec.ts); every other method's response is decoded by the generated code. */
const responseDecoders: { [K in UnaryName]?: (bytes: Buffer) => ResponseOf<K> } = {
  get: decodeGetResponse,
  getMany: decodeGetManyResponse,
  getSessionNodes: decodeGetSessionNodesResponse,
  buildContext: decodeBuildContextResponse,
};

/** Each method's request codec, found by the request type's name in the generated module. */
const requestCodecs = Object.fromEntries(
  Object.entries(ContextCacheService).map(([method, definition]) => {
    const typeName = definition.path.slice(definition.path.lastIndexOf('/') + 1) + 'Request';
    return [method, (messages as unknown as Record<string, unknown>)[typeName]];
  }),
) as Record<keyof Service, unknown>;

