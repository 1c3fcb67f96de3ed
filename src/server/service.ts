import type { ServerWritableStream } from '@grpc/grpc-js';
import type { ContextCacheServer, WatchRequest, WatchResponse } from '../gen/contextcache/v1/context_cache';
import type { CallTracker } from './calls';
import type { CacheHandlers } from './cache-handlers';
import type { ContextHandlers } from './context-handlers';
import type { LockHandlers } from './lock-handlers';
import type { SidecarStats } from './stats';
import type { WatchFanout } from './watch';

export interface ServiceParts {
  calls: CallTracker;
  cache: CacheHandlers;
  context: ContextHandlers;
  locks: LockHandlers;
  watch: WatchFanout;
  stats: SidecarStats;
}

/**
 * The gRPC face of contextcache.v1.ContextCache, assembled from the handler
 * groups. Each handler validates and translates the request, delegates to
 * the core, and translates the answer; no caching logic lives here.
 */
export function contextCacheService({ calls, cache, context, locks, watch, stats }: ServiceParts): ContextCacheServer {
  return {
    ...cache,
    ...context,
    ...locks,
    watch: calls.serverStream('Watch', (call: ServerWritableStream<WatchRequest, WatchResponse>, ctx) => watch.serve(call, ctx), { preEncoded: true }),
    getStats: calls.unary('GetStats', () => stats.snapshot()),
  };
}
