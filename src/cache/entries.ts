import { ifAbsentRefused, ifVersionRefused, memoryTierFull } from '../errors';
import type { Entry, WriteScope } from '../model/entry';
import type { CacheEvent } from '../model/events';
import { idOfL1Key, l1Key, type Subject } from '../model/subject';
import type { LeasedRead, LeaseRequest } from './leases';
import type { EntryStore, EntryWrite } from './ports';
import type { ReadSpec, TierRead, Tiers } from './tiers';

export type ReadResult = TierRead<Buffer>;

export type SetOptions = EntryWrite;

export interface WriteResult {
  entry: Entry;
  scope: WriteScope;
}

const subject = (key: string): Subject => ({ kind: 'entry', id: key });
const entryKey = (key: string): string => l1Key('entry', key);

/**
 * The generic key/value cache: what a Get, Set, Delete or tag invalidation
 * means for entries. Where each goes (L1, Redis, both) is the write path's
 * decision (`Tiers`); this says what the operation is on each path. It knows
 * nothing of gRPC or Redis.
 */
export class EntryCache {
  constructor(
    private readonly tiers: Tiers,
    private readonly store: EntryStore | undefined,
  ) {
    tiers.onRemoteEvent((event) => this.applyRemote(event));
    // Keys and tags written while Redis was away: deleted in Redis, and here (the local value is what Redis missed).
    tiers.onReplay('entry', async (keys) => {
      const { versions } = await this.store!.delete(keys);
      return this.deletions(keys, versions);
    });
    tiers.onReplay('tag', async (tags) => this.tagsRemoved(tags, await this.store!.invalidateTags(tags)).events);
  }

  /** The value when L1 holds it and may answer, at once; undefined otherwise (then `get`). */
  getLocal(key: string): ReadResult | undefined {
    return this.tiers.readLocal<Buffer>('entry', key);
  }

  async get(key: string): Promise<ReadResult | undefined> {
    return (await this.getMany([key]))[0];
  }

  /** A read that, on a miss, grants a fill lease or waits for another caller's fill. */
  getOrLease(key: string, request: LeaseRequest): Promise<LeasedRead<ReadResult>> {
    return this.tiers.leases.readOrLease(subject(key), request, () => this.get(key));
  }

  /** L1 first; the keys L1 cannot answer go to Redis in one round trip. */
  getMany(keys: readonly string[]): Promise<(ReadResult | undefined)[]> {
    return this.tiers.read(keys, this.readSpec);
  }

  private readonly readSpec: ReadSpec<Buffer> = { kind: 'entry', operation: 'read', fetch: (missing) => this.store!.getMany(missing) };

  set(key: string, value: Buffer, options: SetOptions): Promise<WriteResult> {
    const { tiers } = this;
    const written = (entry: Entry) => ({ result: { entry }, events: [setEvent(key, entry)] });
    return tiers.write({
      operation: 'write',
      touches: [{ kind: 'entry', name: key }],
      shared: async () => {
        const outcome = await this.store!.set(key, value, options);
        switch (outcome.status) {
          case 'stale-lease':
            throw tiers.leases.refused();
          case 'exists':
            throw ifAbsentRefused(key, outcome.version);
          case 'version-mismatch':
            throw ifVersionRefused(key, outcome.version, options.ifVersion);
        }
        tiers.leases.revokeLocal(subject(key));
        const entry: Entry = { value, version: outcome.version, tags: options.tags, expiresAt: outcome.expiresAt };
        tiers.l1.set(entryKey(key), entry);
        return written(entry);
      },
      local: () => {
        if (options.leaseToken !== '') tiers.leases.consumeLocal(subject(key), options.leaseToken, options.tags);
        else tiers.leases.revokeLocal(subject(key));
        const current = tiers.l1.peek(entryKey(key));
        if (options.ifAbsent && current !== undefined) throw ifAbsentRefused(key, current.version);
        if (options.ifVersion !== 0 && current?.version !== options.ifVersion) throw ifVersionRefused(key, current?.version ?? 0, options.ifVersion);
        const now = Date.now();
        const entry: Entry = { value, version: tiers.localVersion('entry', key), tags: options.tags, expiresAt: now + options.ttlMs };
        if (!tiers.l1.set(entryKey(key), entry, now)) throw memoryTierFull('value', tiers.l1.maxBytes);
        return written(entry);
      },
    });
  }

  delete(keys: readonly string[]): Promise<{ deleted: number; scope: WriteScope }> {
    const { tiers } = this;
    const unique = [...new Set(keys)];
    return tiers.write({
      operation: 'delete',
      touches: unique.map((key) => ({ kind: 'entry', name: key })),
      shared: async () => {
        const { existed, versions } = await this.store!.delete(unique);
        return { result: { deleted: existed }, events: this.deletions(unique, versions) };
      },
      local: () => {
        let deleted = 0;
        const versions = unique.map((key) => {
          tiers.leases.revokeLocal(subject(key));
          if (tiers.l1.peek(entryKey(key)) !== undefined) deleted++;
          return tiers.localVersion('entry', key);
        });
        return { result: { deleted }, events: this.deletions(unique, versions) };
      },
    });
  }

  /**
   * Removes every entry carrying any of the tags, in Redis (when usable) and
   * in L1 either way; refuses fills under leases granted before.
   */
  invalidateTags(tags: readonly string[]): Promise<{ localEntriesRemoved: number; scope: WriteScope }> {
    return this.tiers.write({
      operation: 'invalidate tags',
      touches: tags.map((tag) => ({ kind: 'tag', name: tag })),
      shared: async () => this.tagsRemoved(tags, await this.store!.invalidateTags(tags)),
      local: () => this.tagsRemoved(tags, []),
    });
  }

  /** Keys this sidecar deleted at `versions` (tombstones): gone from L1 whatever they claim, older copies kept out, watchers told. */
  private deletions(keys: readonly string[], versions: readonly number[]): CacheEvent[] {
    return keys.map((key, index) => {
      this.tiers.l1.delete(entryKey(key));
      this.tiers.l1.invalidate(entryKey(key), versions[index]!);
      return { kind: 'key', key, change: 'deleted', version: versions[index]!, tags: [] };
    });
  }

  /** Tags invalidated (in Redis, `removedInRedis` went with them): the same in L1, and fills under older leases are refused. */
  private tagsRemoved(tags: readonly string[], removedInRedis: readonly string[]) {
    this.tiers.invalidateReadsInFlight();
    this.tiers.leases.stampTags(tags);
    const removedHere = this.tiers.l1.invalidateTags(tags).map((l1) => idOfL1Key('entry', l1));
    const event: CacheEvent = { kind: 'tags', tags, keys: [...new Set([...removedInRedis, ...removedHere])] };
    return { result: { localEntriesRemoved: removedHere.length }, events: [event] };
  }

  /** Another sidecar's change: drop what it superseded, and void memory leases granted before it. */
  private applyRemote(event: CacheEvent): void {
    if (event.kind === 'key') {
      this.tiers.l1.invalidate(entryKey(event.key), event.version);
      this.tiers.leases.revokeLocal(subject(event.key));
    } else if (event.kind === 'tags') {
      this.tiers.invalidateReadsInFlight();
      this.tiers.leases.stampTags(event.tags);
      this.tiers.l1.invalidateTags(event.tags);
    }
  }
}

function setEvent(key: string, entry: Entry): CacheEvent {
  return { kind: 'key', key, change: 'set', version: entry.version, tags: entry.tags };
}
