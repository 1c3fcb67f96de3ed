/**
 * One cached value as the tiers hold it: a byte value (generic entries), or a
 * decoded structure that knows its own size (a session in L1).
 */
export interface Entry<V = Buffer> {
  value: V;
  /** Higher for a later write of the same key (an ETag). */
  version: number;
  tags: readonly string[];
  /** Epoch milliseconds; 0 for no expiry. */
  expiresAt: number;
}

/** A decoded value kept in L1 (a session) reports its own memory estimate. */
export interface SizedValue {
  readonly sizeBytes: number;
}

export type L1Value = Buffer | SizedValue;

/** Which tier answered a read. */
export type Tier = 'l1' | 'l2';

/** `local`: only this sidecar's memory holds the write; `shared`: Redis and every sidecar do. */
export type WriteScope = 'local' | 'shared';

/**
 * How far L1 can be trusted right now.
 *  - `l1-only`:  no Redis configured; L1 is the cache.
 *  - `coherent`: subscribed to the bus, so every invalidation reaches L1.
 *  - `detached`: Redis answers but the subscription is down: invalidations
 *                may be missed, so reads bypass L1 and go to Redis.
 *  - `degraded`: Redis is unreachable: L1 serves what it has, writes stay local.
 */
export type CoherenceMode = 'l1-only' | 'coherent' | 'detached' | 'degraded';
