import { LRUCache } from 'lru-cache';
import type { Entry, L1Value } from '../model/entry';
import { CLOCK_PER_CHECK, countBounded } from './bounded';

/**
 * What an entry costs beyond its key and value: the entry object, the LRU
 * node, the Buffer object and its own allocation, tag links. Measured on
 * Node 24: 100,000 entries of 512-byte values took about 440 bytes each
 * beyond the value and key.
 */
const ENTRY_OVERHEAD_BYTES = 400;

/**
 * Values arrive as views into larger buffers (a gRPC message, a Redis reply,
 * Node's 8-64 KiB allocation pools). Kept as they are, a 500-byte value
 * could pin a 64 KiB buffer, and L1's byte bound would mean nothing. L1
 * keeps exact-size copies of its own (outside the pool).
 */
export function detached(value: Buffer): Buffer {
  if (value.byteOffset === 0 && value.buffer.byteLength === value.byteLength) return value;
  const copy = Buffer.allocUnsafeSlow(value.byteLength);
  value.copy(copy);
  return copy;
}

export function entrySize(key: string, entry: Entry<L1Value>): number {
  const valueBytes = Buffer.isBuffer(entry.value) ? entry.value.byteLength : entry.value.sizeBytes;
  let size = ENTRY_OVERHEAD_BYTES + Buffer.byteLength(key) * 2 + valueBytes;
  for (const tag of entry.tags) size += 48 + tag.length * 2;
  return size;
}

export interface L1Counters {
  hits: number;
  misses: number;
  evictions: number;
  expirations: number;
}

/**
 * The in-memory tier: bounded by bytes (keys, values and bookkeeping), per
 * entry TTL, least-recently-used eviction, and a tag index so that a tag
 * invalidation touches only the entries that carry the tag. Generic values
 * and sessions share it (and its byte budget) under distinct key prefixes.
 */
export class L1Cache {
  readonly counters: L1Counters = { hits: 0, misses: 0, evictions: 0, expirations: 0 };
  private readonly lru: LRUCache<string, Entry<L1Value>>;
  private readonly keysByTag = new Map<string, Set<string>>();
  /**
   * Per key, the lowest version an entry may still have after an
   * invalidation: a read that started before the invalidation and returns
   * later with an older value must not refill L1 with it. Kept long enough
   * to outlive any read in flight.
   */
  private readonly floors = new LRUCache<string, number>({ ...countBounded(100_000), ttl: 60_000, ...CLOCK_PER_CHECK });

  constructor(readonly maxBytes: number) {
    this.lru = new LRUCache<string, Entry<L1Value>>({
      maxSize: maxBytes,
      sizeCalculation: (entry, key) => entrySize(key, entry),
      // Expired entries are dropped when touched or pushed out by the byte
      // bound; timers per entry would cost more than the memory they free.
      ttlAutopurge: false,
      ...CLOCK_PER_CHECK,
      allowStale: false,
      dispose: (entry, key, reason) => {
        this.unlinkTags(key, entry);
        if (reason === 'evict') this.counters.evictions++;
        else if (reason === 'expire') this.counters.expirations++;
      },
    });
  }

  get<V extends L1Value = Buffer>(key: string): Entry<V> | undefined {
    const entry = this.lru.get(key) as Entry<V> | undefined;
    if (entry === undefined) this.counters.misses++;
    else this.counters.hits++;
    return entry;
  }

  /**
   * Like get, but a miss is not counted: for a first look that falls back
   * to `get` (through the tiers) when it misses, so a miss counts once.
   */
  getIfHit<V extends L1Value = Buffer>(key: string): Entry<V> | undefined {
    const entry = this.lru.get(key) as Entry<V> | undefined;
    if (entry !== undefined) this.counters.hits++;
    return entry;
  }

  /** Like get, but counts nothing and does not refresh recency. */
  peek<V extends L1Value = Buffer>(key: string): Entry<V> | undefined {
    return this.lru.peek(key) as Entry<V> | undefined;
  }

  /**
   * Stores the entry unless it is already expired or larger than the whole
   * tier; returns whether it was stored. An older version never replaces a
   * newer one, so out-of-order fills cannot resurrect a stale value.
   */
  set(key: string, entry: Entry<L1Value>, now = Date.now()): boolean {
    const current = this.lru.peek(key);
    if (current !== undefined && current.version > entry.version) return false;
    if (entry.version < (this.floors.get(key) ?? 0)) return false;
    const ttl = entry.expiresAt === 0 ? 0 : entry.expiresAt - now;
    if (entry.expiresAt !== 0 && ttl <= 0) {
      this.lru.delete(key);
      return false;
    }
    if (entrySize(key, entry) > this.maxBytes) {
      this.lru.delete(key);
      return false;
    }
    const stored = Buffer.isBuffer(entry.value) ? { ...entry, value: detached(entry.value) } : entry;
    this.lru.set(key, stored, { ttl });
    for (const tag of entry.tags) {
      let keys = this.keysByTag.get(tag);
      if (keys === undefined) this.keysByTag.set(tag, (keys = new Set()));
      keys.add(key);
    }
    return true;
  }

  delete(key: string): boolean {
    return this.removeLive(key);
  }

  /** The highest version this tier knows of for the key: its entry's, or an invalidation's. */
  knownVersion(key: string): number {
    return Math.max(this.lru.peek(key)?.version ?? 0, this.floors.get(key) ?? 0);
  }

  /**
   * Another writer produced `version` of the key (a newer value or a
   * deletion): drop any older copy and refuse older fills from now on.
   */
  invalidate(key: string, version: number): boolean {
    if (version > (this.floors.get(key) ?? 0)) this.floors.set(key, version);
    const current = this.lru.peek(key);
    if (current === undefined || current.version >= version) return false;
    return this.lru.delete(key);
  }

  /** Removes every entry carrying any of the tags; returns their keys. */
  invalidateTags(tags: readonly string[]): string[] {
    const removed: string[] = [];
    for (const tag of tags) {
      const keys = this.keysByTag.get(tag);
      if (keys === undefined) continue;
      for (const key of [...keys]) if (this.removeLive(key)) removed.push(key);
    }
    return removed;
  }

  /** Drops everything (after a resync: nothing cached can be trusted). */
  clear(): void {
    this.lru.clear();
    this.keysByTag.clear();
    this.floors.clear();
  }

  get entries(): number {
    return this.lru.size;
  }

  get bytes(): number {
    return this.lru.calculatedSize;
  }

  /**
   * Removes the key; true only when it held a live entry. An entry past its
   * TTL that was not purged yet is already gone: it is dropped as expired
   * (lru.get purges it with reason 'expire') and not counted as removed.
   */
  private removeLive(key: string): boolean {
    if (this.lru.peek(key) === undefined) {
      this.lru.get(key);
      return false;
    }
    return this.lru.delete(key);
  }

  private unlinkTags(key: string, entry: Entry<L1Value>): void {
    for (const tag of entry.tags) {
      const keys = this.keysByTag.get(tag);
      if (keys === undefined) continue;
      keys.delete(key);
      if (keys.size === 0) this.keysByTag.delete(tag);
    }
  }
}
