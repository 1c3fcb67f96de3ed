/**
 * Options of an lru-cache bounded by entry count without preallocating:
 * with `max`, lru-cache allocates its index arrays for `max` entries up
 * front (~3 MiB per 100,000, held even while empty); counted through
 * `maxSize` with a size of 1 each, the same bound grows its arrays as
 * entries arrive.
 */
export function countBounded(entries: number): { maxSize: number; sizeCalculation: () => number } {
  return { maxSize: entries, sizeCalculation: () => 1 };
}
