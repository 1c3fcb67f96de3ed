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
 * A Map bounded by entry count: past the bound, the oldest insertion goes.
 * For hint indexes (verified on use), where LRU order is not worth its
 * cost: lru-cache's `set` with a size bound costs microseconds, a Map's a
 * fraction of one, and a session read from Redis indexes each of its nodes.
 */
export class CountBoundedMap<K, V> {
  private readonly map = new Map<K, V>();

  constructor(readonly maxEntries: number) {}

  get size(): number {
    return this.map.size;
  }

  get(key: K): V | undefined {
    return this.map.get(key);
  }

  set(key: K, value: V): void {
    const { map } = this;
    const current = map.get(key);
    if (current === value) return;
    // A changed value counts as a new insertion.
    if (current !== undefined) map.delete(key);
    map.set(key, value);
    if (map.size > this.maxEntries) map.delete(map.keys().next().value as K);
  }

  delete(key: K): boolean {
    return this.map.delete(key);
  }
}
