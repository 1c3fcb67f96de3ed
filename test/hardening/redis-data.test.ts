import { BinaryWriter } from '@bufbuild/protobuf/wire';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WriteScope } from '../../src/client';
import { Node } from '../../src/gen/contextcache/v1/context_cache';
import { KeySpace } from '../../src/redis/keys';
import { corruptDiscard } from '../../src/redis/scripts/corrupt-discard';
import { ScriptRunner } from '../../src/redis/scripts/script';
import { sidecarsOnRedis } from '../helpers/fixtures';
import { session } from '../helpers/nodes';
import type { TestSidecar } from '../helpers/sidecar';
import { waitFor } from '../helpers/wait';

/**
 * Regression tests of issue 12's Redis part: values read from Redis are
 * untrusted. An attacker with write access to Redis plants values of the
 * wrong shape, type or size under the sidecar's keys (the layout of
 * src/redis/keys.ts, the format of src/redis/codec.ts); every read is a
 * clean miss — never an error —, the value is deleted (unless it is merely
 * too large), and it is counted as corrupt.
 */
const NS = 'rd';
const MiB = 1024 * 1024;
const entryKey = (key: string) => `cc:${NS}:e:${key}`;
const metaKey = (sid: string) => `cc:${NS}:s:{${sid}}`;
const chunksKey = (sid: string) => `cc:${NS}:s:{${sid}}:c`;
const SEP = '\x1f';

/** A stored value: codec.ts's header (magic, format version, flags) and the payload. */
const encoded = (payload: string | Buffer, flags = 0) => Buffer.concat([Buffer.from([0xcc, 0x01, flags]), Buffer.from(payload)]);
const nowUs = () => String(Date.now() * 1000);
const later = () => String(Date.now() + 600_000);

/** A node as the sidecar stores it (NodeRecord as JSON). */
function storedNode(sid: string, n: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { id: `${sid}/n${n}`, shortId: '', sessionId: sid, parentId: n > 0 ? `${sid}/n${n - 1}` : '', role: 1, content: `message ${n}`, createdAt: 1_767_225_600_000, metadata: {}, refs: [], ...extra };
}

/**
 * A chunk in the protobuf format of src/redis/session-chunks.ts, written
 * with the generated Node encoder and the protobuf library's writer (not the
 * sidecar's own writer): `Chunk { repeated StoredNode nodes = 1 }`,
 * `StoredNode { Node node = 1; repeated TokenCount tokens = 2 }`.
 */
function protobufChunk(entries: { node?: Uint8Array; tokens?: Record<string, number>; extra?: Uint8Array }[]): Buffer {
  const chunk = new BinaryWriter();
  for (const { node, tokens = {}, extra } of entries) {
    chunk.uint32(10).fork();
    if (node) chunk.uint32(10).bytes(node);
    for (const [tokenizer, count] of Object.entries(tokens)) chunk.uint32(18).fork().uint32(10).string(tokenizer).uint32(16).uint32(count).join();
    if (extra) chunk.raw(extra);
    chunk.join();
  }
  return Buffer.from(chunk.finish());
}

const nodeBytes = (sid: string, n: number, extra: Partial<Node> = {}) =>
  Node.encode(Node.fromPartial({ id: `${sid}/n${n}`, sessionId: sid, parentId: n > 0 ? `${sid}/n${n - 1}` : '', role: 1, content: `message ${n}`, createdAt: new Date(1_767_225_600_000), ...extra })).finish();

describe('values read from Redis, as an attacker with write access to Redis plants them', () => {
  const fixture = sidecarsOnRedis(1, { CONTEXT_CACHE_NAMESPACE: NS });
  let sc: TestSidecar;
  let raw: Redis;
  let serial = 0;
  const fresh = (what: string) => `${what}-${++serial}`;

  beforeAll(() => {
    sc = fixture.sidecars[0]!;
    raw = new Redis(fixture.redis.url, { lazyConnect: false, maxRetriesPerRequest: 1 });
  });
  afterAll(() => raw?.disconnect());

  const corruptValues = async () => (await sc.client.getStats()).l2!.corruptValues;
  const gone = (...keys: string[]) => waitFor(async () => (await raw.exists(...keys)) === 0, `${keys.join(', ')} to be deleted`);

  async function plantEntry(key: string, fields: Record<string, string | Buffer>): Promise<void> {
    await raw.del(entryKey(key));
    await raw.hset(entryKey(key), fields);
  }

  const goodEntry = (): Record<string, string | Buffer> => ({ v: nowUs(), d: encoded('hello'), x: later(), t: '' });

  async function plantSession(sid: string, chunks: Buffer[], meta: Record<string, string> = {}): Promise<void> {
    await raw.del(metaKey(sid), chunksKey(sid));
    await raw.hset(metaKey(sid), { v: nowUs(), x: later(), n: '1', ...meta });
    if (chunks.length > 0) await raw.rpush(chunksKey(sid), ...chunks);
  }

  /** An entry read that must be a clean miss, deleted and counted. */
  async function expectCorruptEntry(key: string): Promise<void> {
    const before = await corruptValues();
    const errorsBefore = sc.sidecar.tiers.counters.l2Errors;
    const read = await sc.client.get({ key });
    expect(read.found).toBe(false);
    await gone(entryKey(key));
    expect(await corruptValues()).toBe(before + 1);
    // A miss of Redis's own, not a failure of Redis the core fell back from.
    expect(sc.sidecar.tiers.counters.l2Errors).toBe(errorsBefore);
  }

  /** A session read that must be a clean miss, deleted and counted; `via` picks the RPC. */
  async function expectCorruptSession(sid: string, via: 'getSessionNodes' | 'buildContext' = 'getSessionNodes'): Promise<void> {
    const before = await corruptValues();
    const errorsBefore = sc.sidecar.tiers.counters.l2Errors;
    if (via === 'getSessionNodes') {
      const read = await sc.client.getSessionNodes({ sessionId: sid });
      expect(read.found).toBe(false);
      expect(read.nodes).toEqual([]);
    } else {
      const built = await sc.client.buildContext({ sessionId: sid, includeRefs: true });
      expect(built.sessionFound).toBe(false);
      expect(built.nodes).toEqual([]);
    }
    await gone(metaKey(sid), chunksKey(sid));
    expect(await corruptValues()).toBe(before + 1);
    expect(sc.sidecar.tiers.counters.l2Errors).toBe(errorsBefore);
  }

  describe('entries', () => {
    it('a well-formed planted entry is read (the planting matches the stored format)', async () => {
      const key = fresh('good');
      await plantEntry(key, { ...goodEntry(), t: `${SEP}a${SEP}b${SEP}` });
      const read = await sc.client.get({ key });
      expect(read.found).toBe(true);
      expect(read.value.toString()).toBe('hello');
      expect(read.info?.tags).toEqual(['a', 'b']);
    });

    it.each([
      ['an expiry that is not a number', { x: 'garbage' }],
      ['an expiry of 1e300', { x: '1e300' }],
      ['a negative expiry', { x: '-5' }],
      ['an expiry past what a Date holds', { x: '9000000000000000' }],
      ['a version of 0', { v: '0' }],
      ['a version that is not a number', { v: 'abc' }],
      ['a fractional version', { v: '1.5' }],
      ['a version beyond 2^53', { v: '9007199254740993' }],
      ['a version far ahead of Redis clock (it would pin the key)', { v: '9000000000000000' }],
      ['a tag field without separators', { t: 'abc' }],
      ['a tag field opened but not closed', { t: `${SEP}abc` }],
      ['a tag field with an empty tag', { t: `${SEP}${SEP}` }],
      ['a value without the header', { d: Buffer.from('plain bytes') }],
      ['a snappy value that does not decompress', { d: encoded(Buffer.from([5, 1, 2, 3]), 1) }],
    ])('%s is a miss, deleted and counted', async (_, fields) => {
      const key = fresh('entry');
      await plantEntry(key, { ...goodEntry(), ...fields });
      await expectCorruptEntry(key);
    });

    it.each([['v'], ['d'], ['x'], ['t']])('a hash without field %s is a miss, deleted and counted', async (field) => {
      const key = fresh('missing');
      const fields = goodEntry();
      delete fields[field];
      await plantEntry(key, fields);
      await expectCorruptEntry(key);
    });

    it('a key of the wrong Redis type is a miss, deleted and counted', async () => {
      const key = fresh('list');
      await raw.rpush(entryKey(key), 'a', 'b');
      await expectCorruptEntry(key);
    });

    it('GetMany reads the good entries beside the corrupt ones', async () => {
      const [good, bad] = [fresh('many-good'), fresh('many-bad')];
      await plantEntry(good, goodEntry());
      await plantEntry(bad, { ...goodEntry(), x: 'nope' });
      const read = await sc.client.getMany({ keys: [good, bad] });
      expect(read.results.map((r) => r.found)).toEqual([true, false]);
      await gone(entryKey(bad));
    });

    it('a 20 MiB value is not fetched: a quick miss, the link stays up, counted, and left in place', async () => {
      const key = fresh('huge');
      await plantEntry(key, { ...goodEntry(), d: encoded(Buffer.alloc(20 * MiB, 'a')) });
      const before = await corruptValues();
      const started = Date.now();
      const read = await sc.client.get({ key });
      expect(Date.now() - started).toBeLessThan(1000);
      expect(read.found).toBe(false);
      expect(sc.sidecar.redis!.link.connected).toBe(true);
      expect(await corruptValues()).toBe(before + 1);
      // Not deleted: it could be the value of a sidecar with a larger limit.
      expect(await raw.hstrlen(entryKey(key), 'd')).toBe(20 * MiB + 3);
      // Reading it again is as cheap, and the link still stays up.
      expect((await sc.client.get({ key })).found).toBe(false);
      expect(sc.sidecar.redis!.link.connected).toBe(true);
    });

    it('a small snappy value that announces 1 GiB decompressed is refused before it is inflated, and left in place', async () => {
      const key = fresh('bomb');
      // The snappy preamble: the uncompressed length as a varint (2^30).
      await plantEntry(key, { ...goodEntry(), d: encoded(Buffer.from([0x80, 0x80, 0x80, 0x80, 0x04, 0x00]), 1) });
      const before = await corruptValues();
      expect((await sc.client.get({ key })).found).toBe(false);
      expect(await corruptValues()).toBe(before + 1);
      expect(await raw.exists(entryKey(key))).toBe(1);
    });

    it('a normal read of a small entry from Redis is one round trip', async () => {
      const key = fresh('trip');
      await plantEntry(key, goodEntry());
      const trips = await countRoundTrips(sc, () => sc.client.get({ key }));
      expect(trips.result.found).toBe(true);
      expect(trips.count).toBe(1);
    });

    it('a Set over a key of the wrong type repairs it and answers SHARED', async () => {
      const key = fresh('set-list');
      await raw.rpush(entryKey(key), 'x');
      const written = await sc.client.set({ key, value: Buffer.from('v1') });
      expect(written.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.type(entryKey(key))).toBe('hash');
      expect((await sc.client.get({ key })).value.toString()).toBe('v1');
    });

    it('a Set whose tag set is of the wrong type repairs it and answers SHARED, and the tag still invalidates', async () => {
      const key = fresh('set-tag');
      const tag = fresh('tag');
      await raw.set(`cc:${NS}:tz:${tag}`, 'not a sorted set');
      const written = await sc.client.set({ key, value: Buffer.from('v1'), tags: [tag] });
      expect(written.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.type(`cc:${NS}:tz:${tag}`)).toBe('zset');
      expect((await sc.client.invalidateTags({ tags: [tag] })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.exists(entryKey(key))).toBe(0);
    });

    it('Delete and InvalidateTags over keys of the wrong type repair them and answer SHARED', async () => {
      const key = fresh('del-list');
      await raw.rpush(entryKey(key), 'x');
      expect((await sc.client.delete({ keys: [key] })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      const tag = fresh('tag');
      const tagged = fresh('tagged');
      await raw.zadd(`cc:${NS}:tz:${tag}`, Date.now() + 60_000, tagged);
      await raw.rpush(entryKey(tagged), 'x');
      expect((await sc.client.invalidateTags({ tags: [tag] })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.exists(entryKey(tagged))).toBe(0);
      expect(sc.sidecar.tiers.mode).toBe('coherent');
    });
  });

  describe('sessions', () => {
    it('a well-formed planted session is read (the planting matches the stored format)', async () => {
      const sid = fresh('good');
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0)])), encoded(JSON.stringify([storedNode(sid, 1)]))], { n: '2' });
      const read = await sc.client.getSessionNodes({ sessionId: sid });
      expect(read.found).toBe(true);
      expect(read.nodes.map((n) => n.id)).toEqual([`${sid}/n0`, `${sid}/n1`]);
    });

    it('a session written before token counts existed is read, and counted on use; counts of a tokenizer unknown to this version are kept', async () => {
      const sid = fresh('old');
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0, { content: 'hello world' }), storedNode(sid, 1, { content: 'hello world', tokens: { o200k_base: 7, future_base: 3 } })]))], { n: '2' });
      const built = await sc.client.buildContext({ sessionId: sid, tokenizer: 'o200k_base' });
      expect(built.nodes.map((n) => n.tokenCount)).toEqual([2, 7]);
    });

    it('a planted session in the protobuf chunk format is read: several chunks, token counts (a tokenizer unknown to this version kept), an unknown field skipped', async () => {
      const sid = fresh('protobuf');
      const unknownField = new BinaryWriter().uint32(122).string('from a newer version').finish();
      await plantSession(
        sid,
        [
          encoded(protobufChunk([{ node: nodeBytes(sid, 0, { content: 'hello world' }) }])),
          encoded(protobufChunk([{ node: nodeBytes(sid, 1, { content: 'hello world', metadata: { k: 'v' }, refs: ['x1'] }), tokens: { o200k_base: 7, future_base: 3 }, extra: unknownField }])),
        ],
        { n: '2' },
      );
      const read = await sc.client.getSessionNodes({ sessionId: sid });
      expect(read.found).toBe(true);
      expect(read.nodes.map((n) => [n.id, n.content, n.metadata, n.refs])).toEqual([
        [`${sid}/n0`, 'hello world', {}, []],
        [`${sid}/n1`, 'hello world', { k: 'v' }, ['x1']],
      ]);
      const built = await sc.client.buildContext({ sessionId: sid, tokenizer: 'o200k_base' });
      expect(built.nodes.map((n) => n.tokenCount)).toEqual([2, 7]);
    });

    it('a session filled before the protobuf format and appended to after it (a JSON chunk, then a protobuf one) is read whole', async () => {
      const sid = fresh('mixed');
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0)])), encoded(protobufChunk([{ node: nodeBytes(sid, 1) }]))], { n: '2' });
      const read = await sc.client.getSessionNodes({ sessionId: sid });
      expect(read.nodes.map((n) => n.content)).toEqual(['message 0', 'message 1']);
    });

    it.each([
      ['a truncated chunk', '1', (sid: string) => protobufChunk([{ node: nodeBytes(sid, 0) }]).subarray(0, -3)],
      ['an entry without a node', '1', () => protobufChunk([{ tokens: { o200k_base: 3 } }])],
      ['a node of another session', '1', () => protobufChunk([{ node: nodeBytes('someone-else', 0) }])],
      ['content that is not UTF-8', '2', (sid: string) => protobufChunk([{ node: nodeBytes(sid, 0) }, { node: Buffer.concat([nodeBytes(sid, 1), Buffer.from([0x32, 0x02, 0xc3, 0x28])]) }])],
      ['a node field of the wrong wire type', '1', (sid: string) => protobufChunk([{ node: Buffer.concat([nodeBytes(sid, 0), Buffer.from([0x08, 0x01])]) }])],
      ['a time past what a Date holds', '1', (sid: string) => protobufChunk([{ node: Buffer.concat([nodeBytes(sid, 0), new BinaryWriter().uint32(58).fork().uint32(8).int64(10_000_000_000_000).join().finish()]) }])],
      ['a metadata key "__proto__"', '1', (sid: string) => protobufChunk([{ node: Buffer.concat([nodeBytes(sid, 0), new BinaryWriter().uint32(66).fork().uint32(10).string('__proto__').uint32(18).string('x').join().finish()]) }])],
      ['random bytes', '1', () => Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02])],
    ])('a protobuf chunk with %s is a miss, deleted and counted', async (_, n, chunk) => {
      const sid = fresh('pb-bad');
      // The metadata's node count matches what the chunk holds: only the chunk itself is wrong.
      await plantSession(sid, [encoded(chunk(sid))], { n });
      await expectCorruptSession(sid);
    });

    const shapes: [string, (sid: string) => unknown][] = [
      ['[null]', () => [null]],
      ['a number instead of a node', () => [5]],
      ['a list instead of a node', () => [[]]],
      ['content: 5', (sid) => [storedNode(sid, 0, { content: 5 })]],
      ['refs: "abc"', (sid) => [storedNode(sid, 0, { refs: 'abc' })]],
      ['refs holding a number', (sid) => [storedNode(sid, 0, { refs: [1] })]],
      ['role: 1e20', (sid) => [storedNode(sid, 0, { role: 1e20 })]],
      ['a negative role', (sid) => [storedNode(sid, 0, { role: -1 })]],
      ['createdAt past what a Date holds', (sid) => [storedNode(sid, 0, { createdAt: 9e15 })]],
      ['a fractional createdAt', (sid) => [storedNode(sid, 0, { createdAt: 1.5 })]],
      ['metadata with a number value', (sid) => [storedNode(sid, 0, { metadata: { a: 1 } })]],
      ['metadata that is a list', (sid) => [storedNode(sid, 0, { metadata: ['a'] })]],
      ['metadata that is a string', (sid) => [storedNode(sid, 0, { metadata: 'a' })]],
      ['a missing id', (sid) => [storedNode(sid, 0, { id: undefined })]],
      ['a negative token count', (sid) => [storedNode(sid, 0, { tokens: { o200k_base: -1 } })]],
      ['token counts that are a list', (sid) => [storedNode(sid, 0, { tokens: [3] })]],
      ['a fractional app token count', (sid) => [storedNode(sid, 0, { tokenCount: 2.5 })]],
      ['pinned: "yes"', (sid) => [storedNode(sid, 0, { pinned: 'yes' })]],
      ['summarizesThrough: 7', (sid) => [storedNode(sid, 0, { summarizesThrough: 7 })]],
      ['a node of another session', () => [storedNode('someone-else', 0)]],
      ['an object instead of a list', (sid) => storedNode(sid, 0)],
    ];

    it.each(shapes)('a chunk with %s is a miss, deleted and counted', async (_, chunk) => {
      const sid = fresh('shape');
      await plantSession(sid, [encoded(JSON.stringify(chunk(sid)))]);
      await expectCorruptSession(sid);
    });

    it.each(shapes.slice(0, 6))('BuildContext over a chunk with %s: session not found, deleted and counted', async (_, chunk) => {
      const sid = fresh('context');
      await plantSession(sid, [encoded(JSON.stringify(chunk(sid)))]);
      await expectCorruptSession(sid, 'buildContext');
    });

    describe('a referenced session, picked for the nodes a reference asks for', () => {
      /** A session on the sidecar whose node references `shortId`, which the index says is in `sid`. */
      async function cite(sid: string, shortId: string) {
        const citing = fresh('citing');
        await sc.client.putSessionNodes({ sessionId: citing, nodes: session(citing, 1, () => ({ refs: [shortId] })) });
        await raw.set(`cc:${NS}:i:${shortId}`, sid, 'PX', 600_000);
        return sc.client.buildContext({ sessionId: citing, includeRefs: true });
      }

      it('resolves the node out of a well-formed session with other nodes around it', async () => {
        const sid = fresh('picked');
        await plantSession(sid, [encoded(protobufChunk([{ node: nodeBytes(sid, 0) }, { node: nodeBytes(sid, 1, { shortId: `${sid}-1` }), tokens: { o200k_base: 3 } }, { node: nodeBytes(sid, 2) }]))], { n: '3' });
        const built = await cite(sid, `${sid}-1`);
        expect(built.unresolvedShortIds).toEqual([]);
        expect(built.nodes.map((item) => item.node?.id)).toContain(`${sid}/n1`);
        expect(built.nodes.find((item) => item.node?.id === `${sid}/n1`)?.node?.content).toBe('message 1');
      });

      it.each([
        ['a node of another session beside the one asked for', '2', (sid: string) => [{ node: nodeBytes(sid, 0, { shortId: `${sid}-0` }) }, { node: nodeBytes('someone-else', 1) }]],
        ['a node count that differs from its metadata', '3', (sid: string) => [{ node: nodeBytes(sid, 0, { shortId: `${sid}-0` }) }, { node: nodeBytes(sid, 1) }]],
        ['a truncated node beside the one asked for', '2', (sid: string) => [{ node: nodeBytes(sid, 0, { shortId: `${sid}-0` }) }, { node: nodeBytes(sid, 1).subarray(0, 5) }]],
        ['content that is not UTF-8 in the node asked for', '1', (sid: string) => [{ node: Buffer.concat([nodeBytes(sid, 0, { shortId: `${sid}-0` }), Buffer.from([0x32, 0x02, 0xc3, 0x28])]) }]],
      ])('with %s: the reference unresolved, the session deleted and counted', async (_, n, entries) => {
        const sid = fresh('pick-bad');
        await plantSession(sid, [encoded(protobufChunk(entries(sid)))], { n });
        const before = await corruptValues();
        const errorsBefore = sc.sidecar.tiers.counters.l2Errors;
        const built = await cite(sid, `${sid}-0`);
        expect(built.sessionFound).toBe(true);
        expect(built.unresolvedShortIds).toEqual([`${sid}-0`]);
        await gone(metaKey(sid), chunksKey(sid));
        expect(await corruptValues()).toBe(before + 1);
        expect(sc.sidecar.tiers.counters.l2Errors).toBe(errorsBefore);
      });
    });

    it('a bad node in a later chunk condemns the session, not only its chunk', async () => {
      const sid = fresh('later');
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0)])), encoded(JSON.stringify([storedNode(sid, 1, { content: null })]))], { n: '2' });
      await expectCorruptSession(sid);
    });

    it.each([
      ['JSON that does not parse', () => encoded('[{"id":')],
      ['a chunk without the header', (sid: string) => Buffer.from(JSON.stringify([storedNode(sid, 0)]))],
      ['unknown header flags', (sid: string) => encoded(JSON.stringify([storedNode(sid, 0)]), 0x80)],
    ])('a chunk of %s is a miss, deleted and counted', async (_, chunk) => {
      const sid = fresh('bytes');
      await plantSession(sid, [chunk(sid)]);
      await expectCorruptSession(sid);
    });

    it.each([
      ['a version that is not a number', { v: 'garbage' }],
      ['a version of 1e300', { v: '1e300' }],
      ['a negative version', { v: '-3' }],
      ['a version far ahead of Redis clock', { v: '9000000000000000' }],
      ['an expiry that is not a number', { x: 'soon' }],
      ['an expiry of 1e300', { x: '1e300' }],
      ['a negative expiry', { x: '-1' }],
      ['a node count that is not a number', { n: 'one' }],
      ['a node count that does not match the chunks', { n: '7' }],
      ['a 1 KiB version', { v: '1'.repeat(1024) }],
    ])('metadata with %s is a miss, deleted and counted', async (_, meta) => {
      const sid = fresh('meta');
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0)]))], meta);
      await expectCorruptSession(sid);
    });

    it.each([['v'], ['x'], ['n']])('metadata without field %s is a miss, deleted and counted', async (field) => {
      const sid = fresh('meta-missing');
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0)]))]);
      await raw.hdel(metaKey(sid), field);
      await expectCorruptSession(sid);
    });

    it('metadata of the wrong Redis type is a miss (not an L2 failure), deleted and counted', async () => {
      const sid = fresh('wrong-meta');
      await raw.set(metaKey(sid), 'a string');
      await expectCorruptSession(sid);
    });

    it('chunks of the wrong Redis type are a miss (not an L2 failure), deleted and counted', async () => {
      const sid = fresh('wrong-chunks');
      await plantSession(sid, []);
      await raw.hset(chunksKey(sid), 'a', 'b');
      await expectCorruptSession(sid, 'buildContext');
    });

    it('a short-ID index entry of the wrong Redis type is an unresolved reference, removed', async () => {
      const sid = fresh('refs');
      await sc.client.putSessionNodes({ sessionId: sid, nodes: session(sid, 1) });
      await raw.rpush(`cc:${NS}:i:bogus-ref`, 'x');
      const built = await sc.client.buildContext({ sessionId: sid, extraRefs: ['bogus-ref'], includeRefs: true });
      expect(built.sessionFound).toBe(true);
      expect(built.unresolvedShortIds).toEqual(['bogus-ref']);
      await gone(`cc:${NS}:i:bogus-ref`);
    });

    it('a session over the byte limit is not fetched: a miss, counted, left in place, the link stays up', async () => {
      const sid = fresh('huge');
      await plantSession(sid, [encoded(Buffer.alloc(12 * MiB, 'a')), encoded(Buffer.alloc(12 * MiB, 'b')), encoded(Buffer.alloc(12 * MiB, 'c'))], { n: '3' });
      const before = await corruptValues();
      const started = Date.now();
      const read = await sc.client.getSessionNodes({ sessionId: sid });
      expect(Date.now() - started).toBeLessThan(1000);
      expect(read.found).toBe(false);
      expect(sc.sidecar.redis!.link.connected).toBe(true);
      expect(await corruptValues()).toBe(before + 1);
      expect(await raw.llen(chunksKey(sid))).toBe(3);
      // A fill replaces it.
      expect((await sc.client.putSessionNodes({ sessionId: sid, nodes: session(sid, 1) })).scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.llen(chunksKey(sid))).toBe(1);
    });

    it('a session of too many chunks is not fetched: a miss, counted, left in place', async () => {
      const sid = fresh('many');
      await plantSession(sid, [], { n: '100001' });
      const chunk = encoded('[]');
      for (let i = 0; i < 10; i++) await raw.rpush(chunksKey(sid), ...Array.from({ length: 10_001 }, () => chunk));
      const before = await corruptValues();
      expect((await sc.client.getSessionNodes({ sessionId: sid })).found).toBe(false);
      expect(await corruptValues()).toBe(before + 1);
      expect(await raw.exists(metaKey(sid))).toBe(1);
    });

    it('a normal read of a small session from Redis is one round trip', async () => {
      const sid = fresh('trip');
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0)]))]);
      const trips = await countRoundTrips(sc, () => sc.client.getSessionNodes({ sessionId: sid }));
      expect(trips.result.found).toBe(true);
      expect(trips.count).toBe(1);
    });

    it('PutSessionNodes over metadata of the wrong Redis type repairs it and answers SHARED', async () => {
      const sid = fresh('put-wrong');
      await raw.set(metaKey(sid), 'a string');
      const before = await corruptValues();
      const put = await sc.client.putSessionNodes({ sessionId: sid, nodes: session(sid, 2) });
      expect(put.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await corruptValues()).toBe(before + 1);
      const read = await sc.client.getSessionNodes({ sessionId: sid });
      expect(read.nodes.map((n) => n.id)).toEqual([`${sid}/n0`, `${sid}/n1`]);
    });

    it('PutSessionNodes under a lease whose key is of the wrong Redis type: repaired, and the lease is then stale (not INTERNAL)', async () => {
      const sid = fresh('put-lease');
      const read = await sc.client.getSessionNodes({ sessionId: sid, leaseOnMiss: true });
      expect(read.lease?.token).toBeTruthy();
      await raw.del(`cc:${NS}:s:{${sid}}:l`);
      await raw.rpush(`cc:${NS}:s:{${sid}}:l`, 'x');
      const error = await sc.client.putSessionNodes({ sessionId: sid, nodes: session(sid, 1), leaseToken: read.lease!.token }).catch((e: unknown) => e as { code?: number });
      expect((error as { code?: number }).code).toBe(10); // ABORTED: a stale lease, the one refusal of a fill
      expect(await raw.exists(`cc:${NS}:s:{${sid}}:l`)).toBe(0);
    });

    it('a lease key of the wrong Redis type does not read "busy" forever: removed, counted, and the lease granted', async () => {
      const sid = fresh('lease-planted');
      await raw.hset(`cc:${NS}:s:{${sid}}:l`, 'x', '1');
      const before = await corruptValues();
      const read = await sc.client.getSessionNodes({ sessionId: sid, leaseOnMiss: true });
      expect(read.found).toBe(false);
      expect(read.lease?.token).toBeTruthy();
      expect(await raw.type(`cc:${NS}:s:{${sid}}:l`)).toBe('string');
      expect(await corruptValues()).toBe(before + 1);
      const put = await sc.client.putSessionNodes({ sessionId: sid, nodes: session(sid, 1), leaseToken: read.lease!.token });
      expect(put.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
    });

    it('AppendNode over metadata of the wrong Redis type repairs it and answers SHARED', async () => {
      const sid = fresh('append-wrong');
      await raw.rpush(metaKey(sid), 'x');
      const appended = await sc.client.appendNode({ node: session(sid, 1)[0] });
      expect(appended.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.exists(metaKey(sid))).toBe(0);
    });

    it('AppendNode over chunks of the wrong Redis type repairs them and answers SHARED', async () => {
      const sid = fresh('append-chunks');
      await sc.client.putSessionNodes({ sessionId: sid, nodes: session(sid, 1) });
      await raw.del(chunksKey(sid));
      await raw.set(chunksKey(sid), 'not a list');
      const appended = await sc.client.appendNode({ node: session(sid, 2)[1] });
      expect(appended.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.type(chunksKey(sid))).not.toBe('string');
    });

    it('InvalidateSession over metadata of the wrong Redis type repairs it and answers SHARED', async () => {
      const sid = fresh('invalidate-wrong');
      await raw.sadd(metaKey(sid), 'x');
      const invalidated = await sc.client.invalidateSession({ sessionId: sid });
      expect(invalidated.scope).toBe(WriteScope.WRITE_SCOPE_SHARED);
      expect(await raw.exists(metaKey(sid))).toBe(0);
      expect(sc.sidecar.tiers.mode).toBe('coherent');
    });
  });

  describe('a corrupt value is discarded only if nobody replaced it meanwhile', () => {
    let scripts: ScriptRunner;
    beforeAll(() => {
      scripts = new ScriptRunner(raw, { keys: new KeySpace(NS), origin: 'test' });
    });

    it('removes the value when its version is still the one read', async () => {
      const key = fresh('discard-same');
      await plantEntry(key, { ...goodEntry(), v: '12345', x: 'garbage' });
      expect(await scripts.run(corruptDiscard, [entryKey(key)], Buffer.from('12345'))).toBe(true);
      expect(await raw.exists(entryKey(key))).toBe(0);
    });

    it('leaves a value that a writer replaced (a new version) between the read and the discard', async () => {
      const key = fresh('discard-replaced');
      await plantEntry(key, { ...goodEntry(), v: '99999' });
      expect(await scripts.run(corruptDiscard, [entryKey(key)], Buffer.from('12345'))).toBe(false);
      expect(await raw.hget(entryKey(key), 'v')).toBe('99999');
    });

    it('read without a version: removes it while it still has none or is not a hash, leaves it once written', async () => {
      const sid = fresh('discard-session');
      await raw.set(metaKey(sid), 'not a hash');
      expect(await scripts.run(corruptDiscard, [metaKey(sid), chunksKey(sid)], undefined)).toBe(true);
      expect(await raw.exists(metaKey(sid))).toBe(0);
      await plantSession(sid, [encoded(JSON.stringify([storedNode(sid, 0)]))]);
      expect(await scripts.run(corruptDiscard, [metaKey(sid), chunksKey(sid)], undefined)).toBe(false);
      expect(await raw.exists(metaKey(sid), chunksKey(sid))).toBe(2);
    });

    it('a session whose chunks have the wrong type is discarded on read (the reply carries the version it saw)', async () => {
      const sid = fresh('chunks-wrong');
      await raw.del(metaKey(sid), chunksKey(sid));
      await raw.hset(metaKey(sid), { v: nowUs(), x: later(), n: '1' });
      await raw.set(chunksKey(sid), 'not a list');
      await expectCorruptSession(sid);
    });
  });
});

/** Runs `call` and counts the operations (commands, scripts, pipelines: each one round trip) the sidecar sends on its command link meanwhile. */
async function countRoundTrips<T>(sc: TestSidecar, call: () => Promise<T>): Promise<{ result: T; count: number }> {
  const link = sc.sidecar.redis!.link;
  const original = link.command.bind(link);
  let count = 0;
  link.command = <R>(work: Promise<R>) => {
    count++;
    return original(work);
  };
  try {
    const result = await call();
    return { result, count };
  } finally {
    link.command = original;
  }
}
