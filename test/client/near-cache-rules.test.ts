import { describe, expect, it } from 'vitest';
import { BuildContextResponse, KeyChange, Node, ResyncReason, type EntryInfo, type WatchResponse } from '../../src/gen/contextcache/v1/context_cache';
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
  });
});
