import { LRUCache } from 'lru-cache';
import type { CacheEvent } from '../cache/events';
import type { Entry } from '../cache/l1';
import type { LeasedRead, LeaseRequest } from '../cache/leases';
import type { Tier, TieredCache, WriteScope } from '../cache/tiered-cache';
import { CacheError, tooLarge } from '../errors';
import type { NodeRecord } from './node';
import { appendToSession, buildSession, sessionL1Key, type SessionState } from './session';
import type { SessionRedis, StoredSession } from './session-redis';

export interface SessionRead {
  session: SessionState;
  version: number;
  expiresAt: number;
  source: Tier;
}

export interface ShortIdResolution {
  /** Resolved nodes by short ID. */
  nodes: Map<string, NodeRecord>;
  unresolved: string[];
  /** Sessions the index names for unresolved short IDs, but that are cached nowhere. */
  missingSessions: string[];
}

/**
 * Conversation sessions: the same tiers, coherence rules and leases as the
 * generic cache (it shares its L1, its Redis link and its lease manager),
 * with sessions kept decoded in L1 and appended to in place.
 */
export class SessionStore {
  /** short ID → session ID for sessions this sidecar has seen; verified against the session on use. */
  private readonly shortIdIndex = new LRUCache<string, string>({ max: 200_000 });

  constructor(
    private readonly cache: TieredCache,
    private readonly redis: SessionRedis | undefined,
    private readonly defaultTtlMs: number,
  ) {
    cache.onRemoteEvent((event) => this.applyRemote(event));
  }

  async get(sessionId: string): Promise<SessionRead | undefined> {
    return (await this.getMany([sessionId])).get(sessionId);
  }

  /** L1 first; the sessions L1 cannot answer come from Redis in one round trip. */
  async getMany(sessionIds: readonly string[]): Promise<Map<string, SessionRead>> {
    const mode = this.cache.mode;
    const found = new Map<string, SessionRead>();
    const missing: string[] = [];
    for (const id of new Set(sessionIds)) {
      const entry = mode === 'detached' ? undefined : this.cache.l1.get<SessionState>(sessionL1Key(id));
      if (entry !== undefined) found.set(id, { session: entry.value, version: entry.version, expiresAt: entry.expiresAt, source: 'l1' });
      else missing.push(id);
    }
    if (missing.length === 0 || this.redis === undefined || (mode !== 'coherent' && mode !== 'detached')) return found;

    const generation = this.cache.generation;
    let stored: (StoredSession | undefined)[];
    try {
      stored = await this.redis.getMany(missing);
    } catch (error) {
      this.cache.l2Failed(error, 'read sessions');
      return found;
    }
    const fill = this.cache.mode === 'coherent' && generation === this.cache.generation;
    missing.forEach((id, index) => {
      const item = stored[index];
      if (item === undefined) return;
      const session = buildSession(id, item.nodes);
      found.set(id, { session, version: item.version, expiresAt: item.expiresAt, source: 'l2' });
      if (fill) this.remember(id, { value: session, version: item.version, expiresAt: item.expiresAt, tags: [] });
      if (this.redis!.needsCompaction(item)) this.redis!.compact(id, item).catch(() => undefined);
    });
    return found;
  }

  /** A read that, on a miss, grants a fill lease or waits for another caller's fill. */
  getOrLease(sessionId: string, request: LeaseRequest): Promise<LeasedRead<SessionRead>> {
    return this.cache.leases.readOrLease(() => this.get(sessionId), this.leaseKey(sessionId), sessionL1Key(sessionId), request);
  }

  /** The cache-aside fill after the app loaded the session from its database. */
  async put(sessionId: string, nodes: readonly NodeRecord[], leaseToken: string, ttlMs = this.defaultTtlMs): Promise<{ version: number; expiresAt: number; scope: WriteScope }> {
    const session = buildSession(sessionId, nodes);
    if (this.cache.sharedUsable()) {
      try {
        const stored = await this.redis!.put(sessionId, session.nodes, ttlMs, leaseToken);
        if (stored === 'stale') throw this.cache.leases.refused();
        this.remember(sessionId, { value: session, version: stored.version, expiresAt: stored.expiresAt, tags: [] });
        this.cache.counters.published++;
        this.cache.announce({ kind: 'session', sessionId, change: 'filled', version: stored.version });
        await this.indexShortIds(session.nodes, ttlMs);
        return { ...stored, scope: 'shared' };
      } catch (error) {
        if (error instanceof CacheError) throw error;
        this.cache.l2Failed(error, 'put session');
      }
    }
    if (leaseToken !== '') this.cache.leases.consumeLocal(this.leaseKey(sessionId), leaseToken);
    else this.cache.leases.revokeLocal(this.leaseKey(sessionId));
    const version = this.cache.versions.next(this.cache.l1.knownVersion(sessionL1Key(sessionId)));
    const expiresAt = Date.now() + ttlMs;
    if (!this.remember(sessionId, { value: session, version, expiresAt, tags: [] })) {
      throw tooLarge(`the session does not fit in this sidecar's memory tier (${this.cache.l1.maxBytes} bytes) and Redis is not reachable, so it cannot be stored`);
    }
    this.cache.counters.localWrites++;
    this.cache.announce({ kind: 'session', sessionId, change: 'filled', version });
    return { version, expiresAt, scope: 'local' };
  }

  /** Write-through of a new node; watchers of the session receive it. */
  async append(node: NodeRecord): Promise<{ appended: boolean; version: number; scope: WriteScope }> {
    const sessionId = node.sessionId;
    if (this.cache.sharedUsable()) {
      try {
        const result = await this.redis!.append(node);
        this.applyAppend(node, result.previousVersion, result.version);
        this.cache.counters.published++;
        this.cache.announce({ kind: 'node', node, sessionVersion: result.version, previousVersion: result.previousVersion });
        if (result.appended && node.shortId !== '') await this.indexShortIds([node], Math.max(1000, result.expiresAt - Date.now()));
        return { appended: result.appended, version: result.version, scope: 'shared' };
      } catch (error) {
        if (error instanceof CacheError) throw error;
        this.cache.l2Failed(error, 'append node');
      }
    }
    this.cache.leases.revokeLocal(this.leaseKey(sessionId));
    const current = this.cache.l1.peek<SessionState>(sessionL1Key(sessionId));
    const version = this.cache.versions.next(this.cache.l1.knownVersion(sessionL1Key(sessionId)));
    const appended = this.applyAppend(node, current?.version ?? 0, version);
    this.cache.counters.localWrites++;
    this.cache.announce({ kind: 'node', node, sessionVersion: version, previousVersion: current?.version ?? 0 });
    return { appended, version, scope: 'local' };
  }

  async invalidate(sessionId: string): Promise<{ existed: boolean; scope: WriteScope }> {
    if (this.cache.sharedUsable()) {
      try {
        const result = await this.redis!.invalidate(sessionId);
        this.cache.l1.invalidate(sessionL1Key(sessionId), result.version);
        this.cache.counters.published++;
        this.cache.announce({ kind: 'session', sessionId, change: 'invalidated', version: result.version });
        return { existed: result.existed, scope: 'shared' };
      } catch (error) {
        this.cache.l2Failed(error, 'invalidate session');
      }
    }
    this.cache.leases.revokeLocal(this.leaseKey(sessionId));
    const existed = this.cache.l1.peek(sessionL1Key(sessionId)) !== undefined;
    const version = this.cache.versions.next(this.cache.l1.knownVersion(sessionL1Key(sessionId)));
    this.cache.l1.invalidate(sessionL1Key(sessionId), version);
    this.cache.counters.localWrites++;
    this.cache.announce({ kind: 'session', sessionId, change: 'invalidated', version });
    return { existed, scope: 'local' };
  }

  /**
   * Resolves short IDs: within `sessionId` first (when given), then across the
   * namespace — sessions in L1, then the Redis index and the sessions it
   * names (one round trip each).
   */
  async resolveShortIds(shortIds: readonly string[], sessionId?: string, preloaded?: SessionState): Promise<ShortIdResolution> {
    const nodes = new Map<string, NodeRecord>();
    let pending = [...new Set(shortIds)];
    const take = (session: SessionState | undefined) => {
      if (session === undefined) return;
      pending = pending.filter((id) => {
        const node = session.byShortId.get(id);
        if (node !== undefined) nodes.set(id, node);
        return node === undefined;
      });
    };

    if (preloaded !== undefined) take(preloaded);
    else if (sessionId) take((await this.get(sessionId))?.session);

    // Sessions this sidecar has seen hold the node, if they are still cached.
    const known = new Map<string, string>();
    for (const id of pending) {
      const owner = this.shortIdIndex.get(id);
      if (owner !== undefined) known.set(id, owner);
    }
    if (known.size > 0) {
      const sessions = await this.getMany([...new Set(known.values())]);
      for (const read of sessions.values()) take(read.session);
    }
    if (pending.length === 0 || this.redis === undefined || !this.cache.sharedUsable()) {
      return { nodes, unresolved: pending, missingSessions: [] };
    }

    let owners: (string | undefined)[];
    try {
      owners = await this.redis.lookupShortIds(pending);
    } catch (error) {
      this.cache.l2Failed(error, 'look up short IDs');
      return { nodes, unresolved: pending, missingSessions: [] };
    }
    const ownerIds = [...new Set(owners.filter((owner): owner is string => owner !== undefined))];
    const sessions = await this.getMany(ownerIds);
    for (const read of sessions.values()) take(read.session);
    const missingSessions = ownerIds.filter((id) => !sessions.has(id));
    return { nodes, unresolved: pending, missingSessions };
  }

  /**
   * The short-ID index, after the session itself was stored: best effort,
   * because the write already happened and was announced. A failure only
   * means cross-session lookups of these IDs miss until the next fill.
   */
  private async indexShortIds(nodes: readonly NodeRecord[], ttlMs: number): Promise<void> {
    try {
      await this.redis!.indexShortIds(nodes, ttlMs);
    } catch (error) {
      this.cache.l2Failed(error, 'index short IDs');
    }
  }

  private leaseKey(sessionId: string): string {
    return this.redis?.keys.lease(sessionId) ?? sessionL1Key(sessionId);
  }

  /** Stores a session in L1 and indexes its short IDs; false when L1 refused it (too large, or older than what it knows). */
  private remember(sessionId: string, entry: Entry<SessionState>): boolean {
    if (!this.cache.l1.set(sessionL1Key(sessionId), entry)) return false;
    for (const shortId of entry.value.byShortId.keys()) this.shortIdIndex.set(shortId, sessionId);
    return true;
  }

  /**
   * Applies an append to the L1 copy when it is exactly the predecessor;
   * otherwise drops the copy. True when L1 holds the session with the node.
   */
  private applyAppend(node: NodeRecord, previousVersion: number, version: number): boolean {
    const key = sessionL1Key(node.sessionId);
    const current = this.cache.l1.peek<SessionState>(key);
    if (current !== undefined && current.version === previousVersion && this.remember(node.sessionId, { ...current, value: appendToSession(current.value, node), version })) {
      return true;
    }
    this.cache.l1.invalidate(key, version);
    return false;
  }

  private applyRemote(event: CacheEvent): void {
    if (event.kind === 'session') this.cache.l1.invalidate(sessionL1Key(event.sessionId), event.version);
    else if (event.kind === 'node') this.applyAppend(event.node, event.previousVersion, event.sessionVersion);
  }
}
