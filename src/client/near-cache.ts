import { LRUCache } from 'lru-cache';
import { KeyChange, type BuildContextResponse, type EntryInfo, type GetResponse, type GetSessionNodesResponse, type Node, type WatchResponse } from '../gen/contextcache/v1/context_cache';

/**
 * The client's near cache (L0): answers from this process's memory what the
 * sidecar answered before, kept coherent by the client's Watch stream with
 * the rules the sidecar applies to its own L1 (src/cache/tiers.ts):
 *  - it serves, and is filled, only while the stream is live and the
 *    sidecar hears every change (WatchStarted.coherent); while the stream is
 *    down or the sidecar is not coherent, reads go to the sidecar;
 *  - versions only grow: an invalidation leaves a floor per key, so a read
 *    that was in flight when it arrived cannot install the value it
 *    invalidated; tag invalidations, flushes and changes of state bump an
 *    epoch, and a read that began under an older epoch installs nothing;
 *  - a Resync, a resume that could not be honoured, or the sidecar losing
 *    coherence flush it;
 *  - degraded answers are never kept.
 * A stream that resumes without a gap keeps the contents: the events it
 * missed are replayed and applied before anything is served again.
 */

export interface NearCacheOptions {
  /** Bound on the near cache's memory: keys, values, nodes and bookkeeping (estimated). */
  maxBytes: number;
  /** Keep entries at most this long, whatever their own TTL (default: their TTL). */
  maxTtlMs?: number;
  /**
   * Also keep sessions read with getSessionNodes, and contexts built by
   * buildContext that are complete (session found, nothing unresolved,
   * missing, dropped or degraded), dropped when any session they were
   * built from changes (default true).
   */
  sessions?: boolean;
}

export interface NearCacheStats {
  /** Reads answered from the near cache. */
  hits: number;
  /** Reads it could not answer while live (they went to the sidecar). */
  misses: number;
  /** Reads that went to the sidecar because the near cache was not live (stream down, replaying, or the sidecar not coherent). */
  bypasses: number;
  /** Entries evicted to stay within maxBytes. */
  evictions: number;
  /** Entries dropped by an invalidation (an event of the Watch stream, or this client's own write). */
  invalidations: number;
  /** Times everything was dropped (Resync, a resume gap, the sidecar losing coherence). */
  flushes: number;
  /** Answers not kept because an invalidation or flush overtook them, or they were degraded. */
  refusedInstalls: number;
  entries: number;
  bytes: number;
  maxBytes: number;
  /** Whether reads are answered from it right now. */
  live: boolean;
}

/** A near-cache answer: the sidecar's response as it was kept. Read-only: it is shared by every reader. */
export type NearGetResponse = GetResponse & { readonly fromNearCache?: true };
export type NearSessionResponse = GetSessionNodesResponse & { readonly fromNearCache?: true };
export type NearContextResponse = BuildContextResponse & { readonly fromNearCache?: true };

interface Kept {
  version: number;
  tags: readonly string[];
  entry: NearGetResponse | undefined;
  session: NearSessionResponse | undefined;
  context?: NearContextResponse;
  /** The sessions a context was built from. */
  sessions?: readonly string[];
}

/** What an entry costs beyond its value: the objects, the LRU node, the index. */
const ENTRY_OVERHEAD_BYTES = 600;
const NODE_OVERHEAD_BYTES = 400;
/** Invalidation floors kept, and for how long: far beyond any read in flight. */
const MAX_FLOORS = 100_000;
const FLOOR_TTL_MS = 60_000;

/**
 * Values arrive as views of larger buffers (Node's 8 KiB allocation pool):
 * kept as they are, a 100-byte value could pin 8 KiB, and maxBytes would
 * mean little. The near cache keeps exact-size copies of its own.
 */
function ownCopy(value: Buffer, always = false): Buffer {
  if (!always && value.byteOffset === 0 && value.buffer.byteLength === value.byteLength) return value;
  const copy = Buffer.allocUnsafeSlow(value.byteLength);
  value.copy(copy);
  return copy;
}

const entryKey = (key: string) => 'k:' + key;
const sessionKey = (sessionId: string) => 's:' + sessionId;
const contextKey = (request: string) => 'b:' + request;

function nodeBytes(node: Node): number {
  let size = NODE_OVERHEAD_BYTES + 2 * (node.id.length + node.shortId.length + node.sessionId.length + node.parentId.length + node.content.length);
  for (const key in node.metadata) size += 64 + 2 * (key.length + node.metadata[key]!.length);
  for (const ref of node.refs) size += 32 + 2 * ref.length;
  return size;
}

function keptBytes(key: string, kept: Kept): number {
  let size = ENTRY_OVERHEAD_BYTES + 2 * key.length;
  for (const tag of kept.tags) size += 48 + 2 * tag.length;
  if (kept.entry !== undefined) size += kept.entry.value.byteLength;
  if (kept.session !== undefined) for (const node of kept.session.nodes) size += nodeBytes(node);
  if (kept.context !== undefined) for (const item of kept.context.nodes) size += 64 + 2 * item.referencedBy.length + (item.node === undefined ? 0 : nodeBytes(item.node));
  for (const sessionId of kept.sessions ?? []) size += 48 + 2 * sessionId.length;
  return size;
}

/** A read's permission to install its answer: the epoch it began under, or NOT_LIVE. */
export type Ticket = number;
const NOT_LIVE: Ticket = -1;

export class NearCache {
  private readonly lru: LRUCache<string, Kept>;
  // Counted through maxSize, not max: lru-cache would preallocate its arrays for MAX_FLOORS entries.
  private readonly floors = new LRUCache<string, number>({ maxSize: MAX_FLOORS, sizeCalculation: () => 1, ttl: FLOOR_TTL_MS, ttlResolution: 0 });
  private readonly keysByTag = new Map<string, Set<string>>();
  /** Built contexts by the sessions they were built from. */
  private readonly contextsBySession = new Map<string, Set<string>>();
  /**
   * Bumped by every change of any session: a context names the versions of
   * none but its own session, so one built while any session changed is
   * not kept.
   */
  private sessionEpoch = 0;
  private readonly counters = { hits: 0, misses: 0, bypasses: 0, evictions: 0, invalidations: 0, flushes: 0, refusedInstalls: 0 };
  private epoch = 0;
  /** Whether the stream is up (a `started` arrived and nothing ended it since). */
  private streamUp = false;
  private coherent = false;
  /** The sidecar runs without Redis (coherent, never subscribed): its writes are all local, and all announced here. */
  private sidecarL1Only = false;
  /** Replayed events of a resumed stream still to be applied before serving. */
  private replaying = 0;
  private isLive = false;
  private readonly liveWaiters = new Set<() => void>();
  readonly keepSessions: boolean;

  constructor(private readonly options: NearCacheOptions) {
    if (!Number.isSafeInteger(options.maxBytes) || options.maxBytes < 1024) {
      throw new RangeError(`nearCache.maxBytes is ${options.maxBytes}; use a whole number of bytes, at least 1024`);
    }
    if (options.maxTtlMs !== undefined && !(options.maxTtlMs > 0)) throw new RangeError(`nearCache.maxTtlMs is ${options.maxTtlMs}; use a positive number of milliseconds, or leave it unset`);
    this.keepSessions = options.sessions ?? true;
    this.lru = new LRUCache<string, Kept>({
      maxSize: options.maxBytes,
      sizeCalculation: (kept, key) => keptBytes(key, kept),
      ttlAutopurge: false,
      // The clock read on each TTL check: lru-cache's default arms a 1 ms timer per check (see the sidecar's CLOCK_PER_CHECK).
      ttlResolution: 0,
      allowStale: false,
      dispose: (kept, key, reason) => {
        this.unlinkTags(key, kept);
        this.unlinkContext(key, kept);
        if (reason === 'evict') this.counters.evictions++;
      },
    });
  }

  /** Whether reads are answered from it right now. */
  get live(): boolean {
    return this.isLive;
  }

  /** Resolves once the near cache is live (the stream is up and the sidecar coherent), or after `timeoutMs` with false. */
  whenLive(timeoutMs: number): Promise<boolean> {
    if (this.isLive) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.liveWaiters.delete(done);
        resolve(this.isLive);
      };
      const timer = setTimeout(done, timeoutMs);
      this.liveWaiters.add(done);
    });
  }

  /** The permission a read takes before it asks the sidecar. */
  ticket(): Ticket {
    return this.isLive ? this.epoch : NOT_LIVE;
  }

  getEntry(key: string): NearGetResponse | undefined {
    return this.lookup(entryKey(key), (kept) => kept.entry);
  }

  getSession(sessionId: string): NearSessionResponse | undefined {
    return this.lookup(sessionKey(sessionId), (kept) => kept.session);
  }

  /** A context built before for the same request (`request`: its canonical form), while none of its sessions changed. */
  getContext(request: string): NearContextResponse | undefined {
    return this.lookup(contextKey(request), (kept) => kept.context);
  }

  /** A read: counted as a bypass while not live, else as a hit or a miss. */
  private lookup<T>(key: string, pick: (kept: Kept) => T | undefined): T | undefined {
    if (!this.isLive) {
      this.counters.bypasses++;
      return undefined;
    }
    const kept = this.lru.get(key);
    const found = kept === undefined ? undefined : pick(kept);
    if (found === undefined) this.counters.misses++;
    else this.counters.hits++;
    return found;
  }

  /** The permission of a BuildContext: the epoch and the session epoch it began under. */
  contextTicket(): [Ticket, number] {
    return [this.ticket(), this.sessionEpoch];
  }

  /**
   * Keeps a built context when it is complete and nothing overtook it: no
   * change of any session since the call began (the answer names no
   * version of the referenced sessions), no flush.
   */
  installContext(request: string, [ticket, sessionEpoch]: [Ticket, number], response: BuildContextResponse): boolean {
    const complete = response.sessionFound && !response.degraded && response.droppedNodes === 0 && response.unresolvedShortIds.length === 0 && response.missingSessionIds.length === 0;
    if (!this.keepSessions || !complete || sessionEpoch !== this.sessionEpoch || ticket === NOT_LIVE || ticket !== this.epoch || !this.isLive) {
      if (this.keepSessions) this.counters.refusedInstalls++;
      return false;
    }
    const sessions = [...new Set(response.nodes.flatMap((item) => (item.node === undefined ? [] : [item.node.sessionId])))];
    const kept: Kept = { version: 0, tags: [], entry: undefined, session: undefined, context: Object.freeze({ ...response, fromNearCache: true as const }), sessions };
    const key = contextKey(request);
    if (keptBytes(key, kept) > this.options.maxBytes) return false;
    this.lru.set(key, kept, { ttl: this.options.maxTtlMs ?? 0 });
    for (const sessionId of sessions) {
      let keys = this.contextsBySession.get(sessionId);
      if (keys === undefined) this.contextsBySession.set(sessionId, (keys = new Set()));
      keys.add(key);
    }
    return true;
  }

  /**
   * Whether a write the sidecar answered WRITE_SCOPE_LOCAL may be kept: only
   * from a sidecar without Redis, where local is all there is. Elsewhere a
   * local write means Redis failed under it and other sidecars were not told.
   */
  get keepsLocalWrites(): boolean {
    return this.sidecarL1Only;
  }

  /** Whether the key's value is held (for tests and benchmarks; counts nothing). */
  has(key: string): boolean {
    return this.lru.has(entryKey(key));
  }

  hasSession(sessionId: string): boolean {
    return this.lru.has(sessionKey(sessionId));
  }

  /** Keeps a Get's answer, if the read's ticket still allows it; returns whether it was kept. */
  /** `callersValue`: the value is the caller's own (a write), who may change it later: always copied. */
  installEntry(key: string, ticket: Ticket, value: Buffer, info: EntryInfo | undefined, callersValue = false): boolean {
    if (info === undefined) return false;
    if (!this.installable(entryKey(key), ticket, info)) return false;
    const response: NearGetResponse = Object.freeze({ found: true, value: ownCopy(value, callersValue), info: Object.freeze({ ...info, waitedForFill: false }), notModified: false, lease: undefined, fromNearCache: true as const });
    return this.install(entryKey(key), ticket, { version: info.version, tags: info.tags, entry: response, session: undefined }, info);
  }

  installSession(sessionId: string, ticket: Ticket, response: GetSessionNodesResponse): boolean {
    const info = response.info;
    if (!this.keepSessions || !response.found || info === undefined) return false;
    if (!this.installable(sessionKey(sessionId), ticket, info)) return false;
    const kept: NearSessionResponse = Object.freeze({ ...response, info: Object.freeze({ ...info, waitedForFill: false }), lease: undefined, fromNearCache: true as const });
    return this.install(sessionKey(sessionId), ticket, { version: info.version, tags: [], entry: undefined, session: kept }, info);
  }

  /** This client changed the key: whatever is held, and any read in flight, is superseded. */
  forgetEntry(key: string): void {
    this.epoch++;
    if (this.lru.delete(entryKey(key))) this.counters.invalidations++;
  }

  forgetSession(sessionId: string): void {
    this.epoch++;
    this.sessionChanged(sessionId);
    if (this.lru.delete(sessionKey(sessionId))) this.counters.invalidations++;
  }

  forgetTags(tags: readonly string[]): void {
    this.epoch++;
    this.dropTags(tags);
  }

  /** Applies one message of the client's Watch stream. */
  apply(message: WatchResponse): void {
    const event = message.event;
    if (event === undefined) return;
    switch (event.$case) {
      case 'started': {
        this.streamUp = true;
        this.coherent = event.value.coherent;
        this.sidecarL1Only = event.value.coherent && !event.value.subscribed;
        if (event.value.resumed) this.replaying = Number(event.value.replayedEvents);
        else {
          this.replaying = 0;
          this.flush();
        }
        if (!this.coherent) this.flush();
        this.update();
        return;
      }
      case 'coherenceChanged':
        this.coherent = event.value.coherent;
        if (!this.coherent) this.flush();
        this.update();
        return;
      case 'resync':
        this.replaying = 0;
        this.flush();
        this.update();
        return;
      case 'keyInvalidated': {
        const { key, version, change } = event.value;
        this.invalidate(entryKey(key), version, change === KeyChange.KEY_CHANGE_DELETED);
        break;
      }
      case 'tagsInvalidated':
        // A read in flight may carry one of the tags, and a tag invalidation leaves no floor behind.
        this.epoch++;
        this.dropTags(event.value.tags);
        for (const key of event.value.keys) if (this.lru.delete(entryKey(key))) this.counters.invalidations++;
        break;
      case 'sessionInvalidated':
        this.sessionChanged(event.value.sessionId);
        this.invalidate(sessionKey(event.value.sessionId), event.value.version, false);
        break;
      case 'nodeAppended':
        if (event.value.node !== undefined) {
          this.sessionChanged(event.value.node.sessionId);
          this.invalidate(sessionKey(event.value.node.sessionId), event.value.sessionVersion, false);
        }
        break;
    }
    if (this.replaying > 0 && --this.replaying === 0) this.update();
  }

  /** The stream ended: nothing is served or installed until a new one is live; the contents wait for a resume. */
  streamDown(): void {
    this.streamUp = false;
    this.replaying = 0;
    this.update();
  }

  /** Drops everything, and refuses what reads in flight bring back. */
  flush(): void {
    this.epoch++;
    this.sessionEpoch++;
    this.contextsBySession.clear();
    if (this.lru.size > 0) this.counters.flushes++;
    this.lru.clear();
    this.keysByTag.clear();
    this.floors.clear();
  }

  stats(): NearCacheStats {
    return { ...this.counters, entries: this.lru.size, bytes: this.lru.calculatedSize, maxBytes: this.options.maxBytes, live: this.isLive };
  }

  /** Closes: drops everything; nothing is served again. */
  close(): void {
    this.streamUp = false;
    this.update();
    this.lru.clear();
    this.contextsBySession.clear();
    this.keysByTag.clear();
    this.floors.clear();
  }

  private update(): void {
    const live = this.streamUp && this.coherent && this.replaying === 0;
    if (live === this.isLive) return;
    this.isLive = live;
    this.epoch++;
    if (live) for (const wake of [...this.liveWaiters]) wake();
  }

  /** Whether an answer read under `ticket` may still be kept: nothing overtook it, and it is not degraded. */
  private installable(key: string, ticket: Ticket, info: EntryInfo): boolean {
    if (ticket === NOT_LIVE || ticket !== this.epoch || !this.isLive || info.degraded || info.version < (this.floors.get(key) ?? 0)) {
      this.counters.refusedInstalls++;
      return false;
    }
    return true;
  }

  private install(key: string, ticket: Ticket, kept: Kept, info: EntryInfo): boolean {
    if (!this.installable(key, ticket, info)) return false;
    const current = this.lru.peek(key);
    if (current !== undefined && current.version > kept.version) return false;
    const now = Date.now();
    const expiresAt = info.expiresAt?.getTime() ?? 0;
    let ttl = expiresAt === 0 ? 0 : expiresAt - now;
    if (expiresAt !== 0 && ttl <= 0) return false;
    if (this.options.maxTtlMs !== undefined) ttl = ttl === 0 ? this.options.maxTtlMs : Math.min(ttl, this.options.maxTtlMs);
    if (keptBytes(key, kept) > this.options.maxBytes) return false;
    this.lru.set(key, kept, { ttl });
    for (const tag of kept.tags) {
      let keys = this.keysByTag.get(tag);
      if (keys === undefined) this.keysByTag.set(tag, (keys = new Set()));
      keys.add(key);
    }
    return true;
  }

  /**
   * A change at `version`: older copies go, and older answers are refused
   * from now on. A deletion's version is a tombstone above the deleted
   * entry's, so the deleted value itself is refused too.
   */
  private invalidate(key: string, version: number, deleted: boolean): void {
    if (version > (this.floors.get(key) ?? 0)) this.floors.set(key, version);
    const current = this.lru.peek(key);
    if (current === undefined) return;
    if (current.version < version || (deleted && current.version <= version)) {
      this.lru.delete(key);
      this.counters.invalidations++;
    }
  }

  private dropTags(tags: readonly string[]): void {
    for (const tag of tags) {
      const keys = this.keysByTag.get(tag);
      if (keys === undefined) continue;
      for (const key of [...keys]) if (this.lru.delete(key)) this.counters.invalidations++;
    }
  }

  /** A session changed: contexts built from it go, and contexts being built now are not kept. */
  private sessionChanged(sessionId: string): void {
    this.sessionEpoch++;
    const keys = this.contextsBySession.get(sessionId);
    if (keys === undefined) return;
    for (const key of [...keys]) if (this.lru.delete(key)) this.counters.invalidations++;
  }

  private unlinkContext(key: string, kept: Kept): void {
    for (const sessionId of kept.sessions ?? []) {
      const keys = this.contextsBySession.get(sessionId);
      if (keys === undefined) continue;
      keys.delete(key);
      if (keys.size === 0) this.contextsBySession.delete(sessionId);
    }
  }

  private unlinkTags(key: string, kept: Kept): void {
    for (const tag of kept.tags) {
      const keys = this.keysByTag.get(tag);
      if (keys === undefined) continue;
      keys.delete(key);
      if (keys.size === 0) this.keysByTag.delete(tag);
    }
  }
}
