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
