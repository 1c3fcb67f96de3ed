import type { ServerWritableStream } from '@grpc/grpc-js';
import type { Entry } from '../cache/l1';
import type { LeaseGrant } from '../cache/leases';
import type { ReadResult, Tier, TieredCache, WriteScope as CoreWriteScope } from '../cache/tiered-cache';
import {
  Source,
  WriteScope,
  type ContextCacheServer,
  type EntryInfo,
  type GetManyResult,
  type Lease,
  type WatchRequest,
  type WatchResponse,
} from '../gen/contextcache/v1/context_cache';
import type { CallTracker } from './calls';
import type { ContextHandlers } from './context-handlers';
import type { LockHandlers } from './lock-handlers';
import type { StatsSource } from './stats';
import type { RequestValidator } from './validation';
import type { WatchFanout } from './watch';

export interface ServiceDeps {
  cache: TieredCache;
  validate: RequestValidator;
  calls: CallTracker;
  stats: StatsSource;
  watch: WatchFanout;
  locks: LockHandlers;
  context: ContextHandlers;
}

export const SOURCE: Record<Tier, Source> = { l1: Source.SOURCE_L1, l2: Source.SOURCE_L2 };
export const SCOPE: Record<CoreWriteScope, WriteScope> = { local: WriteScope.WRITE_SCOPE_LOCAL, shared: WriteScope.WRITE_SCOPE_SHARED };

export function entryInfo(entry: Entry, source: Tier | undefined, waitedForFill = false): EntryInfo {
  return {
    version: entry.version,
    expiresAt: entry.expiresAt === 0 ? undefined : new Date(entry.expiresAt),
    tags: [...entry.tags],
    source: source === undefined ? Source.SOURCE_UNSPECIFIED : SOURCE[source],
    sizeBytes: entry.value.byteLength,
    waitedForFill,
  };
}

export function leaseToProto(lease: LeaseGrant): Lease {
  return { token: lease.token, expiresAt: new Date(lease.expiresAt) };
}

function manyResult(key: string, read: ReadResult | undefined): GetManyResult {
  if (read === undefined) return { key, found: false, value: Buffer.alloc(0), info: undefined };
  return { key, found: true, value: read.entry.value, info: entryInfo(read.entry, read.source) };
}

/**
 * The gRPC face of contextcache.v1.ContextCache: each handler validates and
 * translates the request, delegates to the core, and translates the answer.
 * No caching logic lives here.
 */
export function contextCacheService({ cache, validate, calls, stats, watch, locks, context }: ServiceDeps): ContextCacheServer {
  return {
    get: calls.unary('Get', async (request, call) => {
      const key = validate.key(request.key);
      const { read, lease, waited } = request.leaseOnMiss
        ? await cache.getOrLease(key, validate.leaseRequest(request.leaseTtl, request.leaseWait, call.getDeadline()))
        : { read: await cache.get(key), lease: undefined, waited: false };
      if (read === undefined) {
        return { found: false, value: Buffer.alloc(0), info: undefined, notModified: false, lease: lease && leaseToProto(lease) };
      }
      const notModified = request.ifVersionNot !== 0 && request.ifVersionNot === read.entry.version;
      return {
        found: true,
        value: notModified ? Buffer.alloc(0) : read.entry.value,
        info: entryInfo(read.entry, read.source, waited),
        notModified,
        lease: undefined,
      };
    }),

    getMany: calls.unary('GetMany', async (request) => {
      const keys = validate.keys(request.keys);
      const reads = await cache.getMany(keys);
      return { results: keys.map((key, index) => manyResult(key, reads[index])) };
    }),

    set: calls.unary('Set', async (request) => {
      const key = validate.key(request.key);
      const value = validate.value(request.value);
      const ttlMs = validate.ttl(request.ttl);
      const tags = validate.tags(request.tags);
      const written = await cache.set(key, value, { ttlMs, tags, ifVersion: request.ifVersion, ifAbsent: request.ifAbsent, leaseToken: request.leaseToken });
      return { info: entryInfo(written.entry, undefined), scope: SCOPE[written.scope] };
    }),

    delete: calls.unary('Delete', async (request) => {
      const { deleted, scope } = await cache.delete(validate.keys(request.keys));
      return { deleted, scope: SCOPE[scope] };
    }),

    invalidateTags: calls.unary('InvalidateTags', async (request) => {
      const { localEntriesRemoved, scope } = await cache.invalidateTags(validate.tags(request.tags, 'tags', 1));
      return { localEntriesRemoved, scope: SCOPE[scope] };
    }),

    ...context,
    ...locks,
    watch: calls.serverStream('Watch', (call: ServerWritableStream<WatchRequest, WatchResponse>) => watch.serve(call)),

    getStats: calls.unary('GetStats', () => stats.snapshot()),
  };
}
