import type { EntryCache, ReadResult } from '../cache/entries';
import type { ContextCacheServer, GetManyResult } from '../gen/contextcache/v1/context_cache';
import type { CallTracker } from './calls';
import { entryInfo, leaseToProto, scopeToProto } from './mapping';
import type { RequestValidator } from './validation';

export type CacheHandlers = Pick<ContextCacheServer, 'get' | 'getMany' | 'set' | 'delete' | 'invalidateTags'>;

function manyResult(key: string, read: ReadResult | undefined): GetManyResult {
  if (read === undefined) return { key, found: false, value: Buffer.alloc(0), info: undefined };
  return { key, found: true, value: read.entry.value, info: entryInfo(read.entry, read) };
}

/** The generic cache RPCs: validate, delegate to the EntryCache, translate. */
export function cacheHandlers({ entries, validate, calls }: { entries: EntryCache; validate: RequestValidator; calls: CallTracker }): CacheHandlers {
  return {
    get: calls.unary('Get', async (request, call) => {
      const key = validate.key(request.key);
      const { read, lease, waited } = request.leaseOnMiss
        ? await entries.getOrLease(key, validate.leaseRequest(request.leaseTtl, request.leaseWait, call))
        : { read: await entries.get(key), lease: undefined, waited: false };
      if (read === undefined) {
        return { found: false, value: Buffer.alloc(0), info: undefined, notModified: false, lease: lease && leaseToProto(lease) };
      }
      const notModified = request.ifVersionNot !== 0 && request.ifVersionNot === read.entry.version;
      return {
        found: true,
        value: notModified ? Buffer.alloc(0) : read.entry.value,
        info: entryInfo(read.entry, read, waited),
        notModified,
        lease: undefined,
      };
    }),

    getMany: calls.unary('GetMany', async (request) => {
      const keys = validate.keys(request.keys);
      const reads = await entries.getMany(keys);
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
