import type { Subject } from '../model/subject';

/**
 * Every Redis key and channel of one namespace: the one place that knows the
 * layout. Everything lives under `cc:<namespace>:`.
 *
 *   cc:<ns>:e:<key>          hash: v (version), d (encoded value), x (expires at, ms), t (tags)
 *   cc:<ns>:tz:<tag>         sorted set: the keys carrying the tag, scored by their expiry
 *   cc:<ns>:ts:<tag>         when the tag was last invalidated (Redis µs)
 *   cc:<ns>:l:<key>          the fill lease of a generic key (a Mutex key)
 *   cc:<ns>:s:{<sid>}        hash: v (version), x (expires at, ms), n (node count)
 *   cc:<ns>:s:{<sid>}:c      list of chunks: encoded JSON arrays of nodes
 *   cc:<ns>:s:{<sid>}:l      the fill lease of a session (a Mutex key)
 *   cc:<ns>:s:{<sid>}:a      the last node appended (version, node JSON), kept a minute
 *   cc:<ns>:i:<short id>     short-ID index: the session that holds the node
 *   cc:<ns>:lock:<resource>  a distributed lock (a Mutex key on every lock master)
 *   cc:<ns>:lockq:<resource> sorted set: the lock's waiters by arrival (µs), on every lock master
 *   cc:<ns>:lockw:<resource> hash: each waiter's deadline (Redis ms); both expire with the last waiter
 *   cc:<ns>:fence:<resource> the fencing counter of a lock's resource, no TTL
 *   cc:<ns>:epoch            written once; missing after a reconnect means Redis lost its data
 *   cc:<ns>:recovery:<id>    claimed by the sidecar flushing the namespace after a failover (30 s, refreshed), then "done" (10 min)
 *   cc:<ns>:events           the Pub/Sub channel of invalidations and context events
 *   cc:<ns>:locks            the Pub/Sub channel of lock wake-ups, on every lock master
 *
 * On a Redis Cluster every script must touch one slot. All keys of one
 * session share the hash tag `{<sid>}`. Generic entries are spread over
 * CLUSTER_BUCKETS buckets, each a hash tag of its own: an entry, its lease,
 * and the tag sets and stamps of its bucket sit in one slot, so a Set with
 * tags is one atomic script, and a tag invalidation is one script per bucket
 * (`cc:<ns>:e:{b<n>}:<key>`, `tz:{b<n>}:<tag>`, `ts:{b<n>}:<tag>`,
 * `l:{b<n>}:<key>`, `epoch:{b<n>}`). Locks, their queues and fencing
 * counters carry `{<resource>}`, so they live on the same shard. On one
 * server (or Sentinel) there is a single bucket and the layout above holds
 * as written. Everything a script touches is named in its KEYS or is in the
 * slot of a key that is.
 */

/** Buckets of generic entries on a Redis Cluster: enough to spread over the masters, few enough that a tag invalidation (one script per bucket) stays cheap. */
export const CLUSTER_BUCKETS = 64;

/** FNV-1a (32-bit) of the key's UTF-8 bytes: a stable bucket, the same in every sidecar and every version. */
export function bucketOf(key: string, buckets: number): number {
  if (buckets === 1) return 0;
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(key, 'utf8')) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % buckets;
}
export class KeySpace {
  readonly prefix: string;
  readonly channel: string;
  /** Lock wake-ups (lock-release, lock-leave), published on the lock master that holds the queue. */
  readonly lockChannel: string;
  /** Bucket numbers, 0 to buckets - 1. */
  readonly bucketList: readonly number[];

  /** `buckets`: 1 on one server or Sentinel, CLUSTER_BUCKETS on a Cluster. */
  constructor(
    readonly namespace: string,
    readonly buckets = 1,
  ) {
    this.prefix = `cc:${namespace}:`;
    this.channel = `${this.prefix}events`;
    this.lockChannel = `${this.prefix}locks`;
    this.bucketList = Array.from({ length: buckets }, (_, bucket) => bucket);
  }

  /** The bucket of a generic key. */
  bucket(key: string): number {
    return bucketOf(key, this.buckets);
  }

  /** `{b<n>}:` on a Cluster, nothing on one server. */
  private tagOf(bucket: number): string {
    return this.buckets === 1 ? '' : `{b${bucket}}:`;
  }

  /** Written once per bucket; missing after a reconnect means Redis (or that bucket's shard) lost its data. */
  epoch(bucket: number): string {
    return this.buckets === 1 ? `${this.prefix}epoch` : `${this.prefix}epoch:${this.tagOf(bucket).slice(0, -1)}`;
  }

  /** What precedes a key in the Redis keys of a bucket's entries (the tag invalidation script builds entry keys from it). */
  entryPrefix(bucket: number): string {
    return `${this.prefix}e:${this.tagOf(bucket)}`;
  }

  /**
   * Patterns of every cached thing of the namespace — entries, tag sets,
   * fill leases, sessions, the short-ID index — for a namespace-wide
   * invalidation. Not the tag stamps (they refuse stale fills), the epoch,
   * locks or fencing counters (those are not cache data).
   */
  get cachePatterns(): string[] {
    return ['e:', 'tz:', 'l:', 's:', 'i:'].map((part) => `${this.prefix}${part}*`);
  }

  entry(key: string): string {
    return this.entryPrefix(this.bucket(key)) + key;
  }

  /** The keys of a bucket carrying a tag: a sorted set scored by their expiry. */
  tag(tag: string, bucket: number): string {
    return `${this.prefix}tz:${this.tagOf(bucket)}${tag}`;
  }

  /** When a tag was last invalidated in a bucket (Redis µs): fills under older leases that would carry it are refused. */
  tagStamp(tag: string, bucket: number): string {
    return `${this.prefix}ts:${this.tagOf(bucket)}${tag}`;
  }

  /** The fill lease of a generic key or a session (a Mutex key: its value is the holder's token). */
  lease(subject: Subject): string {
    return subject.kind === 'entry' ? `${this.prefix}l:${this.tagOf(this.bucket(subject.id))}${subject.id}` : `${this.sessionMeta(subject.id)}:l`;
  }

  sessionMeta(sessionId: string): string {
    return `${this.prefix}s:{${sessionId}}`;
  }

  sessionChunks(sessionId: string): string {
    return `${this.sessionMeta(sessionId)}:c`;
  }

  /** The last node appended to the session (`<version>\n<node JSON>`, for a minute), for sidecars that heard of the append. */
  sessionLastAppended(sessionId: string): string {
    return `${this.sessionMeta(sessionId)}:a`;
  }

  shortId(shortId: string): string {
    return `${this.prefix}i:${shortId}`;
  }

  /** A distributed lock (a Mutex key on every lock master: its value is the holder's token). */
  lock(resource: string): string {
    return this.buckets === 1 ? `${this.prefix}lock:${resource}` : `${this.prefix}lock:{${resource}}`;
  }

  /** The waiters of a lock, by arrival (a sorted set beside the lock key, in its slot). */
  lockQueue(resource: string): string {
    return this.buckets === 1 ? `${this.prefix}lockq:${resource}` : `${this.prefix}lockq:{${resource}}`;
  }

  /** Each waiter's deadline (a hash beside the lock key): a waiter that stops asking is dropped from the queue after it. */
  lockWaiters(resource: string): string {
    return this.buckets === 1 ? `${this.prefix}lockw:${resource}` : `${this.prefix}lockw:{${resource}}`;
  }

  /** The fencing counter of a lock's resource, on every lock master; kept without TTL. */
  fence(resource: string): string {
    return this.buckets === 1 ? `${this.prefix}fence:${resource}` : `${this.prefix}fence:{${resource}}`;
  }

  /** Claimed by the one sidecar that flushes the namespace after a failover or a restart (the others see it taken). */
  recovery(identity: string): string {
    return `${this.prefix}recovery:${identity}`;
  }
}
