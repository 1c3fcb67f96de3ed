/**
 * In-memory implementations of the core's ports (`src/cache/ports.ts`,
 * `src/context/ports.ts`) for unit tests: no Redis, no gRPC, nothing global.
 * In the spirit of bentocache's ChaosCache, every port can be told to fail
 * or to hold a call until the test lets it go.
 *
 * The model:
 *  - `FakeRedis` is the shared data (entries, sessions, short IDs, fill
 *    leases, tag stamps) and its clock, with the semantics of the Lua
 *    scripts in `src/redis/scripts/`: versions are the clock in µs bumped past
 *    the key's previous version, every write revokes the subject's fill lease
 *    and publishes its event, a fill under a lease that no longer holds is
 *    refused. One `FakeRedis` can back several sidecars.
 *  - `FakeShared` is one sidecar's view of it (`SharedTier`): its own
 *    `connected` flag, its own bus, and its own chaos switches on each store
 *    (a sidecar's link fails, not Redis itself).
 */
import { randomBytes } from 'node:crypto';
import { EntryCache } from '../../src/cache/entries';
import { EventHub } from '../../src/cache/event-hub';
import { L1Cache } from '../../src/cache/l1';
import type { EntryStore, EntryWrite, EntryWriteOutcome, EventBus, LeaseHold, LeaseStore, SharedTier } from '../../src/cache/ports';
import { PendingInvalidations } from '../../src/cache/pending';
import { Tiers } from '../../src/cache/tiers';
import type { SessionL2, StoredAppend, StoredSession, TokenCounter } from '../../src/context/ports';
import { SessionStore } from '../../src/context/sessions';
import { unavailable } from '../../src/errors';
import { createLogger } from '../../src/log';
import type { Entry } from '../../src/model/entry';
import type { CacheEvent, EventEnvelope, RemoteEnvelope, RemoteEvent } from '../../src/model/events';
import type { NodeRecord } from '../../src/model/node';
import type { Subject } from '../../src/model/subject';
import type { TokenizerName } from '../../src/model/tokenizer';

/** The origin of events made up by tests as "another sidecar's". */
export const PEER = 'sidecar-peer';

/** An envelope as another sidecar's write would arrive on the bus. */
export function fromPeer(event: RemoteEvent, origin = PEER): RemoteEnvelope {
  return { event, origin, time: Date.now() };
}

/** A node record for tests: short ID `<session>-<n>`, parent the previous node. */
export function nodeRecord(sessionId: string, n: number, extra: Partial<NodeRecord> = {}): NodeRecord {
  return {
    id: `${sessionId}/n${n}`,
    shortId: `${sessionId}-${n}`,
    sessionId,
    parentId: n > 0 ? `${sessionId}/n${n - 1}` : '',
    role: n % 2 === 0 ? 1 : 2,
    content: `message ${n} of ${sessionId}`,
    createdAt: Date.UTC(2026, 0, 1) + n * 1000,
    metadata: {},
    refs: [],
    ...extra,
  };
}

/** `count` nodes of one session, in order. */
export function nodeRecords(sessionId: string, count: number): NodeRecord[] {
  return Array.from({ length: count }, (_, n) => nodeRecord(sessionId, n));
}

// ---------------------------------------------------------------------------
// Chaos: failures and holds on demand.

/** A call held at a gate: `reached` resolves once the call is waiting there. */
export interface Hold {
  /** Resolves when the held call has arrived (no sleeping needed to know it is in flight). */
  readonly reached: Promise<void>;
  /** Lets the call go on (with the answer it computed, for a `reply` hold). */
  release(): void;
  /** Makes the held call reject instead (a plain Error by default, like a Redis failure). */
  fail(error?: Error): void;
}

/**
 * Where a hold stops a call: `request` before it reaches Redis (it then
 * sees the state at release), `reply` after Redis answered (the answer is
 * the state at call time, arriving late).
 */
export type HoldPhase = 'request' | 'reply';

class Gate implements Hold {
  readonly reached: Promise<void>;
  private arrive!: () => void;
  private readonly outcome: Promise<void>;
  private resolveOutcome!: () => void;
  private rejectOutcome!: (error: Error) => void;

  constructor(private readonly makeError: (message: string) => Error) {
    this.reached = new Promise((resolve) => (this.arrive = resolve));
    this.outcome = new Promise((resolve, reject) => {
      this.resolveOutcome = resolve;
      this.rejectOutcome = reject;
    });
    // A hold that is failed before its call arrives must not be an unhandled rejection.
    this.outcome.catch(() => undefined);
  }

  release(): void {
    this.resolveOutcome();
  }

  fail(error?: Error): void {
    this.rejectOutcome(error ?? this.makeError('fake redis: the held call failed'));
  }

  wait(): Promise<void> {
    this.arrive();
    return this.outcome;
  }
}

/**
 * The fault switch every fake store carries. Calls reject (with a plain
 * Error unless the port says otherwise) while the view is disconnected,
 * while `failAlways` is on, or for the next `failNext(n)` calls; a
 * `holdNext()` stops the next matching call at a gate the test opens.
 */
export class Chaos {
  /** Every call, by operation name, in order (failed ones included). */
  readonly calls: string[] = [];
  private failuresLeft = 0;
  private failing = false;
  private readonly holds: { gate: Gate; phase: HoldPhase; operation: string | undefined }[] = [];

  constructor(
    private readonly name: string,
    private readonly isUp: () => boolean = () => true,
    private readonly makeError: (message: string) => Error = (message) => new Error(message),
  ) {}

  /** The next `n` calls reject. */
  failNext(n = 1): this {
    this.failuresLeft += n;
    return this;
  }

  /** Every call rejects until turned off. */
  failAlways(on = true): this {
    this.failing = on;
    return this;
  }

  /** Clears failures (holds already taken stay until released). */
  heal(): this {
    this.failing = false;
    this.failuresLeft = 0;
    return this;
  }

  /** Holds the next call (of `operation`, when given) at a gate. */
  holdNext(options: { phase?: HoldPhase; operation?: string } = {}): Hold {
    const gate = new Gate(this.makeError);
    this.holds.push({ gate, phase: options.phase ?? 'reply', operation: options.operation });
    return gate;
  }

  /** How many calls were made (of `operation`, when given). */
  callCount(operation?: string): number {
    return operation === undefined ? this.calls.length : this.calls.filter((call) => call === operation).length;
  }

  protected async run<T>(operation: string, work: () => T): Promise<T> {
    this.calls.push(operation);
    if (!this.isUp()) throw this.makeError(`${this.name}: not connected (${operation})`);
    if (this.failing || this.failuresLeft > 0) {
      if (!this.failing) this.failuresLeft--;
      throw this.makeError(`${this.name}: injected failure (${operation})`);
    }
    const index = this.holds.findIndex((hold) => hold.operation === undefined || hold.operation === operation);
    if (index < 0) return work();
    const { gate, phase } = this.holds.splice(index, 1)[0]!;
    if (phase === 'request') {
      await gate.wait();
      return work();
    }
    let result: { value: T } | { error: unknown };
    try {
      result = { value: work() };
    } catch (error) {
      result = { error };
    }
    await gate.wait();
    if ('error' in result) throw result.error;
    return result.value;
  }
}

// ---------------------------------------------------------------------------
// The shared data.

/** Redis's clock: the host's, shifted by `offsetMs` (Redis may run ahead of this host, or behind). */
export class FakeClock {
  offsetMs = 0;

  nowMs(): number {
    return Date.now() + this.offsetMs;
  }

  nowUs(): number {
    return this.nowMs() * 1000;
  }
}

interface StoredEntry {
  value: Buffer;
  version: number;
  tags: readonly string[];
  expiresAt: number;
}

interface SessionRecord {
  nodes: NodeRecord[];
  version: number;
  expiresAt: number;
}

const subjectKey = (subject: Subject): string => `${subject.kind}:${subject.id}`;

/** `<mutex token>.<grant time>` → the mutex token (as `lease_base` in scripts/lib.ts). */
const leaseBase = (token: string): string => /^(.+)\.\d+$/.exec(token)?.[1] ?? token;
const leaseGrantedAt = (token: string): number => Number(/\.(\d+)$/.exec(token)?.[1] ?? '0');

/**
 * The data one Redis holds, shared by every sidecar view on it, with the
 * semantics of the scripts. Tests may also reach in (`seedEntry`,
 * `seedSession`) to play a writer nobody announced.
 */
export class FakeRedis {
  readonly clock = new FakeClock();
  readonly entries = new Map<string, StoredEntry>();
  readonly sessions = new Map<string, SessionRecord>();
  readonly shortIds = new Map<string, { sessionId: string; expiresAt: number }>();
  /** Per session, the last node appended (session-append.ts keeps it for the sidecars that hear of it). */
  readonly lastAppended = new Map<string, { version: number; node: NodeRecord }>();
  /** Fill leases: subject → mutex token and expiry (Redis clock, ms). */
  readonly leases = new Map<string, { token: string; expiresAt: number }>();
  /** When each tag was last invalidated (Redis clock, µs). */
  readonly tagStamps = new Map<string, number>();
  /** Everything published on the channel, in order. */
  readonly published: RemoteEnvelope[] = [];
  private readonly views = new Set<FakeShared>();

  /** A sidecar's view of this Redis. */
  sidecar(origin: string): FakeShared {
    return new FakeShared(this, origin);
  }

  /** @internal Called by FakeShared. */
  attach(view: FakeShared): void {
    this.views.add(view);
  }

  /** The version of a write: the clock in µs, bumped past the key's previous version (`next_version`). */
  nextVersion(previous = 0): number {
    const now = this.clock.nowUs();
    return previous >= now ? previous + 1 : now;
  }

  /** PUBLISH: every other subscribed sidecar receives it at once (the writer's own echo is dropped). */
  publish(origin: string, event: RemoteEvent): void {
    const envelope: RemoteEnvelope = { event, origin, time: this.clock.nowMs() };
    this.published.push(envelope);
    for (const view of this.views) if (view.origin !== origin && view.bus.subscribed) view.bus.deliver([envelope]);
  }

  entry(key: string): StoredEntry | undefined {
    const stored = this.entries.get(key);
    if (stored === undefined) return undefined;
    if (stored.expiresAt !== 0 && stored.expiresAt <= this.clock.nowMs()) {
      this.entries.delete(key);
      return undefined;
    }
    return stored;
  }

  session(sessionId: string): SessionRecord | undefined {
    const stored = this.sessions.get(sessionId);
    if (stored === undefined) return undefined;
    if (stored.expiresAt <= this.clock.nowMs()) {
      this.sessions.delete(sessionId);
      return undefined;
    }
    return stored;
  }

  /** Writes an entry behind every sidecar's back: no event, no lease revocation. Returns its version. */
  seedEntry(key: string, value: string | Buffer, options: { tags?: readonly string[]; ttlMs?: number; version?: number } = {}): number {
    const version = options.version ?? this.nextVersion(this.entry(key)?.version);
    this.entries.set(key, { value: Buffer.from(value), version, tags: options.tags ?? [], expiresAt: this.clock.nowMs() + (options.ttlMs ?? 60_000) });
    return version;
  }

  /** Writes a session behind every sidecar's back. Returns its version. */
  seedSession(sessionId: string, nodes: readonly NodeRecord[], options: { ttlMs?: number; version?: number } = {}): number {
    const version = options.version ?? this.nextVersion(this.session(sessionId)?.version);
    this.sessions.set(sessionId, { nodes: structuredClone([...nodes]), version, expiresAt: this.clock.nowMs() + (options.ttlMs ?? 60_000) });
    return version;
  }

  /** Whether `token` (as the core hands it out: `<mutex token>.<grant time>`) still holds the subject's lease. */
  leaseHolds(subject: Subject, token: string): boolean {
    const held = this.leases.get(subjectKey(subject));
    return held !== undefined && held.expiresAt > this.clock.nowMs() && held.token === leaseBase(token);
  }

  revokeLease(subject: Subject): void {
    this.leases.delete(subjectKey(subject));
  }

  /** Redis restarted empty (or FLUSHALL): everything is gone, and every sidecar's detector notices. */
  loseData(): void {
    this.entries.clear();
    this.sessions.clear();
    this.shortIds.clear();
    this.leases.clear();
    this.tagStamps.clear();
    for (const view of this.views) view.noticeDataLoss();
  }

  /** @internal The fill-lease checks of entry-set.ts: held, and granted after every stamp of the fill's tags. */
  fillRefused(subject: Subject, token: string, tags: readonly string[]): boolean {
    if (!this.leaseHolds(subject, token)) return true;
    const grantedAt = leaseGrantedAt(token);
    if (tags.some((tag) => {
      const stamp = this.tagStamps.get(tag) ?? 0;
      return stamp > 0 && stamp >= grantedAt;
    })) {
      this.revokeLease(subject);
      return true;
    }
    return false;
  }
}

// ---------------------------------------------------------------------------
// One sidecar's view: the ports.

/** The Pub/Sub bus of one sidecar. Flip `subscribed`; `deliver` plays other sidecars' events; `subscribe` plays a (re)subscription. */
export class FakeBus implements EventBus {
  subscribed = false;
  private everSubscribed = false;
  private readonly eventListeners: ((envelopes: readonly RemoteEnvelope[]) => void)[] = [];
  private readonly subscribedListeners: ((restored: boolean) => void)[] = [];
  private readonly changeListeners: (() => void)[] = [];

  onEvents(listener: (envelopes: readonly RemoteEnvelope[]) => void): void {
    this.eventListeners.push(listener);
  }

  onSubscribed(listener: (restored: boolean) => void): void {
    this.subscribedListeners.push(listener);
  }

  onChange(listener: () => void): void {
    this.changeListeners.push(listener);
  }

  /** Subscribes and tells the listeners; `restored` defaults to "there was a subscription before", as the real bus reports it. */
  subscribe(restored = this.everSubscribed): void {
    this.everSubscribed = true;
    this.subscribed = true;
    for (const listener of this.subscribedListeners) listener(restored);
    for (const listener of this.changeListeners) listener();
  }

  /** The subscription dropped: events published from now on are lost for this sidecar. */
  unsubscribe(): void {
    this.subscribed = false;
    for (const listener of this.changeListeners) listener();
  }

  /** Events of other sidecars, as the bus hands them over (whatever `subscribed` says: the test decides). */
  deliver(envelopes: RemoteEnvelope | readonly RemoteEnvelope[]): void {
    const batch = Array.isArray(envelopes) ? (envelopes as readonly RemoteEnvelope[]) : [envelopes as RemoteEnvelope];
    for (const listener of this.eventListeners) listener(batch);
  }
}

/** Fill leases in a FakeRedis: one holder per subject, with a TTL. Rejects with E_UNAVAILABLE, as the port says. */
export class FakeLeaseStore extends Chaos implements LeaseStore {
  constructor(
    private readonly redis: FakeRedis,
    isUp: () => boolean,
  ) {
    super('fake redis leases', isUp, (message) => unavailable(message));
  }

  tryAcquire(subject: Subject, ttlMs: number): Promise<LeaseHold | undefined> {
    return this.run('tryAcquire', () => {
      const key = subjectKey(subject);
      const held = this.redis.leases.get(key);
      if (held !== undefined && held.expiresAt > this.redis.clock.nowMs()) return undefined;
      const token = randomBytes(12).toString('base64url');
      this.redis.leases.set(key, { token, expiresAt: this.redis.clock.nowMs() + ttlMs });
      return { token, expiresAt: Date.now() + ttlMs };
    });
  }

  release(subject: Subject, token: string): Promise<void> {
    return this.run('release', () => {
      const key = subjectKey(subject);
      if (this.redis.leases.get(key)?.token === token) this.redis.leases.delete(key);
    });
  }
}

/** Generic entries in a FakeRedis, with the semantics of entry-set / entry-delete / tags-invalidate. */
export class FakeEntryStore extends Chaos implements EntryStore {
  constructor(
    private readonly redis: FakeRedis,
    private readonly origin: string,
    isUp: () => boolean,
  ) {
    super('fake redis entries', isUp);
  }

  getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    return this.run('getMany', () =>
      keys.map((key) => {
        const stored = this.redis.entry(key);
        return stored === undefined ? undefined : { value: Buffer.from(stored.value), version: stored.version, tags: [...stored.tags], expiresAt: stored.expiresAt };
      }),
    );
  }

  set(key: string, value: Buffer, write: EntryWrite): Promise<EntryWriteOutcome> {
    return this.run('set', (): EntryWriteOutcome => {
      const subject: Subject = { kind: 'entry', id: key };
      if (write.leaseToken !== '' && this.redis.fillRefused(subject, write.leaseToken, write.tags)) return { status: 'stale-lease' };
      this.redis.revokeLease(subject);
      const current = this.redis.entry(key);
      if (write.ifAbsent && current !== undefined) return { status: 'exists', version: current.version };
      if (write.ifVersion !== 0 && current?.version !== write.ifVersion) return { status: 'version-mismatch', version: current?.version ?? 0 };
      const version = this.redis.nextVersion(current?.version);
      const expiresAt = this.redis.clock.nowMs() + write.ttlMs;
      this.redis.entries.set(key, { value: Buffer.from(value), version, tags: [...write.tags], expiresAt });
      this.redis.publish(this.origin, { kind: 'key', key, change: 'set', version, tags: [...write.tags] });
      return { status: 'written', version, expiresAt };
    });
  }

  delete(keys: readonly string[]): Promise<{ existed: number; versions: number[] }> {
    return this.run('delete', () => {
      let existed = 0;
      const versions = keys.map((key) => {
        const current = this.redis.entry(key);
        if (current !== undefined) existed++;
        this.redis.entries.delete(key);
        this.redis.revokeLease({ kind: 'entry', id: key });
        return this.redis.nextVersion(current?.version);
      });
      keys.forEach((key, index) => this.redis.publish(this.origin, { kind: 'key', key, change: 'deleted', version: versions[index]!, tags: [] }));
      return { existed, versions };
    });
  }

  invalidateTags(tags: readonly string[]): Promise<string[]> {
    return this.run('invalidateTags', () => {
      const removed: string[] = [];
      for (const [key] of this.redis.entries) {
        const stored = this.redis.entry(key);
        if (stored !== undefined && stored.tags.some((tag) => tags.includes(tag))) {
          this.redis.entries.delete(key);
          removed.push(key);
        }
      }
      const now = this.redis.clock.nowUs();
      for (const tag of tags) this.redis.tagStamps.set(tag, now);
      this.redis.publish(this.origin, { kind: 'tags', tags: [...tags], keys: removed });
      return removed;
    });
  }
}

/** Sessions and the short-ID index in a FakeRedis, with the semantics of the session scripts. */
export class FakeSessionL2 extends Chaos implements SessionL2 {
  constructor(
    private readonly redis: FakeRedis,
    private readonly origin: string,
    isUp: () => boolean,
  ) {
    super('fake redis sessions', isUp);
  }

  getMany(sessionIds: readonly string[]): Promise<(StoredSession | undefined)[]> {
    return this.run('getMany', () =>
      sessionIds.map((id) => {
        const stored = this.redis.session(id);
        return stored === undefined ? undefined : { nodes: structuredClone(stored.nodes), version: stored.version, expiresAt: stored.expiresAt };
      }),
    );
  }

  pickMany(sessionIds: readonly string[], shortIds: readonly ReadonlySet<string>[]): Promise<(StoredSession | undefined)[]> {
    return this.run('pickMany', () =>
      sessionIds.map((id, index) => {
        const stored = this.redis.session(id);
        const nodes = stored?.nodes.filter((node) => shortIds[index]!.has(node.shortId));
        return stored === undefined ? undefined : { nodes: structuredClone(nodes!), version: stored.version, expiresAt: stored.expiresAt };
      }),
    );
  }

  put(sessionId: string, nodes: readonly NodeRecord[], ttlMs: number, leaseToken: string): Promise<{ version: number; expiresAt: number } | 'stale'> {
    return this.run('put', () => {
      const subject: Subject = { kind: 'session', id: sessionId };
      if (leaseToken !== '' && !this.redis.leaseHolds(subject, leaseToken)) return 'stale' as const;
      const version = this.redis.nextVersion(this.redis.session(sessionId)?.version);
      const expiresAt = this.redis.clock.nowMs() + ttlMs;
      this.redis.revokeLease(subject);
      this.redis.sessions.set(sessionId, { nodes: structuredClone([...nodes]), version, expiresAt });
      this.redis.publish(this.origin, { kind: 'session', sessionId, change: 'filled', version });
      return { version, expiresAt };
    });
  }

  append(node: NodeRecord): Promise<StoredAppend> {
    return this.run('append', (): StoredAppend => {
      const { sessionId } = node;
      this.redis.revokeLease({ kind: 'session', id: sessionId });
      const current = this.redis.session(sessionId);
      const previousVersion = current?.version ?? 0;
      const version = this.redis.nextVersion(previousVersion);
      if (current !== undefined) {
        current.nodes.push(structuredClone(node));
        current.version = version;
      }
      // As session-append.ts: the node is kept under "last appended"; the event only names it.
      this.redis.lastAppended.set(sessionId, { version, node: structuredClone(node) });
      this.redis.publish(this.origin, { kind: 'appended', sessionId, nodeId: node.id, sessionVersion: version, previousVersion });
      return { appended: current !== undefined, version, previousVersion, expiresAt: current?.expiresAt ?? 0 };
    });
  }

  appendedNode(sessionId: string, version: number): Promise<NodeRecord | undefined> {
    return this.run('appendedNode', () => {
      const last = this.redis.lastAppended.get(sessionId);
      return last?.version === version ? structuredClone(last.node) : undefined;
    });
  }

  invalidate(sessionId: string): Promise<{ existed: boolean; version: number }> {
    return this.run('invalidate', () => {
      const current = this.redis.session(sessionId);
      this.redis.sessions.delete(sessionId);
      this.redis.revokeLease({ kind: 'session', id: sessionId });
      const version = this.redis.nextVersion(current?.version);
      this.redis.publish(this.origin, { kind: 'session', sessionId, change: 'invalidated', version });
      return { existed: current !== undefined, version };
    });
  }

  indexShortIds(nodes: readonly NodeRecord[], ttlMs: number): Promise<void> {
    return this.run('indexShortIds', () => {
      for (const node of nodes) {
        if (node.shortId !== '') this.redis.shortIds.set(node.shortId, { sessionId: node.sessionId, expiresAt: this.redis.clock.nowMs() + ttlMs });
      }
    });
  }

  storeTokenCounts(sessionId: string, version: number, nodes: readonly NodeRecord[]): Promise<boolean> {
    return this.run('storeTokenCounts', () => {
      const current = this.redis.session(sessionId);
      if (current?.version !== version) return false;
      current.nodes = structuredClone([...nodes]);
      return true;
    });
  }

  lookupShortIds(shortIds: readonly string[]): Promise<(string | undefined)[]> {
    return this.run('lookupShortIds', () =>
      shortIds.map((id) => {
        const indexed = this.redis.shortIds.get(id);
        return indexed !== undefined && indexed.expiresAt > this.redis.clock.nowMs() ? indexed.sessionId : undefined;
      }),
    );
  }
}

/** The fake tokenizers' counts: a word per token under o200k_base, two under cl100k_base (so that counts of the two differ). */
export function fakeTokens(tokenizer: TokenizerName, text: string): number {
  const words = text.split(/\s+/).filter((word) => word !== '').length;
  return tokenizer === 'o200k_base' ? words : 2 * words;
}

/** A token counter for unit tests: counts as fakeTokens, records what it was asked, and fails or holds on demand. */
export class FakeTokenCounter extends Chaos implements TokenCounter {
  /** Every text counted, with its tokenizer, in order. */
  readonly counted: { tokenizer: TokenizerName; text: string }[] = [];

  constructor() {
    super('fake token counter');
  }

  count(tokenizer: TokenizerName, texts: readonly string[]): Promise<number[]> {
    return this.run('count', () =>
      texts.map((text) => {
        this.counted.push({ tokenizer, text });
        return fakeTokens(tokenizer, text);
      }),
    );
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Redis's TIME command, with a fault switch like the stores. */
export class TimeCommand extends Chaos {
  constructor(
    private readonly clock: FakeClock,
    isUp: () => boolean,
  ) {
    super('fake redis TIME', isUp);
  }

  now(): Promise<number> {
    return this.run('time', () => this.clock.nowUs());
  }
}

/**
 * One sidecar's shared tier: `connected` (flip it), its bus, leases, stores
 * and Redis's clock (`time` fails or holds TIME like any other call).
 */
export class FakeShared implements SharedTier {
  private connectedNow = true;
  private downSinceMs: number | undefined;
  private readonly connectedListeners: (() => void)[] = [];
  private readonly disconnectedListeners: (() => void)[] = [];
  /** Namespace flushes this view ran (the pending set overflowed). */
  flushes = 0;
  readonly bus = new FakeBus();
  readonly leases: FakeLeaseStore;
  readonly entries: FakeEntryStore;
  readonly sessions: FakeSessionL2;
  /** The TIME command: fail or hold it like a store. */
  readonly time: TimeCommand;
  private readonly dataLostListeners: (() => void)[] = [];

  constructor(
    readonly redis: FakeRedis = new FakeRedis(),
    readonly origin = 'sidecar-a',
  ) {
    const isUp = () => this.connected;
    this.leases = new FakeLeaseStore(redis, isUp);
    this.entries = new FakeEntryStore(redis, origin, isUp);
    this.sessions = new FakeSessionL2(redis, origin, isUp);
    this.time = new TimeCommand(redis.clock, isUp);
    redis.attach(this);
  }

  /** Flip to take Redis away from this sidecar (or give it back: listeners of onConnected hear of it). */
  get connected(): boolean {
    return this.connectedNow;
  }

  set connected(value: boolean) {
    if (value === this.connectedNow) return;
    this.connectedNow = value;
    this.downSinceMs = value ? undefined : Date.now();
    for (const listener of value ? this.connectedListeners : this.disconnectedListeners) listener();
  }

  get downSince(): number | undefined {
    return this.downSinceMs;
  }

  onConnected(listener: () => void): void {
    this.connectedListeners.push(listener);
  }

  onDisconnected(listener: () => void): void {
    this.disconnectedListeners.push(listener);
  }

  /** Drops every entry and session (and their leases) and tells the other sidecars to resync. */
  async flushNamespace(): Promise<void> {
    if (!this.connectedNow) throw new Error('Connection is closed.');
    this.flushes++;
    this.redis.entries.clear();
    this.redis.sessions.clear();
    this.redis.shortIds.clear();
    this.redis.leases.clear();
    this.redis.publish(this.origin, { kind: 'resync', reason: 'namespace-flushed' });
  }

  clockUs(): Promise<number> {
    return this.time.now();
  }

  onDataLost(listener: () => void): void {
    this.dataLostListeners.push(listener);
  }

  /** Redis lost its data (for every sidecar on it). */
  loseData(): void {
    this.redis.loseData();
  }

  /** @internal Called by FakeRedis.loseData. */
  noticeDataLoss(): void {
    for (const listener of this.dataLostListeners) listener();
  }

  /** Fails (or heals) every call of this view: the stores, leases and TIME. */
  failAlways(on = true): void {
    for (const chaos of [this.entries, this.sessions, this.leases, this.time]) chaos.failAlways(on);
  }
}

// ---------------------------------------------------------------------------
// The core on fakes.

export interface CoreOnFakes {
  l1: L1Cache;
  hub: EventHub;
  tiers: Tiers;
  entries: EntryCache;
  sessions: SessionStore;
  tokenCounter: FakeTokenCounter;
  origin: string;
  /** Everything emitted on the hub (this sidecar's announcements and other sidecars' events), in order. */
  events: EventEnvelope[];
  /** The events emitted on the hub, of one kind. */
  eventsOf<K extends CacheEvent['kind']>(kind: K): Extract<CacheEvent, { kind: K }>[];
  shared: FakeShared | undefined;
}

export interface CoreOptions {
  /** With a shared tier (a FakeRedis of its own, or the one given: several sidecars on one Redis). */
  redis: boolean | FakeRedis;
  origin?: string;
  /** Subscribe the bus at start (default true): the core starts coherent. */
  subscribed?: boolean;
  l1MaxBytes?: number;
  defaultTtlMs?: number;
  /** CONTEXT_CACHE_DEGRADED_MAX_AGE (default: no bound). */
  degradedMaxAgeMs?: number;
  /** Bounds of the pending-invalidation set (default: the sidecar's). */
  pending?: { maxCount: number; maxBytes?: number };
}

export function coreOnFakes(options: CoreOptions & { redis: true | FakeRedis }): CoreOnFakes & { shared: FakeShared };
export function coreOnFakes(options: CoreOptions & { redis: false }): CoreOnFakes & { shared: undefined };
export function coreOnFakes(options: CoreOptions): CoreOnFakes;
export function coreOnFakes(options: CoreOptions): CoreOnFakes {
  const origin = options.origin ?? 'sidecar-a';
  const shared = options.redis === false ? undefined : new FakeShared(options.redis === true ? new FakeRedis() : options.redis, origin);
  const l1 = new L1Cache(options.l1MaxBytes ?? 64 * 1024 * 1024);
  const hub = new EventHub();
  hub.onListenerError = (error) => {
    throw error;
  };
  const events: EventEnvelope[] = [];
  hub.subscribe((envelope) => events.push(envelope));
  const tiers = new Tiers(l1, shared, hub, origin, createLogger('silent'), {
    degradedMaxAgeMs: options.degradedMaxAgeMs ?? Number.POSITIVE_INFINITY,
    pending: options.pending && new PendingInvalidations(options.pending.maxCount, options.pending.maxBytes),
  });
  const entries = new EntryCache(tiers, shared?.entries);
  const tokenCounter = new FakeTokenCounter();
  const sessions = new SessionStore(tiers, shared?.sessions, options.defaultTtlMs ?? 60_000, tokenCounter);
  if (shared !== undefined && options.subscribed !== false) shared.bus.subscribe(false);
  return {
    l1,
    hub,
    tiers,
    entries,
    sessions,
    tokenCounter,
    origin,
    events,
    eventsOf: <K extends CacheEvent['kind']>(kind: K) =>
      events.map((envelope) => envelope.event).filter((event): event is Extract<CacheEvent, { kind: K }> => event.kind === kind),
    shared,
  };
}

/** A plain write's options (60 s TTL, no tags, no conditions), with overrides. */
export function plainWrite(overrides: Partial<EntryWrite> = {}): EntryWrite {
  return { ttlMs: 60_000, tags: [], ifVersion: 0, ifAbsent: false, leaseToken: '', ...overrides };
}

/** A lease request: a 10 s lease, waiting up to `waitMs` for another caller's fill. */
export function leaseRequest(waitMs = 5_000, ttlMs = 10_000): { ttlMs: number; waitUntil: number; callDeadline: number } {
  return { ttlMs, waitUntil: Date.now() + waitMs, callDeadline: Infinity };
}
