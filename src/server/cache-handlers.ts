import type { EntryCache, ReadResult } from '../cache/entries';
import type { TraceAttributes } from '../cache/ports';
import type { ContextCacheServer, GetManyResult, GetRequest, GetResponse } from '../gen/contextcache/v1/context_cache';
import type { CallContext, CallTracker } from './calls';
import { encodeGetFound } from './encoding';
import { entryInfo, leaseToProto, scopeToProto } from './mapping';
import type { RequestValidator } from './validation';

export type CacheHandlers = Pick<ContextCacheServer, 'get' | 'getMany' | 'set' | 'delete' | 'invalidateTags'>;

function manyResult(key: string, read: ReadResult | undefined): GetManyResult {
  if (read === undefined) return { key, found: false, value: Buffer.alloc(0), info: undefined };
  return { key, found: true, value: read.entry.value, info: entryInfo(read.entry, read) };
}

/** What a trace says of several reads: hits by tier, and the tier that answered (`mixed` when both did). */
function readsByTier(reads: readonly (ReadResult | undefined)[]): TraceAttributes {
  let l1 = 0;
  let l2 = 0;
  for (const read of reads) if (read !== undefined) read.source === 'l1' ? l1++ : l2++;
  return { 'context_cache.hit': l1 + l2 > 0, 'context_cache.hits': l1 + l2, 'context_cache.hits.l1': l1, 'context_cache.hits.l2': l2, 'context_cache.tier': l1 > 0 && l2 > 0 ? 'mixed' : l1 > 0 ? 'l1' : l2 > 0 ? 'l2' : 'none' };
}

/** A found Get, encoded (encoding.ts): an If-None-Match style `if_version_not` that matches sends no value. */
function found(request: GetRequest, read: ReadResult, waited: boolean): GetResponse {
  const notModified = request.ifVersionNot !== 0 && request.ifVersionNot === read.entry.version;
  // Already encoded: the handler is declared `preEncoded`, so the serializer passes the buffer through.
  return encodeGetFound(read, waited, notModified) as unknown as GetResponse;
}

/** The generic cache RPCs: validate, delegate to the EntryCache, translate. */
export function cacheHandlers({ entries, validate, calls }: { entries: EntryCache; validate: RequestValidator; calls: CallTracker }): CacheHandlers {
  /** A Get that L1 could not answer: Redis, a lease, or a wait for another caller's fill. */
  async function getFromTiers(request: GetRequest, key: string, call: CallContext): Promise<GetResponse> {
    const { read, lease, waited } = request.leaseOnMiss
      ? await entries.getOrLease(key, validate.leaseRequest(request.leaseTtl, request.leaseWait, call))
      : { read: await entries.get(key), lease: undefined, waited: false };
    call.annotate?.({ 'context_cache.hit': read !== undefined, 'context_cache.tier': read?.source ?? 'none', ...(request.leaseOnMiss ? { 'context_cache.lease': lease ? 'granted' : waited ? 'waited' : 'none' } : {}) });
    if (read === undefined) return { found: false, value: Buffer.alloc(0), info: undefined, notModified: false, lease: lease && leaseToProto(lease) };
    return found(request, read, waited);
  }

  return {
    get: calls.unary(
      'Get',
      (request, call) => {
        const key = validate.key(request.key);
        // The hot path: L1 holds it, answered at once, no promise.
        const local = request.leaseOnMiss ? undefined : entries.getLocal(key);
        if (local !== undefined) {
          call.annotate?.({ 'context_cache.hit': true, 'context_cache.tier': 'l1' });
          return found(request, local, false);
        }
        return getFromTiers(request, key, call);
      },
      { preEncoded: true },
    ),

    getMany: calls.unary('GetMany', async (request, call) => {
      const keys = validate.keys(request.keys);
      const reads = await entries.getMany(keys);
      call.annotate?.(readsByTier(reads));
      return { results: keys.map((key, index) => manyResult(key, reads[index])) };
    }),

    set: calls.unary('Set', async (request) => {
      const key = validate.key(request.key);
      const value = validate.value(request.value);
      const ttlMs = validate.ttl(request.ttl);
      const tags = validate.tags(request.tags);
      const written = await entries.set(key, value, { ttlMs, tags, ifVersion: request.ifVersion, ifAbsent: request.ifAbsent, leaseToken: request.leaseToken });
      return { info: entryInfo(written.entry), scope: scopeToProto(written.scope) };
    }),

    delete: calls.unary('Delete', async (request) => {
      const { deleted, scope } = await entries.delete(validate.keys(request.keys));
      return { deleted, scope: scopeToProto(scope) };
    }),

    invalidateTags: calls.unary('InvalidateTags', async (request) => {
      const { localEntriesRemoved, scope } = await entries.invalidateTags(validate.tags(request.tags, 'tags', 1));
      return { localEntriesRemoved, scope: scopeToProto(scope) };
    }),
  };
}
