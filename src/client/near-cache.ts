import { LRUCache } from 'lru-cache';
import { KeyChange, SessionChange, type BuildContextRequest, type BuildContextResponse, type EntryInfo, type GetResponse, type GetSessionNodesResponse, type Node, type WatchResponse } from '../gen/contextcache/v1/context_cache';
import { appendToHeld, buildFromHeld, heldSession, type HeldSession, type SessionsAtHand } from './near-context';

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
 *
 * Sessions it holds are kept current rather than dropped: an append (this
 * client's, or another's heard on the stream) whose previous version is
 * exactly the version held is added in place; any other change drops the
 * copy. From the sessions it holds it builds contexts in this process
 * (near-context.ts), with the sidecar's rules.
 */

export interface NearCacheOptions {
  /** Bound on the near cache's memory: keys, values, nodes and bookkeeping (estimated). */
  maxBytes: number;
  /** Keep entries at most this long, whatever their own TTL (default: their TTL). */
  maxTtlMs?: number;
  /**
   * Also keep sessions read with getSessionNodes (or filled, or fetched to
   * build contexts: see followSessions), and contexts built by buildContext
   * that are complete (session found, nothing unresolved, missing, dropped
   * or degraded), dropped when any session they were built from changes
   * (default true).
   */
  sessions?: boolean;
  /**
   * Build contexts in this process from the sessions held, with the
   * sidecar's rules, when the request counts no tokens (no max_tokens, no
   * tokenizer) and every session it reads is held (default true when
   * sessions are kept). Sessions a context needed and that were not held
   * are fetched in the background for the next one.
   */
  buildContexts?: boolean;
  /**
   * Which sessions are fetched and then kept current (default 'read'):
   * 'read' — those this client reads or builds contexts from; 'written' —
   * also those appended to or filled through other clients, while the near
   * cache is at most three quarters full (for apps behind a load balancer
   * without session affinity, where the next turn of a conversation may
   * come to any instance).
   */
  followSessions?: 'read' | 'written';
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
  /** Appends added in place to a session held at exactly the version they were appended to. */
  appendsApplied: number;
  /** Contexts built in this process from held sessions (counted among the hits too). */
  contextsBuilt: number;
  /** Sessions fetched in the background to build contexts from (see followSessions). */
  sessionsFetched: number;
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
  /** The session indexed for contexts (with `session`). */
  held?: HeldSession;
  /** What it costs (keptBytes), computed once. */
  bytes?: number;
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
  private readonly counters = { hits: 0, misses: 0, bypasses: 0, evictions: 0, invalidations: 0, appendsApplied: 0, contextsBuilt: 0, sessionsFetched: 0, flushes: 0, refusedInstalls: 0 };
  /** Which held session holds a short ID: for references across sessions. */
  private readonly shortIdOwners = new Map<string, string>();
  private readonly atHand: SessionsAtHand = {
    held: (sessionId) => this.lru.peek(sessionKey(sessionId))?.held,
    ownerOf: (shortId) => this.shortIdOwners.get(shortId),
  };
  /**
   * Told of sessions worth fetching: one a context needed and that was not
   * held, one held and dropped because an append could not be added in
   * place, one written elsewhere (followSessions 'written'). Set by the client.
   */
  wantSession: (sessionId: string) => void = () => undefined;
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
  readonly buildsContexts: boolean;
  private readonly followsWritten: boolean;

  constructor(private readonly options: NearCacheOptions) {
    if (!Number.isSafeInteger(options.maxBytes) || options.maxBytes < 1024) {
      throw new RangeError(`nearCache.maxBytes is ${options.maxBytes}; use a whole number of bytes, at least 1024`);
    }
    if (options.maxTtlMs !== undefined && !(options.maxTtlMs > 0)) throw new RangeError(`nearCache.maxTtlMs is ${options.maxTtlMs}; use a positive number of milliseconds, or leave it unset`);
    if (options.followSessions !== undefined && options.followSessions !== 'read' && options.followSessions !== 'written') {
      throw new RangeError(`nearCache.followSessions is ${String(options.followSessions)}; use 'read' or 'written'`);
    }
    this.keepSessions = options.sessions ?? true;
    this.buildsContexts = this.keepSessions && (options.buildContexts ?? true);
    this.followsWritten = this.keepSessions && options.followSessions === 'written';
    this.lru = new LRUCache<string, Kept>({
      maxSize: options.maxBytes,
      sizeCalculation: (kept, key) => (kept.bytes ??= keptBytes(key, kept)),
      ttlAutopurge: false,
      // The clock read on each TTL check: lru-cache's default arms a 1 ms timer per check (see the sidecar's CLOCK_PER_CHECK).
      ttlResolution: 0,
      allowStale: false,
      dispose: (kept, key, reason) => {
        this.unlinkTags(key, kept);
        this.unlinkContext(key, kept);
        this.unlinkShortIds(kept);
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
    if ((kept.bytes = keptBytes(key, kept)) > this.options.maxBytes) return false;
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
    const held = heldSession(kept.nodes, info.version, info.source);
    if (!this.install(sessionKey(sessionId), ticket, { version: info.version, tags: [], entry: undefined, session: kept, held }, info)) return false;
    this.linkShortIds(sessionId, held);
    return true;
  }

  /**
   * The context the sidecar would build for `request`, built here from the
   * sessions held (near-context.ts), counted as a hit; undefined when it
   * cannot be (then the caller asks for a kept answer, which counts the
   * miss or bypass). A session it needed and did not hold is asked for
   * (wantSession), so that the next context can be built here.
   */
  buildContext(request: BuildContextRequest): NearContextResponse | undefined {
    if (!this.buildsContexts || !this.isLive) return undefined;
    const built = buildFromHeld(this.atHand, request);
    if (built === undefined) {
      if (this.lru.peek(sessionKey(request.sessionId))?.held === undefined) this.wantSession(request.sessionId);
      return undefined;
    }
    this.lru.get(sessionKey(request.sessionId));
    this.counters.hits++;
    this.counters.contextsBuilt++;
    return Object.assign(built, { fromNearCache: true as const });
  }

  /**
   * A context the sidecar built: the sessions it read that are not held
   * are asked for (wantSession), so that the next context can be built here.
   */
  contextAnswered(request: BuildContextRequest, response: BuildContextResponse): void {
    if (!this.buildsContexts || !response.sessionFound) return;
    const wanted = new Set([request.sessionId]);
    for (const item of response.nodes) if (item.node !== undefined) wanted.add(item.node.sessionId);
    for (const sessionId of wanted) if (this.lru.peek(sessionKey(sessionId))?.held === undefined) this.wantSession(sessionId);
  }

  /**
   * A node was appended to a session (this client's append, answered, or
   * another's, heard on the stream), taking it from `previousVersion` to
   * `version`. A copy held at exactly `previousVersion` gets the node in
   * place; one already at `version` or later has it; any other is out of
   * date and goes (and is asked for again: it was in use).
   */
  appended(sessionId: string, node: Node, previousVersion: number, version: number): void {
    const key = sessionKey(sessionId);
    this.sessionChanged(sessionId);
    const kept = this.lru.peek(key);
    if (kept?.session !== undefined && kept.held !== undefined && kept.version >= version) return;
    if (kept?.session !== undefined && kept.held !== undefined && previousVersion !== 0 && kept.version === previousVersion) {
      const current = this.extended(kept, kept.held, kept.session, node, version);
      if (version > (this.floors.get(key) ?? 0)) this.floors.set(key, version);
      if (current !== undefined) {
        this.counters.appendsApplied++;
        return;
      }
    }
    const held = kept?.held !== undefined;
    this.invalidate(key, version, false);
    if (held && !this.lru.has(key)) this.wantSession(sessionId);
  }

  /**
   * `kept` with `node` added at `version`, in the LRU in its place: its
   * expiry, its links (tags, short IDs) and its size kept and added to, so
   * an append costs the same whatever the session's length. Undefined when
   * it no longer fits.
   */
  private extended(kept: Kept, held: HeldSession, session: NearSessionResponse, node: Node, version: number): Kept | undefined {
    const key = sessionKey(node.sessionId);
    const next = appendToHeld(held, node, version);
    const added = next.nodes !== held.nodes;
    const bytes = (kept.bytes ?? keptBytes(key, kept)) + (added ? nodeBytes(node) : 0);
    if (bytes > this.options.maxBytes) {
      this.lru.delete(key);
      return undefined;
    }
    const response: NearSessionResponse = Object.freeze({ ...session, nodes: next.nodes as Node[], info: session.info && Object.freeze({ ...session.info, version }) });
    const extended: Kept = { ...kept, version, session: response, held: next, bytes };
    this.lru.set(key, extended, { noUpdateTTL: true, noDisposeOnSet: true, size: bytes });
    if (added && node.shortId !== '') this.shortIdOwners.set(node.shortId, node.sessionId);
    return extended;
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
      case 'sessionInvalidated': {
        const { sessionId, version, change } = event.value;
        this.sessionChanged(sessionId);
        this.invalidate(sessionKey(sessionId), version, false);
        if (change === SessionChange.SESSION_CHANGE_FILLED) this.followWritten(sessionId);
        break;
      }
      case 'nodeAppended': {
        const { node, sessionVersion, previousSessionVersion } = event.value;
        if (node === undefined) break;
        const held = this.lru.has(sessionKey(node.sessionId));
        this.appended(node.sessionId, node, previousSessionVersion, sessionVersion);
        if (!held) this.followWritten(node.sessionId);
        break;
      }
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
    this.shortIdOwners.clear();
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
    this.shortIdOwners.clear();
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
    if ((kept.bytes = keptBytes(key, kept)) > this.options.maxBytes) return false;
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

  /** A session written through another client: fetched when following written sessions and there is room for it. */
  private followWritten(sessionId: string): void {
    if (this.followsWritten && this.isLive && this.lru.calculatedSize <= this.options.maxBytes * 0.75 && !this.lru.has(sessionKey(sessionId))) this.wantSession(sessionId);
  }

  /** Counts a session fetched for contexts (by the client, on wantSession). */
  fetchedSession(): void {
    this.counters.sessionsFetched++;
  }

  private linkShortIds(sessionId: string, held: HeldSession): void {
    for (const shortId of held.byShortId.keys()) this.shortIdOwners.set(shortId, sessionId);
  }

  private unlinkShortIds(kept: Kept): void {
    const held = kept.held;
    if (held === undefined) return;
    for (const [shortId, node] of held.byShortId) if (this.shortIdOwners.get(shortId) === node.sessionId) this.shortIdOwners.delete(shortId);
  }

  /** A session changed (an event, or this client's write): contexts built from it go, and contexts being built now are not kept. */
  sessionChanged(sessionId: string): void {
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
