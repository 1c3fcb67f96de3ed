import { describe, expect, it } from 'vitest';
import { BuildContextRequest, BuildContextResponse, InclusionReason, KeyChange, Node, ResyncReason, SessionChange, type EntryInfo, type WatchResponse } from '../../src/gen/contextcache/v1/context_cache';
import { NearCache } from '../../src/client/near-cache';

/** The near cache's rules on their own: the messages of a Watch stream, and reads racing them. */

const info = (version: number, extra: Partial<EntryInfo> = {}): EntryInfo => ({
  version,
  expiresAt: new Date(Date.now() + 60_000),
  tags: [],
  source: 1,
  sizeBytes: 1,
  waitedForFill: false,
  degraded: false,
  ...extra,
});
const message = (event: WatchResponse['event'], position = 0): WatchResponse => ({ sequence: 0, time: undefined, originSidecarId: 's', resumeToken: { incarnation: 's', position }, event });
const started = (value: { resumed?: boolean; replayedEvents?: number; coherent?: boolean } = {}) =>
  message({ $case: 'started', value: { sidecarId: 's', subscribed: true, resumed: false, replayedEvents: 0, coherent: true, ...value } });
const keyEvent = (key: string, version: number, change = KeyChange.KEY_CHANGE_SET) => message({ $case: 'keyInvalidated', value: { key, change, version, tags: [] } });
const value = Buffer.from('v');

function liveCache(): NearCache {
  const near = new NearCache({ maxBytes: 1 << 20 });
  near.apply(started());
  expect(near.live).toBe(true);
  return near;
}

describe('the near cache', () => {
  it('serves nothing, and keeps nothing, until its stream has started on a coherent sidecar', () => {
    const near = new NearCache({ maxBytes: 1 << 20 });
    expect(near.installEntry('k', near.ticket(), value, info(1))).toBe(false);
    near.apply(started({ coherent: false }));
    expect(near.live).toBe(false);
    near.apply(message({ $case: 'coherenceChanged', value: { coherent: true } }));
    expect(near.live).toBe(true);
    expect(near.installEntry('k', near.ticket(), value, info(1))).toBe(true);
    expect(near.getEntry('k')?.value.toString()).toBe('v');
  });

  it('refuses an answer older than an invalidation that overtook it (a Get in flight racing a KeyInvalidated)', () => {
    const near = liveCache();
    const ticket = near.ticket();
    near.apply(keyEvent('k', 5));
    expect(near.installEntry('k', ticket, value, info(4))).toBe(false);
    // The new value itself (version 5) may be kept.
    expect(near.installEntry('k', near.ticket(), value, info(5))).toBe(true);
    // A deletion's tombstone version is above the deleted entry's: the entry goes, and stays out.
    near.apply(keyEvent('k', 6, KeyChange.KEY_CHANGE_DELETED));
    expect(near.has('k')).toBe(false);
    expect(near.installEntry('k', near.ticket(), value, info(5))).toBe(false);
  });

  it('keeps its copy when the event is for the version it holds (its own write-through), drops it for a later one', () => {
    const near = liveCache();
    near.installEntry('k', near.ticket(), value, info(7));
    near.apply(keyEvent('k', 7));
    expect(near.has('k')).toBe(true);
    near.apply(keyEvent('k', 8));
    expect(near.has('k')).toBe(false);
    expect(near.stats().invalidations).toBe(1);
  });

  it('refuses every read in flight across a tag invalidation, and drops what carries the tags', () => {
    const near = liveCache();
    near.installEntry('a', near.ticket(), value, info(1, { tags: ['t'] }));
    near.installEntry('b', near.ticket(), value, info(1, { tags: ['u'] }));
    const ticket = near.ticket();
    near.apply(message({ $case: 'tagsInvalidated', value: { tags: ['t'], keys: [] } }));
    expect(near.has('a')).toBe(false);
    expect(near.has('b')).toBe(true);
    expect(near.installEntry('c', ticket, value, info(1))).toBe(false);
  });

  it('never keeps a degraded answer', () => {
    const near = liveCache();
    expect(near.installEntry('k', near.ticket(), value, info(1, { degraded: true }))).toBe(false);
    expect(near.stats().refusedInstalls).toBe(1);
  });

  it('is flushed by a Resync and by the sidecar losing coherence; a read in flight across either keeps nothing', () => {
    const near = liveCache();
    near.installEntry('k', near.ticket(), value, info(1));
    const ticket = near.ticket();
    near.apply(message({ $case: 'resync', value: { reason: ResyncReason.RESYNC_REASON_SUBSCRIPTION_RESTORED } }));
    expect(near.has('k')).toBe(false);
    expect(near.installEntry('k', ticket, value, info(1))).toBe(false);
    near.installEntry('k', near.ticket(), value, info(1));
    near.apply(message({ $case: 'coherenceChanged', value: { coherent: false } }));
    expect(near.has('k')).toBe(false);
    expect(near.live).toBe(false);
    expect(near.stats().flushes).toBe(2);
  });

  it('keeps its contents while the stream is down without serving them; a resume applies the missed events before serving again', () => {
    const near = liveCache();
    near.installEntry('kept', near.ticket(), value, info(1));
    near.installEntry('changed', near.ticket(), value, info(1));
    const inFlight = near.ticket();
    near.streamDown();
    expect(near.live).toBe(false);
    expect(near.getEntry('kept')).toBeUndefined();
    expect(near.installEntry('other', inFlight, value, info(1))).toBe(false);
    near.apply(started({ resumed: true, replayedEvents: 2 }));
    expect(near.live).toBe(false);
    near.apply(keyEvent('changed', 2));
    expect(near.live).toBe(false);
    near.apply(keyEvent('unrelated', 2));
    expect(near.live).toBe(true);
    expect(near.getEntry('kept')?.fromNearCache).toBe(true);
    expect(near.getEntry('changed')).toBeUndefined();
  });

  it('is flushed by a stream that could not resume', () => {
    const near = liveCache();
    near.installEntry('k', near.ticket(), value, info(1));
    near.streamDown();
    near.apply(started({ resumed: false }));
    expect(near.live).toBe(true);
    expect(near.has('k')).toBe(false);
  });

  it('stays within its byte bound, counting evictions, and keeps exact-size copies of values', () => {
    const near = new NearCache({ maxBytes: 64 * 1024 });
    near.apply(started());
    const pool = Buffer.from('x'.repeat(8192));
    for (let i = 0; i < 100; i++) near.installEntry(`k${i}`, near.ticket(), pool.subarray(0, 1024), info(1));
    const stats = near.stats();
    expect(stats.bytes).toBeLessThanOrEqual(64 * 1024);
    expect(stats.evictions).toBeGreaterThan(0);
    const kept = near.getEntry('k99')!.value;
    expect(kept.buffer.byteLength).toBe(1024);
  });

  it('does not keep a context built while any session changed, nor an incomplete one', () => {
    const near = liveCache();
    const built = BuildContextResponse.fromPartial({ sessionFound: true, nodes: [{ node: Node.fromPartial({ id: 'n', sessionId: 's1', role: 2, content: 'x' }), reason: 1 }], totalChars: 1, sessionVersion: 1, source: 1 });
    const ticket = near.contextTicket();
    near.apply(message({ $case: 'sessionInvalidated', value: { sessionId: 'unrelated', change: 1, version: 9 } }));
    expect(near.installContext('r', ticket, built)).toBe(false);
    expect(near.installContext('r', near.contextTicket(), { ...built, droppedNodes: 1 })).toBe(false);
    expect(near.installContext('r', near.contextTicket(), { ...built, unresolvedShortIds: ['zz'] })).toBe(false);
    expect(near.installContext('r', near.contextTicket(), built)).toBe(true);
    expect(near.getContext('r')?.fromNearCache).toBe(true);
    near.apply(message({ $case: 'nodeAppended', value: { node: Node.fromPartial({ ...built.nodes[0]!.node, id: 'n2' }), sessionVersion: 2, previousSessionVersion: 1 } }));
    expect(near.getContext('r')).toBeUndefined();
  });

  it('refuses a bound that makes no sense, with a sentence', () => {
    expect(() => new NearCache({ maxBytes: 0 })).toThrow(/nearCache.maxBytes is 0/);
    expect(() => new NearCache({ maxBytes: 1 << 20, followSessions: 'all' as never })).toThrow(/followSessions is all; use 'read' or 'written'/);
  });
});

describe('sessions held by the near cache', () => {
  const node = (sessionId: string, n: number, extra: Partial<Node> = {}) =>
    Node.fromPartial({ id: `${sessionId}/${n}`, shortId: `${sessionId}-${n}`, sessionId, parentId: n === 0 ? '' : `${sessionId}/${n - 1}`, role: 2, content: `message ${n}`, createdAt: new Date(1_000 + n), ...extra });
  const sessionOf = (sessionId: string, count: number, version: number) => ({ found: true, nodes: Array.from({ length: count }, (_, n) => node(sessionId, n)), info: info(version), lease: undefined });
  const appendedEvent = (added: Node, previous: number, version: number) => message({ $case: 'nodeAppended', value: { node: added, sessionVersion: version, previousSessionVersion: previous } });
  const request = (sessionId: string, extra: Partial<BuildContextRequest> = {}) => BuildContextRequest.fromPartial({ sessionId, includeRefs: true, ...extra });
  const ids = (built: BuildContextResponse | undefined) => built?.nodes.map((item) => item.node!.id);

  function holding(...sessions: [string, number, number][]): { near: NearCache; wanted: string[] } {
    const near = liveCache();
    const wanted: string[] = [];
    near.wantSession = (sessionId) => wanted.push(sessionId);
    for (const [sessionId, count, version] of sessions) expect(near.installSession(sessionId, near.ticket(), sessionOf(sessionId, count, version))).toBe(true);
    return { near, wanted };
  }

  it('adds an append to the version it holds in place, ignores one it already has, and drops its copy (asking for it again) when an append went to another version', () => {
    const { near, wanted } = holding(['s', 2, 10]);
    near.apply(appendedEvent(node('s', 2), 10, 11));
    expect(near.getSession('s')?.nodes.map((n) => n.id)).toEqual(['s/0', 's/1', 's/2']);
    expect(near.getSession('s')?.info?.version).toBe(11);
    // This client's own append, answered after the event of it arrived: nothing more to add.
    near.appended('s', node('s', 2), 10, 11);
    expect(near.getSession('s')?.nodes).toHaveLength(3);
    // An append retried with an ID the session has: the version moves, the nodes do not (as the sidecar keeps a session).
    near.appended('s', node('s', 1, { content: 'again' }), 11, 12);
    expect(near.getSession('s')?.nodes.map((n) => n.content)).toEqual(['message 0', 'message 1', 'message 2']);
    expect(near.stats().appendsApplied).toBe(2);
    // An append to version 13: the copy at 12 missed one in between.
    near.apply(appendedEvent(node('s', 4), 13, 14));
    expect(near.hasSession('s')).toBe(false);
    expect(wanted).toEqual(['s']);
    // And a read of it in flight from before is refused.
    expect(near.installSession('s', near.ticket(), sessionOf('s', 3, 12))).toBe(false);
  });

  it('never adds an append to a session the sidecar did not hold (previous version 0), nor keeps a copy past its bound', () => {
    const { near } = holding(['s', 1, 10]);
    near.appended('s', node('s', 1), 0, 11);
    expect(near.hasSession('s')).toBe(false);

    const small = new NearCache({ maxBytes: 4096 });
    small.apply(started());
    expect(small.installSession('t', small.ticket(), sessionOf('t', 1, 1))).toBe(true);
    small.appended('t', node('t', 1, { content: 'x'.repeat(4096) }), 1, 2);
    expect(small.hasSession('t')).toBe(false);
    expect(small.stats().bytes).toBeLessThanOrEqual(4096);
  });

  it('builds a context from what it holds as the rules say, and nothing it cannot build whole', () => {
    const { near, wanted } = holding(['chat', 4, 10], ['facts', 3, 20]);
    near.appended('chat', node('chat', 4, { refs: ['facts-1'] }), 10, 11);
    const built = near.buildContext(request('chat', { headNodeId: 'chat/4' }));
    expect(built?.fromNearCache).toBe(true);
    expect(ids(built)).toEqual(['facts/1', 'chat/0', 'chat/1', 'chat/2', 'chat/3', 'chat/4']);
    expect(built?.nodes[0]).toMatchObject({ reason: InclusionReason.INCLUSION_REASON_REFERENCE, referencedBy: 'chat-4' });
    expect(built).toMatchObject({ sessionFound: true, sessionVersion: 11, droppedNodes: 0, totalChars: 6 * 'message 0'.length, tokenizer: '' });
    expect(ids(near.buildContext(request('chat', { headNodeId: 'chat/4', maxNodes: 2 })))).toEqual(['facts/1', 'chat/4']);
    expect(near.stats()).toMatchObject({ contextsBuilt: 2, hits: 2 });
    // What only the sidecar can answer: tokens to count, a head it does not hold, a session or a reference not held.
    expect(near.buildContext(request('chat', { maxTokens: 100 }))).toBeUndefined();
    expect(near.buildContext(request('chat', { tokenizer: 'o200k_base' }))).toBeUndefined();
    expect(near.buildContext(request('chat', { headNodeId: 'chat/9' }))).toBeUndefined();
    expect(near.buildContext(request('chat', { extraRefs: ['unknown-1'] }))).toBeUndefined();
    expect(near.buildContext(request('other'))).toBeUndefined();
    expect(wanted).toEqual(['other']);
    // The referenced session goes: a context that needs it is no longer built here.
    near.apply(message({ $case: 'sessionInvalidated', value: { sessionId: 'facts', change: SessionChange.SESSION_CHANGE_INVALIDATED, version: 21 } }));
    expect(near.buildContext(request('chat', { headNodeId: 'chat/4' }))).toBeUndefined();
    // Not live: nothing is built.
    near.streamDown();
    expect(near.buildContext(request('chat'))).toBeUndefined();
  });

  it('asks for the sessions a context read that it does not hold, and with followSessions "written" for those written elsewhere while it has room', () => {
    const { near, wanted } = holding(['chat', 2, 10]);
    near.contextAnswered(request('chat'), BuildContextResponse.fromPartial({ sessionFound: true, nodes: [{ node: node('facts', 0) }, { node: node('chat', 0) }] }));
    expect(wanted).toEqual(['facts']);
    near.apply(appendedEvent(node('elsewhere', 3), 5, 6));
    expect(wanted).toEqual(['facts']);

    const following = new NearCache({ maxBytes: 1 << 20, followSessions: 'written' });
    const asked: string[] = [];
    following.wantSession = (sessionId) => asked.push(sessionId);
    following.apply(started());
    following.apply(appendedEvent(node('elsewhere', 3), 5, 6));
    following.apply(message({ $case: 'sessionInvalidated', value: { sessionId: 'filled', change: SessionChange.SESSION_CHANGE_FILLED, version: 3 } }));
    following.apply(message({ $case: 'sessionInvalidated', value: { sessionId: 'gone', change: SessionChange.SESSION_CHANGE_INVALIDATED, version: 3 } }));
    expect(asked).toEqual(['elsewhere', 'filled']);
  });

  it('finds references across the sessions it holds by short ID, and forgets the short IDs of a session it no longer holds', () => {
    const { near } = holding(['a', 1, 1], ['b', 2, 1]);
    near.appended('a', node('a', 1, { refs: ['b-1'] }), 1, 2);
    expect(ids(near.buildContext(request('a')))).toEqual(['b/1', 'a/0', 'a/1']);
    near.forgetSession('b');
    expect(near.buildContext(request('a'))).toBeUndefined();
    near.flush();
    expect(near.buildContext(request('a'))).toBeUndefined();
  });
});
