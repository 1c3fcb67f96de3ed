import type { LeasedRead, LeaseRequest } from '../cache/leases';
import type { TierRead, Tiers } from '../cache/tiers';
import { memoryTierFull } from '../errors';
import type { Entry, Tier, WriteScope } from '../model/entry';
import type { AppendedHint, CacheEvent } from '../model/events';
import type { NodeRecord } from '../model/node';
import { l1Key, type Subject } from '../model/subject';
import type { SessionL2, StoredSession, TokenCounter } from './ports';
import { appendToSession, buildSession, type SessionState } from './session';
import { TokenCounts } from './tokens';
import { CountBoundedMap } from '../cache/bounded';

const subject = (sessionId: string): Subject => ({ kind: 'session', id: sessionId });
const sessionRead = ({ entry, source, degraded }: TierRead<SessionState>): SessionRead => ({ session: entry.value, version: entry.version, expiresAt: entry.expiresAt, source, degraded });
const sessionKey = (sessionId: string): string => l1Key('session', sessionId);

/**
 * A session whose newly counted nodes hold at least this many characters of
 * content is written back to Redis with its counts (about 3 ms of counting
 * that other sidecars are spared). Fewer, such as the one or two nodes a
 * turn appends, cost less to count again than to rewrite the session for.
 */
const WRITE_BACK_MIN_CHARS = 16 * 1024;

/**
 * Sessions remembered as referenced once (their IDs: at most a few MiB),
 * so that the second reference to one reads it whole into L1.
 */
const PICKED_SESSIONS = 20_000;

export interface SessionRead {
  session: SessionState;
  version: number;
  expiresAt: number;
  source: Tier;
  /** Served from L1 while Redis was unusable (see TierRead.degraded). */
  degraded: boolean;
}

export interface ShortIdResolution {
  /** Resolved nodes by short ID. */
  nodes: Map<string, NodeRecord>;
  unresolved: string[];
  /** Sessions the index names for unresolved short IDs, but that are cached nowhere. */
  missingSessions: string[];
  /** Some session it read was served degraded. */
  degraded: boolean;
}

/**
 * Conversation sessions: the same write path, coherence rules and leases as
 * the generic cache (`Tiers`), with sessions kept decoded in L1 and appended
 * to in place. It knows nothing of gRPC or Redis.
 */
export class SessionStore {
  /**
   * Whether some Watch stream of this sidecar wants the nodes appended to a
   * session (set by the edge): then another sidecar's append is fetched from
   * Redis even when L1 holds no copy to extend.
   */
  nodeWanted: (sessionId: string) => boolean = () => false;
  /** short ID → session ID for sessions this sidecar has seen; verified against the session on use. */
  private readonly shortIdIndex = new CountBoundedMap<string, string>(200_000);
  /**
   * Sessions a reference picked nodes out of lately (see resolveShortIds):
   * referenced again, they are read whole and kept.
   */
  private readonly pickedOnce = new CountBoundedMap<string, true>(PICKED_SESSIONS);

  /** Token counts of the nodes, each counted once per tokenizer and kept on the node. */
  readonly tokens: TokenCounts;

  constructor(
    private readonly tiers: Tiers,
    private readonly redis: SessionL2 | undefined,
    private readonly defaultTtlMs: number,
    counter: TokenCounter,
  ) {
    this.tokens = new TokenCounts(counter);
    tiers.onRemoteEvent((event) => this.applyRemote(event));
    tiers.onAppended((hint, later) => this.resolveAppended(hint, later));
    // Sessions written while Redis was away: invalidated in Redis (revoking fill leases granted
    // before, so no fill can bring back a session without the appends it missed) and here.
    tiers.onReplay('session', (sessionIds) =>
      Promise.all(
        sessionIds.map(async (sessionId) => {
          const { version } = await this.redis!.invalidate(sessionId);
          return this.invalidated(sessionId, version);
        }),
      ),
    );
  }

  async get(sessionId: string): Promise<SessionRead | undefined> {
    return (await this.getMany([sessionId])).get(sessionId);
  }

  /**
   * L1 first; the sessions L1 cannot answer come from Redis in one round
   * trip. Sessions L1 holds are taken synchronously (Tiers.readLocal): a
   * context built from L1 reads its sessions without a read spec, a result
   * array or a promise per session.
   */
  async getMany(sessionIds: readonly string[]): Promise<Map<string, SessionRead>> {
    const found = new Map<string, SessionRead>();
    let missing: string[] | undefined;
    for (const id of sessionIds) {
      if (found.has(id)) continue;
      const local = this.tiers.readLocal<SessionState>('session', id);
      if (local !== undefined) found.set(id, sessionRead(local));
      else if (missing === undefined) missing = [id];
      else if (!missing.includes(id)) missing.push(id);
    }
    if (missing === undefined) return found;
    const ids = missing;
    const reads = await this.tiers.read<SessionState>(ids, {
      kind: 'session',
      operation: 'read sessions',
      fetch: async (missing) =>
        (await this.redis!.getMany(missing)).map((stored, index) =>
          stored === undefined ? undefined : { value: buildSession(missing[index]!, stored.nodes), version: stored.version, expiresAt: stored.expiresAt, tags: [] },
        ),
      remember: (id, entry) => this.remember(id, entry),
    });
    ids.forEach((id, index) => {
      const read = reads[index];
      if (read !== undefined) found.set(id, sessionRead(read));
    });
    // In the order asked for, as callers that take the first session holding a node expect.
    const ordered = new Map<string, SessionRead>();
    for (const id of sessionIds) {
      const read = found.get(id);
      if (read !== undefined) ordered.set(id, read);
    }
    return ordered;
  }

  /** A read that, on a miss, grants a fill lease or waits for another caller's fill. */
  getOrLease(sessionId: string, request: LeaseRequest): Promise<LeasedRead<SessionRead>> {
    return this.tiers.leases.readOrLease(subject(sessionId), request, () => this.get(sessionId));
  }

  /** The cache-aside fill after the app loaded the session from its database. */
  put(sessionId: string, nodes: readonly NodeRecord[], leaseToken: string, ttlMs = this.defaultTtlMs): Promise<{ version: number; expiresAt: number; scope: WriteScope }> {
    const { tiers } = this;
    const session = buildSession(sessionId, nodes);
    const filled = (version: number): CacheEvent => ({ kind: 'session', sessionId, change: 'filled', version });
    return tiers.write({
      operation: 'put session',
      touches: [{ kind: 'session', name: sessionId }],
      shared: async () => {
        const stored = await this.redis!.put(sessionId, session.nodes, ttlMs, leaseToken);
        if (stored === 'stale') throw tiers.leases.refused();
        this.remember(sessionId, { value: session, version: stored.version, expiresAt: stored.expiresAt, tags: [] });
        return { result: stored, events: [filled(stored.version)], after: () => this.indexShortIds(session.nodes, ttlMs) };
      },
      local: () => {
        if (leaseToken !== '') tiers.leases.consumeLocal(subject(sessionId), leaseToken);
        else tiers.leases.revokeLocal(subject(sessionId));
        const version = tiers.localVersion('session', sessionId);
        const expiresAt = Date.now() + ttlMs;
        if (!this.remember(sessionId, { value: session, version, expiresAt, tags: [] })) throw memoryTierFull('session', tiers.l1.maxBytes);
        return { result: { version, expiresAt }, events: [filled(version)] };
      },
    });
  }

  /** Write-through of a new node; watchers of the session receive it. */
  append(node: NodeRecord): Promise<{ appended: boolean; version: number; previousVersion: number; scope: WriteScope }> {
    const { tiers } = this;
    const sessionId = node.sessionId;
    const appendedEvent = (version: number, previousVersion: number): CacheEvent => ({ kind: 'node', node, sessionVersion: version, previousVersion });
    return tiers.write({
      operation: 'append node',
      touches: [{ kind: 'session', name: sessionId }],
      shared: async () => {
        const stored = await this.redis!.append(node);
        this.applyAppend(node, stored.previousVersion, stored.version);
        const index = stored.appended && node.shortId !== '';
        return {
          result: { appended: stored.appended, version: stored.version, previousVersion: stored.previousVersion },
          events: [appendedEvent(stored.version, stored.previousVersion)],
          after: index ? () => this.indexShortIds([node], Math.max(1000, stored.expiresAt - Date.now())) : undefined,
        };
      },
      local: () => {
        tiers.leases.revokeLocal(subject(sessionId));
        const previousVersion = tiers.l1.peek(sessionKey(sessionId))?.version ?? 0;
        const version = tiers.localVersion('session', sessionId);
        const appended = this.applyAppend(node, previousVersion, version);
        return { result: { appended, version, previousVersion }, events: [appendedEvent(version, previousVersion)] };
      },
    });
  }

  invalidate(sessionId: string): Promise<{ existed: boolean; scope: WriteScope }> {
    const { tiers } = this;
    return tiers.write({
      operation: 'invalidate session',
      touches: [{ kind: 'session', name: sessionId }],
      shared: async () => {
        const { existed, version } = await this.redis!.invalidate(sessionId);
        return { result: { existed }, events: [this.invalidated(sessionId, version)] };
      },
      local: () => {
        tiers.leases.revokeLocal(subject(sessionId));
        const existed = tiers.l1.peek(sessionKey(sessionId)) !== undefined;
        return { result: { existed }, events: [this.invalidated(sessionId, tiers.localVersion('session', sessionId))] };
      },
    });
  }

  /**
   * This sidecar invalidated the session at `version` (a tombstone): its L1
   * copy goes whatever version it claims, older copies are kept out, and
   * watchers hear of it.
   */
  private invalidated(sessionId: string, version: number): CacheEvent {
    this.tiers.l1.delete(sessionKey(sessionId));
    this.tiers.l1.invalidate(sessionKey(sessionId), version);
    return { kind: 'session', sessionId, change: 'invalidated', version };
  }

  /**
   * The nodes each session's set asks for, read from Redis without keeping
   * the session (resolveShortIds); failed: nothing (the references stay
   * unresolved, as when the index cannot be read).
   */
  private async pick(wanted: Map<string, Set<string>>): Promise<Map<string, StoredSession | undefined>> {
    const picks = new Map<string, StoredSession | undefined>();
    if (wanted.size === 0) return picks;
    const sessionIds = [...wanted.keys()];
    try {
      const stored = await this.redis!.pickMany(sessionIds, [...wanted.values()]);
      sessionIds.forEach((id, index) => picks.set(id, stored[index]));
    } catch (error) {
      this.tiers.failed(error, 'pick referenced nodes');
    }
    return picks;
  }

  /** The session as L1 holds it, if it does (no hit or miss is counted, recency is not refreshed). */
  cached(sessionId: string): SessionState | undefined {
    return this.tiers.l1.peek<SessionState>(sessionKey(sessionId))?.value;
  }

  /**
   * Nodes were just counted (TokenCounts.ensure): the sessions that gained
   * enough counts are rewritten in Redis with them, if Redis still holds
   * the version L1 has, so that the sidecars reading them next need not
   * count again. Best effort, in the background: a failure or a session
   * that changed meanwhile only means another sidecar counts for itself.
   */
  keepTokenCounts(counted: readonly NodeRecord[]): void {
    if (this.redis === undefined || !this.tiers.sharedUsable()) return;
    const chars = new Map<string, number>();
    for (const node of counted) chars.set(node.sessionId, (chars.get(node.sessionId) ?? 0) + node.content.length);
    for (const [sessionId, total] of chars) {
      if (total < WRITE_BACK_MIN_CHARS) continue;
      const entry = this.tiers.l1.peek<SessionState>(sessionKey(sessionId));
      if (entry === undefined) continue;
      this.redis.storeTokenCounts(sessionId, entry.version, entry.value.nodes).catch((error: unknown) => this.tiers.failed(error, 'store token counts'));
    }
  }

  /**
   * Resolves short IDs: within `sessionId` first (when given), then across the
   * namespace — sessions in L1, then the Redis index and the sessions it
   * names (one round trip each).
   */
  async resolveShortIds(shortIds: readonly string[], sessionId?: string, preloaded?: SessionState): Promise<ShortIdResolution> {
    const nodes = new Map<string, NodeRecord>();
    let pending = [...new Set(shortIds)];
    let degraded = false;
    const take = (session: SessionState | undefined, read?: SessionRead) => {
      if (session === undefined) return;
      if (read?.degraded) degraded = true;
      pending = pending.filter((id) => {
        const node = session.byShortId.get(id);
        if (node !== undefined) nodes.set(id, node);
        return node === undefined;
      });
    };

    if (preloaded !== undefined) take(preloaded);
    else if (sessionId) {
      const read = await this.get(sessionId);
      take(read?.session, read);
    }

    // Sessions this sidecar has seen hold the node, if they are still cached.
    const known = new Map<string, string>();
    for (const id of pending) {
      const owner = this.shortIdIndex.get(id);
      if (owner !== undefined) known.set(id, owner);
    }
    if (known.size > 0) {
      const sessions = await this.getMany([...new Set(known.values())]);
      for (const read of sessions.values()) take(read.session, read);
    }
    if (pending.length === 0 || this.redis === undefined || !this.tiers.sharedUsable()) {
      return { nodes, unresolved: pending, missingSessions: [], degraded };
    }

    let owners: (string | undefined)[];
    try {
      owners = await this.redis.lookupShortIds(pending);
    } catch (error) {
      this.tiers.failed(error, 'look up short IDs');
      return { nodes, unresolved: pending, missingSessions: [], degraded };
    }
    // A session referenced for the first time (lately) is picked: only the nodes asked for are
    // decoded out of it, and it is not kept — most references are to sessions a context cites
    // once. Referenced again, it is read whole and kept in L1, as a session cited again and
    // again should be. Both kinds are read at once: one round trip.
    const whole: string[] = [];
    const picked = new Map<string, Set<string>>();
    owners.forEach((owner, index) => {
      if (owner === undefined) return;
      if (this.pickedOnce.get(owner) !== undefined) {
        if (!whole.includes(owner)) whole.push(owner);
      } else {
        let wanted = picked.get(owner);
        if (wanted === undefined) picked.set(owner, (wanted = new Set()));
        wanted.add(pending[index]!);
      }
    });
    const [sessions, picks] = await Promise.all([this.getMany(whole), this.pick(picked)]);
    for (const read of sessions.values()) take(read.session, read);
    const missingSessions = whole.filter((id) => !sessions.has(id));
    for (const [sessionId, pick] of picks) {
      if (pick === undefined) {
        missingSessions.push(sessionId);
        continue;
      }
      this.pickedOnce.set(sessionId, true);
      // As in a whole session (buildSession's byShortId), the last node of a short ID is the one.
      const byShortId = new Map(pick.nodes.map((node) => [node.shortId, node]));
      for (const [shortId, node] of byShortId) {
        if (nodes.has(shortId)) continue;
        nodes.set(shortId, node);
        this.shortIdIndex.set(shortId, sessionId);
      }
    }
    pending = pending.filter((id) => !nodes.has(id));
    return { nodes, unresolved: pending, missingSessions, degraded };
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
      this.tiers.failed(error, 'index short IDs');
    }
  }

  /**
   * Stores a session in L1 and indexes the short IDs of `indexed` (by
   * default all its nodes; an append indexes its node alone); false when L1
   * refused it (too large, or older than what it knows).
   */
  private remember(sessionId: string, entry: Entry<SessionState>, indexed: Iterable<NodeRecord> = entry.value.nodes): boolean {
    if (!this.tiers.l1.set(sessionKey(sessionId), entry)) return false;
    for (const node of indexed) if (node.shortId !== '') this.shortIdIndex.set(node.shortId, sessionId);
    return true;
  }

  /**
   * Applies an append to the L1 copy when it is exactly the predecessor;
   * otherwise drops the copy. True when L1 holds the session with the node.
   */
  private applyAppend(node: NodeRecord, previousVersion: number, version: number): boolean {
    const key = sessionKey(node.sessionId);
    const current = this.tiers.l1.peek<SessionState>(key);
    if (current !== undefined && current.version === previousVersion && this.remember(node.sessionId, { ...current, value: appendToSession(current.value, node), version }, [node])) {
      return true;
    }
    this.tiers.l1.invalidate(key, version);
    return false;
  }

  /** Another sidecar's change: applied to L1; memory leases granted before it are void. */
  private applyRemote(event: CacheEvent): void {
    if (event.kind === 'session') {
      this.tiers.l1.invalidate(sessionKey(event.sessionId), event.version);
      this.tiers.leases.revokeLocal(subject(event.sessionId));
    }
  }

  /**
   * Another sidecar appended a node. L1's copy is dropped at once (an older
   * copy never serves after the event, and no later event waits behind a
   * fetch). When this sidecar wants the node — its copy was exactly the
   * predecessor, or a Watch stream wants the session — it is fetched from
   * Redis (never taken from the bus): the extended copy goes back into L1
   * if nothing happened to the session meanwhile, and watchers get the node.
   * When it cannot be confirmed (a later append replaced it, Redis failed),
   * watchers are told the session changed instead.
   */
  private resolveAppended(hint: AppendedHint, later: (event: CacheEvent) => void): CacheEvent | undefined {
    const { sessionId, sessionVersion, previousVersion } = hint;
    const key = sessionKey(sessionId);
    const invalidated: CacheEvent = { kind: 'session', sessionId, change: 'invalidated', version: sessionVersion };
    this.tiers.leases.revokeLocal(subject(sessionId));
    const copy = this.tiers.l1.peek<SessionState>(key);
    this.tiers.l1.invalidate(key, sessionVersion);
    const extend = copy?.version === previousVersion;
    const watched = this.nodeWanted(sessionId);
    if (this.redis === undefined || (!extend && !watched)) return invalidated;
    const generation = this.tiers.generation;
    this.redis.appendedNode(sessionId, sessionVersion).then(
      (node) => {
        if (node === undefined || node.id !== hint.nodeId) {
          if (watched) later(invalidated);
          return;
        }
        // Back into L1 only if nothing touched the session since: no newer event, write or flush.
        const untouched = this.tiers.l1.peek(key) === undefined && this.tiers.l1.knownVersion(key) === sessionVersion && this.tiers.generation === generation;
        if (extend && untouched) this.remember(sessionId, { ...copy!, value: appendToSession(copy!.value, node), version: sessionVersion });
        if (watched) later({ kind: 'node', node, sessionVersion, previousVersion });
      },
      (error: unknown) => {
        this.tiers.failed(error, 'fetch an appended node');
        if (watched) later(invalidated);
      },
    );
    return watched ? undefined : invalidated;
  }
}
