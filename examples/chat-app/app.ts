/**
 * The chat app: conversations in PostgreSQL, and the prompt context of each
 * turn built either straight from PostgreSQL (mode "direct": what an app
 * does before it caches) or through its context-cache sidecar (mode
 * "sidecar"). This file is the integration guide in code: what an app calls
 * on read, on write, on branch and on delete.
 *
 *  - write (a message):   INSERT, committed; then AppendNode (write-through).
 *  - branch:              the same; the new message's parent is an older message.
 *  - read (a prompt):     client.buildContext(request): a hit is answered by the near
 *                         cache in this process, or by the sidecar. On a miss (sessions
 *                         the sidecar reports missing) the context comes from PostgreSQL
 *                         at once, and the sessions are loaded from PostgreSQL and
 *                         filled in the background with client.getOrLoadSession, under
 *                         fill leases (one loader per session across all sidecars): the
 *                         turn never waits for a fill, the next one hits.
 *  - delete:              DELETE, committed; then InvalidateSession.
 *
 * And what keeps every prompt complete when parts fail: a write-through
 * that failed is repaired by invalidating the session (retried until the
 * sidecar answers); a context the sidecar marks degraded (Redis away) or one
 * whose path has a gap is built from PostgreSQL instead.
 */
import { ContextCacheClient, ContextCacheError, InclusionReason, Role, Status, type BuildContextResponse, type NearContextResponse, type Node } from '../../src/client';
import { orderReferences, referencedShortIds, selectWithinBudget, type PromptContext } from './context';
import type { ChatStore, Message, MessageRole, NewMessage } from './store';

export type Mode = 'direct' | 'sidecar';

/** Why a context in sidecar mode came from PostgreSQL after all. */
export type FallbackReason = 'unavailable' | 'degraded' | 'incomplete' | 'unrepaired';

/** Why a context was not a hit: sessions had to be loaded (the session, or those of its references), references the cache could not place, a path with a gap. */
export type MissReason = 'loaded' | 'unplaced-reference' | 'gap';

export interface BuiltContext extends PromptContext {
  source: 'postgres' | 'sidecar';
  /** Sidecar mode: the first BuildContext answered it, nothing was loaded from PostgreSQL. */
  hit: boolean;
  /** Sidecar mode: answered in the app's own process by the near cache, without a call. */
  nearCache?: boolean;
  /** Sidecar mode: why it was built from PostgreSQL. */
  fallback?: FallbackReason;
  /** How long the build took, ms, measured by the app around its own work: what its request handler waited, whatever thread called it. */
  buildMs: number;
}

/** A context as the build paths make it; buildContext adds the time they took. */
type UntimedContext = Omit<BuiltContext, 'buildMs'>;

/** What a write tells its caller on the way: `onCommitted` runs once the message is committed, and the write-through waits for it. */
export interface PostHooks {
  onCommitted?: (message: Message) => void | Promise<void>;
}

/**
 * An instance of the chat app (a pod) as the load generator drives it:
 * `ChatApp` in the caller's thread, or `AppThread` (app-thread.ts), the
 * same app in a worker thread of its own.
 */
export interface ChatAppInstance {
  readonly mode: Mode;
  startConversation(userId: string, title?: string): Promise<string>;
  deleteConversation(sessionId: string): Promise<void>;
  postMessage(message: NewMessage, hooks?: PostHooks): Promise<Message>;
  buildContext(sessionId: string, headId: string): Promise<BuiltContext>;
  conversationMessages(sessionId: string): Promise<Message[]>;
  repaired(timeoutMs?: number): Promise<boolean>;
  /** Answered at once in this thread; a request to a worker. */
  stats(): ChatAppStats | Promise<ChatAppStats>;
  close(): void | Promise<void>;
}

export interface ChatAppOptions {
  store: ChatStore;
  mode: Mode;
  /** The sidecar of this app instance (sidecar mode). */
  cache?: ContextCacheClient;
  /** Characters of message content a prompt may hold (0: no limit). */
  maxChars: number;
  /** Deadline of each sidecar call in ms (default 3,000: beyond one wait for another caller's fill, well within a turn). */
  cacheDeadlineMs?: number;
}

export interface ChatAppStats {
  contexts: number;
  /** Contexts the sidecar answered at once. */
  hits: number;
  /** Sessions loaded from PostgreSQL and filled into the cache. */
  fills: number;
  /** Fills refused because the session changed after the lease (the newer state stays). */
  staleFills: number;
  fallbacks: Record<FallbackReason, number>;
  /** Contexts the sidecar could not answer at once, by what the first answer lacked. */
  misses: Record<MissReason, number>;
  /** Cached paths with a gap, repaired by invalidating and filling again. */
  repairs: number;
  /** Background fills that failed (the next miss of the session tries again). */
  failedFills: number;
  /** Write-throughs (AppendNode, InvalidateSession) that failed, then repaired by an invalidation. */
  writeThroughFailures: number;
  /** Of those, the ones not repaired within REPAIR_WAIT_MS, left to the background repair. */
  unrepairedWrites: number;
  /** Sessions whose failed write-through is not repaired yet. */
  pendingRepairs: number;
}

/**
 * Sessions with a failed write-through, at most this many remembered. Past
 * it the instance no longer knows which cached sessions may be stale and
 * builds every context from PostgreSQL from then on (its sidecar is gone
 * for good, or nearly).
 */
const MAX_PENDING_REPAIRS = 10_000;
/** How long a write waits for its failed write-through to be repaired by an invalidation before leaving it to the background. */
const REPAIR_WAIT_MS = 5_000;
/** How often failed write-throughs are retried as invalidations in the background. */
const REPAIR_INTERVAL_MS = 200;
/** Sessions filled into the cache in the background at once, by one instance. */
const MAX_BACKGROUND_FILLS = 256;

const ROLE_TO_PROTO: Record<MessageRole, Role> = { system: Role.ROLE_SYSTEM, user: Role.ROLE_USER, assistant: Role.ROLE_ASSISTANT, tool: Role.ROLE_TOOL };
const ROLE_FROM_PROTO = new Map<Role, MessageRole>(Object.entries(ROLE_TO_PROTO).map(([role, proto]) => [proto, role as MessageRole]));

/**
 * What an app instance's near cache may hold (sessions and complete
 * contexts, kept coherent by its Watch stream): sized to the conversations
 * in use. Every instance may get any user's next turn, so each holds them
 * all: at 1,000 users, ~2,400 conversations of ~45 messages, about 170 MiB
 * by the near cache's estimate (~120 MiB of heap).
 */
const NEAR_CACHE_BYTES = 256 * 1024 * 1024;

/**
 * The client of an app instance's sidecar, with a near cache in the app's
 * own process: it holds the conversations in use, keeps them current (each
 * append, wherever it was made, is added in place) and builds their
 * contexts without a call. A turn may come to any instance (no session
 * affinity), so each instance also follows the conversations written
 * through the others (followSessions 'written'), while it has room.
 */
export function connectSidecar(address: string): ContextCacheClient {
  return new ContextCacheClient(address, { nearCache: { maxBytes: NEAR_CACHE_BYTES, followSessions: 'written' } });
}

/** A message as a cache node: the path depth travels in metadata, so a gap in a cached path shows. */
export function toNode(message: Message): Partial<Node> {
  return {
    id: message.id,
    shortId: message.shortId,
    sessionId: message.sessionId,
    parentId: message.parentId,
    role: ROLE_TO_PROTO[message.role],
    content: message.content,
    createdAt: message.createdAt,
    refs: message.refs,
    metadata: { depth: String(message.depth) },
  };
}

export function fromNode(node: Node): Message {
  return {
    id: node.id,
    shortId: node.shortId,
    sessionId: node.sessionId,
    parentId: node.parentId,
    depth: Number(node.metadata.depth ?? Number.NaN),
    role: ROLE_FROM_PROTO.get(node.role) ?? 'user',
    content: node.content,
    refs: node.refs,
    createdAt: node.createdAt ?? new Date(0),
  };
}

/**
 * True when the conversation part of a cached context is a whole path: each
 * message the parent of the next, ending at the head, and as many messages
 * dropped before the first as its depth says there are (a cached session
 * that missed a message would give a path that starts after the gap).
 */
export function isWholePath(context: PromptContext, headId: string): boolean {
  const path = context.conversation;
  if (path.length === 0 || path.at(-1)!.id !== headId) return false;
  for (let at = 1; at < path.length; at++) {
    if (path[at]!.parentId !== path[at - 1]!.id || path[at]!.depth !== path[at - 1]!.depth + 1) return false;
  }
  const first = path[0]!;
  return Number.isInteger(first.depth) && (first.depth === 0 ? first.parentId === '' : context.droppedNodes >= first.depth);
}

export class ChatApp implements ChatAppInstance {
  readonly mode: Mode;
  private readonly store: ChatStore;
  private readonly cache: ContextCacheClient | undefined;
  private readonly maxChars: number;
  private readonly deadlineMs: number;
  private readonly pendingRepairs = new Set<string>();
  private repairOverflow = false;
  private repairTimer: NodeJS.Timeout | undefined;
  private repairing = false;
  private closed = false;
  /** Sessions being filled in the background, and who waits for there to be none. */
  private readonly filling = new Set<string>();
  private readonly fillWaiters: (() => void)[] = [];
  private readonly counters = {
    contexts: 0,
    hits: 0,
    fallbacks: { unavailable: 0, degraded: 0, incomplete: 0, unrepaired: 0 } as Record<FallbackReason, number>,
    misses: { loaded: 0, 'unplaced-reference': 0, gap: 0 } as Record<MissReason, number>,
    repairs: 0,
    failedFills: 0,
    writeThroughFailures: 0,
    unrepairedWrites: 0,
  };

  constructor(options: ChatAppOptions) {
    if (options.mode === 'sidecar' && options.cache === undefined) throw new Error('sidecar mode needs options.cache, the client of the app instance\'s sidecar');
    this.mode = options.mode;
    this.store = options.store;
    this.cache = options.mode === 'sidecar' ? options.cache : undefined;
    this.maxChars = options.maxChars;
    this.deadlineMs = options.cacheDeadlineMs ?? 3_000;
  }

  /** A new conversation. In sidecar mode it is cached at once (empty), so its first message is appended, not loaded. */
  async startConversation(userId: string, title = ''): Promise<string> {
    const sessionId = await this.store.createSession(userId, title);
    // Nobody can have written to a session that did not exist: an unconditional put is safe.
    await this.cache?.putSessionNodes({ sessionId, nodes: [] }, this.call()).catch(() => undefined);
    return sessionId;
  }

  /**
   * Writes a message (a reply, or a branch when its parent is an older
   * message): committed in PostgreSQL, then written through. `onCommitted`
   * runs between the two (the moment other devices may start to see it),
   * and the write-through waits for it: whoever watches for the message
   * knows of it before the sidecar can announce it.
   */
  async postMessage(message: NewMessage, hooks: PostHooks = {}): Promise<Message> {
    const stored = await this.store.insertMessage(message);
    await hooks.onCommitted?.(stored);
    if (this.cache !== undefined) {
      try {
        await this.cache.appendNode({ node: toNode(stored) }, this.call());
      } catch {
        // The append may or may not have landed: the cached session is suspect until invalidated.
        await this.invalidateAfterFailure(stored.sessionId);
      }
    }
    return stored;
  }

  /** Deletes a conversation: from PostgreSQL, then from every sidecar's cache. */
  async deleteConversation(sessionId: string): Promise<void> {
    await this.store.deleteSession(sessionId);
    if (this.cache !== undefined) await this.cache.invalidateSession({ sessionId }, this.call()).catch(() => this.invalidateAfterFailure(sessionId));
  }

  /**
   * The prompt context for the conversation ending at `headId`: built in
   * this process when the near cache holds what it needs (synchronously: no
   * call, no promise to wait behind other requests'), else through the
   * sidecar, else from PostgreSQL.
   */
  buildContext(sessionId: string, headId: string): Promise<BuiltContext> {
    const started = performance.now();
    const local = this.fromNearCache(sessionId, headId);
    if (local !== undefined) return Promise.resolve({ ...local, buildMs: performance.now() - started });
    return this.build(sessionId, headId).then((built) => ({ ...built, buildMs: performance.now() - started }));
  }

  /**
   * Every message of a conversation, for another device catching up: from
   * the cache when it holds the session, else from PostgreSQL. No fill
   * lease is taken: a device reading along must not make the writer's next
   * context wait for its fill. The read goes to the sidecar itself, never
   * to the near cache (`call`): the device has just opened its Watch stream
   * there, and what it missed before must be in what it reads now — the
   * sidecar's copy holds every change it heard of before the stream began,
   * while the near cache follows a stream of its own and may be a moment
   * behind.
   */
  async conversationMessages(sessionId: string): Promise<Message[]> {
    if (this.cache !== undefined && !this.repairOverflow && !this.pendingRepairs.has(sessionId)) {
      const read = await this.cache.call('getSessionNodes', { sessionId }, this.call()).catch(() => undefined);
      if (read?.found && !read.info?.degraded) return read.nodes.map(fromNode);
    }
    return this.store.loadSession(sessionId, 'sync-read');
  }

  stats(): ChatAppStats {
    const loads = this.cache?.loadStats();
    return {
      ...this.counters,
      fills: loads?.filled ?? 0,
      staleFills: loads?.staleFills ?? 0,
      fallbacks: { ...this.counters.fallbacks },
      misses: { ...this.counters.misses },
      pendingRepairs: this.pendingRepairs.size,
    };
  }

  /** Resolves when no session is being filled in the background (or after `timeoutMs`, false). */
  fillsSettled(timeoutMs = 10_000): Promise<boolean> {
    if (this.filling.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.fillWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /** Resolves when every failed write-through is repaired (or after `timeoutMs`, false). */
  async repaired(timeoutMs = 10_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.pendingRepairs.size > 0) {
      if (Date.now() > deadline) return false;
      await this.repairNow();
      if (this.pendingRepairs.size > 0) await new Promise((resolve) => setTimeout(resolve, REPAIR_INTERVAL_MS));
    }
    return true;
  }

  /** Stops the repair timer; the store and the client belong to the caller. */
  close(): void {
    this.closed = true;
    clearTimeout(this.repairTimer);
  }

  /** The context the near cache builds, when it can and the path it gives is whole (else the build below repairs it). */
  private fromNearCache(sessionId: string, headId: string): UntimedContext | undefined {
    if (this.cache?.nearCache === undefined || this.repairOverflow || this.pendingRepairs.has(sessionId)) return undefined;
    const built = this.cache.nearCache.buildContext(this.contextRequest(sessionId, headId));
    if (built === undefined) return undefined;
    const context = fromResponse(built);
    if (!isWholePath(context, headId)) return undefined;
    this.counters.contexts++;
    this.counters.hits++;
    return { ...context, source: 'sidecar', hit: true, nearCache: true };
  }

  private contextRequest(sessionId: string, headId: string) {
    return { sessionId, headNodeId: headId, includeRefs: true, maxChars: this.maxChars };
  }

  private async build(sessionId: string, headId: string): Promise<UntimedContext> {
    this.counters.contexts++;
    if (this.cache === undefined) return { ...(await this.fromPostgres(sessionId, headId)), source: 'postgres', hit: false };
    if (this.repairOverflow || this.pendingRepairs.has(sessionId)) return this.fallback('unrepaired', sessionId, headId);
    return this.throughSidecar(this.cache, sessionId, headId);
  }

  /**
   * One BuildContext, without loading anything: a hit is answered from it.
   * A miss (a session the cache lacks, a reference it cannot place, a path
   * with a gap) is answered from PostgreSQL at once — what direct mode does,
   * no slower — while the cache is filled in the background, under fill
   * leases (one loader per session across all sidecars): the user's next
   * turn, seconds later, is a hit. A turn never waits for a fill.
   */
  private async throughSidecar(cache: ContextCacheClient, sessionId: string, headId: string): Promise<UntimedContext> {
    let built: NearContextResponse;
    try {
      built = await cache.buildContext(this.contextRequest(sessionId, headId), this.call());
    } catch (error) {
      // The head is not in the cached session: it missed a write-through. Filled again in the background.
      if (error instanceof ContextCacheError && error.code === Status.NOT_FOUND) return this.miss('gap', sessionId, headId, [], [sessionId]);
      return this.fallback('unavailable', sessionId, headId);
    }
    // Redis is away: this sidecar's copy may lack what was written through other sidecars.
    if (built.degraded) return this.fallback('degraded', sessionId, headId);
    const missing = built.sessionFound ? built.missingSessionIds : [sessionId, ...built.missingSessionIds];
    if (missing.length > 0) return this.miss('loaded', sessionId, headId, missing, []);
    // References the cache cannot place: sessions it never held (or whose short-ID index it lost). PostgreSQL knows their sessions.
    if (built.unresolvedShortIds.length > 0) {
      const owners = await this.store.sessionsOfShortIds(built.unresolvedShortIds);
      if (owners.size > 0) return this.miss('unplaced-reference', sessionId, headId, [], [...new Set(owners.values())]);
    }
    const context = fromResponse(built);
    if (!isWholePath(context, headId)) return this.miss('gap', sessionId, headId, [], [sessionId]);
    this.counters.hits++;
    return { ...context, source: 'sidecar', hit: true, nearCache: built.fromNearCache === true };
  }

  /** A miss: the context from PostgreSQL now; `load` filled and `refill` dropped and filled again, in the background. */
  private async miss(reason: MissReason, sessionId: string, headId: string, load: string[], refill: string[]): Promise<UntimedContext> {
    this.counters.misses[reason]++;
    if (reason === 'gap') this.counters.repairs++;
    for (const id of load) this.fillInBackground(id, false);
    for (const id of refill) this.fillInBackground(id, true);
    return { ...(await this.fromPostgres(sessionId, headId)), source: 'postgres', hit: false };
  }

  /**
   * Loads a session from PostgreSQL into the cache (`replace`: dropping the
   * cached copy first), off the turn's path: each session once at a time,
   * at most MAX_BACKGROUND_FILLS at once (past them a miss only answers
   * from PostgreSQL; the next miss tries again). A failure is left alone
   * for the same reason.
   */
  private fillInBackground(sessionId: string, replace: boolean): void {
    const cache = this.cache;
    if (cache === undefined || this.closed || this.filling.has(sessionId) || this.filling.size >= MAX_BACKGROUND_FILLS) return;
    this.filling.add(sessionId);
    const fill = async () => {
      if (replace) await cache.invalidateSession({ sessionId }, this.call());
      // The turn goes on meanwhile: its answer's append refuses a fill that loaded before it; the next try holds it.
      await cache.getOrLoadSession(sessionId, async () => (await this.store.loadSession(sessionId)).map(toNode), { deadline: this.deadlineMs, staleRetries: 2 });
    };
    void fill()
      .catch(() => (this.counters.failedFills++))
      .finally(() => {
        this.filling.delete(sessionId);
        if (this.filling.size === 0) for (const resolve of this.fillWaiters.splice(0)) resolve();
      });
  }

  private async fallback(reason: FallbackReason, sessionId: string, headId: string): Promise<UntimedContext> {
    this.counters.fallbacks[reason]++;
    return { ...(await this.fromPostgres(sessionId, headId)), source: 'postgres', hit: false, fallback: reason };
  }

  /** The context from PostgreSQL: the path in one recursive query, the references in one more. */
  private async fromPostgres(sessionId: string, headId: string): Promise<PromptContext> {
    const path = await this.store.path(sessionId, headId);
    const found = new Map((await this.store.messagesByShortIds(referencedShortIds(path))).map((message) => [message.shortId, message]));
    return selectWithinBudget(path, orderReferences(path, found), this.maxChars);
  }

  /**
   * A write-through failed: the session is invalidated before the write
   * returns, retried while the sidecar comes back (a restart takes about a
   * second), so no other instance reads the stale copy; past
   * REPAIR_WAIT_MS it is left to the background repair, and this instance
   * reads the session from PostgreSQL until then.
   */
  private async invalidateAfterFailure(sessionId: string): Promise<void> {
    this.counters.writeThroughFailures++;
    const deadline = Date.now() + REPAIR_WAIT_MS;
    for (let backoff = 50; Date.now() < deadline; backoff = Math.min(backoff * 2, 500)) {
      try {
        await this.cache!.invalidateSession({ sessionId }, { deadline: Math.max(1, Math.min(this.deadlineMs, deadline - Date.now())) });
        return;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, backoff));
      }
    }
    this.needsRepair(sessionId);
  }

  private needsRepair(sessionId: string): void {
    this.counters.unrepairedWrites++;
    if (this.pendingRepairs.size >= MAX_PENDING_REPAIRS) this.repairOverflow = true;
    else this.pendingRepairs.add(sessionId);
    this.scheduleRepair();
  }

  private scheduleRepair(): void {
    if (this.closed || this.repairTimer !== undefined) return;
    this.repairTimer = setTimeout(() => {
      this.repairTimer = undefined;
      void this.repairNow().then(() => {
        if (this.pendingRepairs.size > 0) this.scheduleRepair();
      });
    }, REPAIR_INTERVAL_MS);
    this.repairTimer.unref();
  }

  /** Invalidates every session with a failed write-through; those the sidecar does not answer for stay pending. */
  private async repairNow(): Promise<void> {
    if (this.cache === undefined || this.repairing) return;
    this.repairing = true;
    try {
      const cache = this.cache;
      await Promise.all(
        [...this.pendingRepairs].map((sessionId) =>
          cache.invalidateSession({ sessionId }, this.call()).then(
            () => this.pendingRepairs.delete(sessionId),
            () => undefined,
          ),
        ),
      );
    } finally {
      this.repairing = false;
    }
  }

  private call() {
    return { deadline: this.deadlineMs };
  }
}

function fromResponse(built: BuildContextResponse): PromptContext {
  const references: Message[] = [];
  const conversation: Message[] = [];
  for (const item of built.nodes) {
    if (item.node === undefined) continue;
    const isReference = item.reason === InclusionReason.INCLUSION_REASON_REFERENCE || item.reason === InclusionReason.INCLUSION_REASON_EXTRA_REF;
    (isReference ? references : conversation).push(fromNode(item.node));
  }
  return { references, conversation, droppedNodes: built.droppedNodes, totalChars: built.totalChars };
}
