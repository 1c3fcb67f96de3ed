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
 *   cc:<ns>:fence:<resource> the fencing counter of a lock's resource, no TTL
 *   cc:<ns>:epoch            written once; missing after a reconnect means Redis lost its data
 *   cc:<ns>:events           the Pub/Sub channel of invalidations and context events
 *
 * Generic entries carry no hash tag, so a Redis Cluster spreads them; all
 * keys of one session share the hash tag `{<sid>}`, so every session script
 * touches a single slot. Everything a script touches is named in its KEYS.
 */
export class KeySpace {
  readonly prefix: string;
  readonly channel: string;
  readonly epoch: string;
  /** What precedes a key in an entry's Redis key (the tag invalidation script builds entry keys from it). */
  readonly entryPrefix: string;

  constructor(readonly namespace: string) {
    this.prefix = `cc:${namespace}:`;
    this.channel = `${this.prefix}events`;
    this.epoch = `${this.prefix}epoch`;
    this.entryPrefix = `${this.prefix}e:`;
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
    return this.entryPrefix + key;
  }

  /** The keys carrying a tag: a sorted set scored by their expiry. */
  tag(tag: string): string {
    return `${this.prefix}tz:${tag}`;
  }

  /** When a tag was last invalidated (Redis µs): fills under older leases that would carry it are refused. */
  tagStamp(tag: string): string {
    return `${this.prefix}ts:${tag}`;
  }

  /** The fill lease of a generic key or a session (a Mutex key: its value is the holder's token). */
  lease(subject: Subject): string {
    return subject.kind === 'entry' ? `${this.prefix}l:${subject.id}` : `${this.sessionMeta(subject.id)}:l`;
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
    return `${this.prefix}lock:${resource}`;
  }

  /** The fencing counter of a lock's resource, on every lock master; kept without TTL. */
  fence(resource: string): string {
    return `${this.prefix}fence:${resource}`;
  }
}
