/**
 * Options of an lru-cache bounded by entry count without preallocating:
 * with `max`, lru-cache allocates its index arrays for `max` entries up
 * front (~3 MiB per 100,000, held even while empty); counted through
 * `maxSize` with a size of 1 each, the same bound grows its arrays as
 * entries arrive.
 */
/**
 * For every lru-cache that tracks TTLs: read the clock on each check. With
 * its default (`ttlResolution: 1`) lru-cache caches the time for 1 ms and
 * arms a 1 ms timer to forget it — under a steady trickle of calls, one timer
 * and one extra event-loop wake-up per call, which is most of what a call
 * costs beyond its own work. `performance.now()` is far cheaper than a timer.
 */
export const CLOCK_PER_CHECK = { ttlResolution: 0 } as const;

export function countBounded(entries: number): { maxSize: number; sizeCalculation: () => number } {
  return { maxSize: entries, sizeCalculation: () => 1 };
}

/**
 * A Map bounded by entry count, in two generations: entries go into the
 * young Map; when it holds half the bound, it becomes the old one and the
 * previous old one is dropped whole. Every operation is O(1) — no eviction
 * walks the Map (a Map iterated from the front after many deletions scans
 * the holes they left) — and it holds at most the bound. For hint indexes
 * (verified on use), where exact LRU order is not worth its cost:
 * lru-cache's `set` with a size bound costs microseconds, and a session
 * read from Redis indexes each of its nodes.
 */
export class CountBoundedMap<K, V> {
  private young = new Map<K, V>();
  private old = new Map<K, V>();
  private readonly generationSize: number;

  constructor(readonly maxEntries: number) {
    this.generationSize = Math.max(1, Math.floor(maxEntries / 2));
  }

  /** Entries held (a key in both generations counts once: the young copy shadows the old). */
  get size(): number {
    let shadowed = 0;
    for (const key of this.young.keys()) if (this.old.has(key)) shadowed++;
    return this.young.size + this.old.size - shadowed;
  }

  get(key: K): V | undefined {
    const value = this.young.get(key);
    if (value !== undefined) return value;
    const old = this.old.get(key);
    // Used again: kept into the next generation.
    if (old !== undefined) this.set(key, old);
    return old;
  }

  set(key: K, value: V): void {
    // Setting a key the young Map holds does not grow it: no check first (one hash lookup, not two).
    this.young.set(key, value);
    if (this.young.size >= this.generationSize) {
      this.old = this.young;
      this.young = new Map();
    }
  }

  delete(key: K): boolean {
    const young = this.young.delete(key);
    return this.old.delete(key) || young;
  }
}
