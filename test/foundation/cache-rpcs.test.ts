import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinkState, Source, WriteScope } from '../../src/client';
import { unimplemented } from '../../src/errors';
import { createLogger } from '../../src/log';
import { toServiceError } from '../../src/server/status';
import { VERSION } from '../../src/version';
import { closeAllSidecars, startSidecar, type TestSidecar } from '../helpers/sidecar';
import { rejectionOf, waitFor } from '../helpers/wait';

/** Every implemented ContextCache RPC over real gRPC against an in-process sidecar (L1-only). */
describe('ContextCache RPCs', () => {
  let sc: TestSidecar;
  beforeAll(async () => {
    sc = await startSidecar();
  });
  afterAll(closeAllSidecars);

  describe('Get and Set', () => {
    it('answers a missing key with found = false, not an error', async () => {
      const got = await sc.client.get({ key: 'rpc/never-written' });
      expect(got.found).toBe(false);
      expect(got.value.byteLength).toBe(0);
      expect(got.info).toBeUndefined();
      expect(got.notModified).toBe(false);
      expect(got.lease).toBeUndefined();
    });

    it('stores a value with tags and reads it back with its metadata', async () => {
      const value = Buffer.from([0, 1, 2, 255, 254, 0]);
      const set = await sc.client.set({ key: 'rpc/a', value, tags: ['user:1', 'chat:9'] });
      expect(set.scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);
      expect(set.info?.version).toBeGreaterThan(0);
      expect(set.info?.sizeBytes).toBe(value.byteLength);
      expect(set.info?.source).toBe(Source.SOURCE_UNSPECIFIED);
      expect([...(set.info?.tags ?? [])].sort()).toEqual(['chat:9', 'user:1']);

      const got = await sc.client.get({ key: 'rpc/a' });
      expect(got.found).toBe(true);
      expect(Buffer.from(got.value).equals(value)).toBe(true);
      expect(got.info?.version).toBe(set.info?.version);
      expect(got.info?.source).toBe(Source.SOURCE_L1);
      expect(got.info?.sizeBytes).toBe(value.byteLength);
      expect([...(got.info?.tags ?? [])].sort()).toEqual(['chat:9', 'user:1']);
      expect(got.info?.waitedForFill).toBe(false);
      expect(got.notModified).toBe(false);
    });

    it('stores an empty value as a found entry', async () => {
      await sc.client.set({ key: 'rpc/empty', value: Buffer.alloc(0) });
      const got = await sc.client.get({ key: 'rpc/empty' });
      expect(got.found).toBe(true);
      expect(got.value.byteLength).toBe(0);
      expect(got.info?.sizeBytes).toBe(0);
    });

    it('applies the TTL given, and the configured default (900 s) when unset', async () => {
      const before = Date.now();
      const withTtl = await sc.client.set({ key: 'rpc/ttl', value: Buffer.from('x'), ttl: { seconds: 60, nanos: 500_000_000 } });
      const withDefault = await sc.client.set({ key: 'rpc/default-ttl', value: Buffer.from('x') });
      const after = Date.now();
      const expiresWithTtl = withTtl.info?.expiresAt?.getTime() ?? 0;
      const expiresDefault = withDefault.info?.expiresAt?.getTime() ?? 0;
      expect(expiresWithTtl).toBeGreaterThanOrEqual(before + 60_500);
      expect(expiresWithTtl).toBeLessThanOrEqual(after + 60_500);
      expect(expiresDefault).toBeGreaterThanOrEqual(before + 900_000);
      expect(expiresDefault).toBeLessThanOrEqual(after + 900_000);
      // The read reports the same expiry as the write.
      expect((await sc.client.get({ key: 'rpc/ttl' })).info?.expiresAt?.getTime()).toBe(expiresWithTtl);
    });

    it('issues a higher version for every later write of a key', async () => {
      const versions: number[] = [];
      for (let i = 0; i < 5; i++) {
        versions.push((await sc.client.set({ key: 'rpc/versions', value: Buffer.from(String(i)) })).info!.version);
      }
      for (let i = 1; i < versions.length; i++) expect(versions[i]).toBeGreaterThan(versions[i - 1]!);
      const got = await sc.client.get({ key: 'rpc/versions' });
      expect(got.info?.version).toBe(versions.at(-1));
      expect(Buffer.from(got.value).toString()).toBe('4');
    });

    it('accepts keys with any UTF-8', async () => {
      const key = 'rpc/ключ/🔑/キー';
      await sc.client.set({ key, value: Buffer.from('unicode') });
      const got = await sc.client.get({ key });
      expect(got.found).toBe(true);
      expect(Buffer.from(got.value).toString()).toBe('unicode');
    });
  });

  describe('GetMany', () => {
    it('answers every key in request order, duplicates included, misses as found = false', async () => {
      await sc.client.set({ key: 'many/a', value: Buffer.from('A'), tags: ['m'] });
      await sc.client.set({ key: 'many/b', value: Buffer.from('B') });
      const keys = ['many/b', 'many/missing', 'many/a', 'many/b', 'many/a', 'many/missing'];
      const { results } = await sc.client.getMany({ keys });
      expect(results.map((r) => r.key)).toEqual(keys);
      expect(results.map((r) => r.found)).toEqual([true, false, true, true, true, false]);
      expect(results.map((r) => Buffer.from(r.value).toString())).toEqual(['B', '', 'A', 'B', 'A', '']);
      expect(results[1]!.info).toBeUndefined();
      expect(results[2]!.info?.source).toBe(Source.SOURCE_L1);
      expect(results[2]!.info?.tags).toEqual(['m']);
      expect(results[0]!.info?.version).toBe((await sc.client.get({ key: 'many/b' })).info?.version);
    });

    it('answers a single key', async () => {
      const { results } = await sc.client.getMany({ keys: ['many/a'] });
      expect(results).toHaveLength(1);
      expect(results[0]!.found).toBe(true);
    });
  });

  describe('compare-and-set', () => {
    it('if_absent writes a new key and refuses an existing one with ABORTED, leaving it unchanged', async () => {
      const first = await sc.client.set({ key: 'cas/absent', value: Buffer.from('first'), ifAbsent: true });
      expect(first.info?.version).toBeGreaterThan(0);
      const error = await rejectionOf(sc.client.set({ key: 'cas/absent', value: Buffer.from('second'), ifAbsent: true }));
      expect(error.code).toBe(status.ABORTED);
      expect(error.details).toMatch(/if_absent/);
      const got = await sc.client.get({ key: 'cas/absent' });
      expect(Buffer.from(got.value).toString()).toBe('first');
      expect(got.info?.version).toBe(first.info?.version);
    });

    it('if_absent writes again once the key is deleted', async () => {
      await sc.client.set({ key: 'cas/absent-again', value: Buffer.from('1'), ifAbsent: true });
      await sc.client.delete({ keys: ['cas/absent-again'] });
      const again = await sc.client.set({ key: 'cas/absent-again', value: Buffer.from('2'), ifAbsent: true });
      expect(again.info?.version).toBeGreaterThan(0);
    });

    it('if_version writes when the version matches and refuses a stale one with ABORTED', async () => {
      const v1 = (await sc.client.set({ key: 'cas/version', value: Buffer.from('v1') })).info!.version;
      const v2 = (await sc.client.set({ key: 'cas/version', value: Buffer.from('v2'), ifVersion: v1 })).info!.version;
      expect(v2).toBeGreaterThan(v1);

      const stale = await rejectionOf(sc.client.set({ key: 'cas/version', value: Buffer.from('lost update'), ifVersion: v1 }));
      expect(stale.code).toBe(status.ABORTED);
      expect(stale.details).toMatch(/if_version/);
      expect(stale.details).toContain(String(v1));

      const got = await sc.client.get({ key: 'cas/version' });
      expect(Buffer.from(got.value).toString()).toBe('v2');
      expect(got.info?.version).toBe(v2);
    });

    it('if_version on a missing key is refused with ABORTED and writes nothing', async () => {
      const error = await rejectionOf(sc.client.set({ key: 'cas/missing', value: Buffer.from('x'), ifVersion: 12345 }));
      expect(error.code).toBe(status.ABORTED);
      expect((await sc.client.get({ key: 'cas/missing' })).found).toBe(false);
    });
  });

  describe('conditional Get (if_version_not)', () => {
    it('answers not_modified with an empty value when the version still matches', async () => {
      const version = (await sc.client.set({ key: 'cond/a', value: Buffer.from('payload') })).info!.version;
      const got = await sc.client.get({ key: 'cond/a', ifVersionNot: version });
      expect(got.found).toBe(true);
      expect(got.notModified).toBe(true);
      expect(got.value.byteLength).toBe(0);
      expect(got.info?.version).toBe(version);
    });

    it('answers the value when the version changed', async () => {
      const old = (await sc.client.set({ key: 'cond/b', value: Buffer.from('old') })).info!.version;
      const current = (await sc.client.set({ key: 'cond/b', value: Buffer.from('new') })).info!.version;
      const got = await sc.client.get({ key: 'cond/b', ifVersionNot: old });
      expect(got.notModified).toBe(false);
      expect(Buffer.from(got.value).toString()).toBe('new');
      expect(got.info?.version).toBe(current);
    });

    it('answers a plain miss for a missing key', async () => {
      const got = await sc.client.get({ key: 'cond/missing', ifVersionNot: 7 });
      expect(got.found).toBe(false);
      expect(got.notModified).toBe(false);
    });
  });

  describe('Delete', () => {
    it('removes the keys and counts those that existed, each once', async () => {
      await sc.client.set({ key: 'del/a', value: Buffer.from('a') });
      await sc.client.set({ key: 'del/b', value: Buffer.from('b') });
      await sc.client.set({ key: 'del/keep', value: Buffer.from('keep') });
      const result = await sc.client.delete({ keys: ['del/a', 'del/missing', 'del/b', 'del/a'] });
      expect(result.deleted).toBe(2);
      expect(result.scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);
      const { results } = await sc.client.getMany({ keys: ['del/a', 'del/b', 'del/keep'] });
      expect(results.map((r) => r.found)).toEqual([false, false, true]);
      expect((await sc.client.delete({ keys: ['del/a', 'del/b'] })).deleted).toBe(0);
    });
  });

  describe('InvalidateTags', () => {
    it('removes exactly the entries carrying any of the tags and counts them', async () => {
      await sc.client.set({ key: 'tag/one', value: Buffer.from('1'), tags: ['t1'] });
      await sc.client.set({ key: 'tag/both', value: Buffer.from('2'), tags: ['t1', 't2'] });
      await sc.client.set({ key: 'tag/two', value: Buffer.from('3'), tags: ['t2'] });
      await sc.client.set({ key: 'tag/other', value: Buffer.from('4'), tags: ['t3'] });
      await sc.client.set({ key: 'tag/none', value: Buffer.from('5') });

      const result = await sc.client.invalidateTags({ tags: ['t1', 't2', 'never-used'] });
      expect(result.localEntriesRemoved).toBe(3);
      expect(result.scope).toBe(WriteScope.WRITE_SCOPE_LOCAL);
      const { results } = await sc.client.getMany({ keys: ['tag/one', 'tag/both', 'tag/two', 'tag/other', 'tag/none'] });
      expect(results.map((r) => r.found)).toEqual([false, false, false, true, true]);

      expect((await sc.client.invalidateTags({ tags: ['t1'] })).localEntriesRemoved).toBe(0);
    });

    it('follows a key to the tags of its latest write', async () => {
      await sc.client.set({ key: 'tag/moved', value: Buffer.from('1'), tags: ['old-tag'] });
      await sc.client.set({ key: 'tag/moved', value: Buffer.from('2'), tags: ['new-tag'] });
      expect((await sc.client.invalidateTags({ tags: ['old-tag'] })).localEntriesRemoved).toBe(0);
      expect((await sc.client.get({ key: 'tag/moved' })).found).toBe(true);
      expect((await sc.client.invalidateTags({ tags: ['new-tag'] })).localEntriesRemoved).toBe(1);
      expect((await sc.client.get({ key: 'tag/moved' })).found).toBe(false);
    });
  });

  describe('GetStats', () => {
    let fresh: TestSidecar;
    let freshStartedAt = 0;
    beforeAll(async () => {
      freshStartedAt = Date.now();
      fresh = await startSidecar({ CONTEXT_CACHE_NAMESPACE: 'stats-ns', CONTEXT_CACHE_L1_MAX_BYTES: '8MiB' });
    });
    afterAll(() => fresh.close());

    it('describes the sidecar and starts from zero', async () => {
      const stats = await fresh.client.getStats();
      expect(stats.version).toBe(VERSION);
      expect(stats.namespace).toBe('stats-ns');
      expect(stats.sidecarId).toBe(fresh.sidecar.sidecarId);
      expect(stats.sidecarId).not.toBe(sc.sidecar.sidecarId);
      expect(stats.uptime).toBeDefined();
      expect(stats.l1).toMatchObject({ entries: 0, bytes: 0, maxBytes: 8 * 1024 * 1024, evictions: 0, expirations: 0 });
      expect(stats.l1?.reads).toEqual({ hits: 0, misses: 0, hitRatio: 0 });
      expect(stats.l2?.state).toBe(LinkState.LINK_STATE_DISABLED);
      expect(stats.pubsub?.state).toBe(LinkState.LINK_STATE_DISABLED);
    });

    it('counts open Watch streams', async () => {
      const openStreams = async () => (await fresh.client.getStats()).watch!.openStreams;
      const before = await openStreams();
      const stream = fresh.client.watch({ keyPrefixes: ['s/'] });
      const ended = new Promise<void>((resolve) => stream.call.on('status', () => resolve()));
      stream.call.on('error', () => undefined);
      await waitFor(async () => (await openStreams()) === before + 1, 'the Watch stream to be counted');
      stream.cancel();
      await ended;
      await waitFor(async () => (await openStreams()) === before, 'the cancelled Watch stream to be uncounted');
    });

    it('counts hits, misses, entries and bytes of known operations', async () => {
      await fresh.client.set({ key: 's/1', value: Buffer.alloc(1000, 1) });
      await fresh.client.set({ key: 's/2', value: Buffer.alloc(3000, 2) });
      await fresh.client.get({ key: 's/1' }); // hit
      await fresh.client.get({ key: 's/2' }); // hit
      await fresh.client.get({ key: 's/2', ifVersionNot: 1 }); // hit
      await fresh.client.get({ key: 's/none' }); // miss
      await fresh.client.getMany({ keys: ['s/1', 's/none', 's/none2'] }); // 1 hit, 2 misses

      const stats = await fresh.client.getStats();
      expect(stats.l1?.reads?.hits).toBe(4);
      expect(stats.l1?.reads?.misses).toBe(3);
      expect(stats.l1?.reads?.hitRatio).toBeCloseTo(4 / 7, 10);
      expect(stats.l1?.entries).toBe(2);
      // Keys, values and bookkeeping: at least the values, and not absurdly more.
      expect(stats.l1?.bytes).toBeGreaterThanOrEqual(4000);
      expect(stats.l1?.bytes).toBeLessThan(4000 + 2 * 1024);

      await fresh.client.delete({ keys: ['s/2'] });
      const afterDelete = await fresh.client.getStats();
      expect(afterDelete.l1?.entries).toBe(1);
      expect(afterDelete.l1?.bytes).toBeGreaterThanOrEqual(1000);
      expect(afterDelete.l1?.bytes).toBeLessThan(stats.l1!.bytes - 3000 + 1);
      // Writes and deletes are not reads.
      expect(afterDelete.l1?.reads?.hits).toBe(4);
      expect(afterDelete.l1?.reads?.misses).toBe(3);

      await fresh.client.delete({ keys: ['s/1'] });
      const empty = await fresh.client.getStats();
      expect(empty.l1?.entries).toBe(0);
      expect(empty.l1?.bytes).toBe(0);
    });

    it('reports an uptime that matches when the sidecar started and grows', async () => {
      const uptimeMs = (u: { seconds: number; nanos: number } | undefined) => u!.seconds * 1000 + u!.nanos / 1e6;
      const first = uptimeMs((await fresh.client.getStats()).uptime);
      expect(first).toBeGreaterThanOrEqual(0);
      expect(first).toBeLessThanOrEqual(Date.now() - freshStartedAt + 1);
      const later = await waitFor(async () => {
        const uptime = uptimeMs((await fresh.client.getStats()).uptime);
        return uptime > first ? uptime : undefined;
      }, 'uptime to grow');
      expect(later).toBeGreaterThan(first);
    });
  });

  describe('RPCs not implemented yet', () => {
    // The RPCs beyond the generic cache. Which of them a given build implements
    // changes as they land; each one either works (any status but a crash) or
    // answers UNIMPLEMENTED with a sentence naming it.
    const calls: [string, () => Promise<unknown>][] = [
      ['GetSessionNodes', () => sc.client.getSessionNodes({ sessionId: 'unimpl-s1' })],
      ['PutSessionNodes', () => sc.client.putSessionNodes({ sessionId: 'unimpl-s1', nodes: [{ id: 'n1', shortId: 'a1' }] })],
      ['AppendNode', () => sc.client.appendNode({ node: { id: 'n2', shortId: 'a2', sessionId: 'unimpl-s1' } })],
      ['InvalidateSession', () => sc.client.invalidateSession({ sessionId: 'unimpl-s1' })],
      ['ResolveShortIds', () => sc.client.resolveShortIds({ shortIds: ['a1'] })],
      ['BuildContext', () => sc.client.buildContext({ sessionId: 'unimpl-s1' })],
      ['AcquireLock', () => sc.client.acquireLock({ resource: 'r1', ttl: { seconds: 5 } })],
      ['ExtendLock', () => sc.client.extendLock({ resource: 'r1', token: 't', ttl: { seconds: 5 } })],
      ['ReleaseLock', () => sc.client.releaseLock({ resource: 'r1', token: 't' })],
      [
        'HoldLock',
        async () => {
          const stream = sc.client.holdLock({ resource: 'r1' }, { deadline: 2000 });
          try {
            for await (const message of stream) return message;
          } finally {
            stream.cancel();
          }
        },
      ],
    ];
    it.each(calls)('%s answers UNIMPLEMENTED with a readable message, or works', async (method, call) => {
      const error = await call().then(
        () => undefined,
        (e: Error & { code?: number; details?: string }) => e,
      );
      if (error?.code === status.UNIMPLEMENTED) {
        expect(error.details).toBe(`${method} is not implemented by this sidecar version yet`);
      } else if (error !== undefined) {
        // Implemented: a documented status, never a crash.
        expect([status.INTERNAL, status.UNKNOWN], `${method}: ${error.code} ${error.details}`).not.toContain(error.code);
      }
      expect((await sc.client.getStats()).sidecarId).toBe(sc.sidecar.sidecarId);
    });

    it('a domain "not implemented" becomes UNIMPLEMENTED with its message', () => {
      const mapped = toServiceError(unimplemented('Frobnicate'), 'Frobnicate', createLogger('silent'));
      expect(mapped.code).toBe(status.UNIMPLEMENTED);
      expect(mapped.details).toBe('Frobnicate is not implemented by this sidecar version yet');
    });

    it('a method the server does not know at all answers UNIMPLEMENTED', async () => {
      const error = await rejectionOf(
        new Promise((resolve, reject) =>
          sc.client.raw.makeUnaryRequest(
            '/contextcache.v1.ContextCache/NoSuchMethod',
            (value: Buffer) => value,
            (value: Buffer) => value,
            Buffer.alloc(0),
            (err, response) => (err ? reject(err) : resolve(response)),
          ),
        ),
      );
      expect(error.code).toBe(status.UNIMPLEMENTED);
      // The sidecar keeps serving.
      expect((await sc.client.getStats()).sidecarId).toBe(sc.sidecar.sidecarId);
    });
  });
});
