import { BinaryWriter } from '@bufbuild/protobuf/wire';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { ContextItem } from '../../src/context/build-context';
import type { NodeRecord } from '../../src/model/node';
import { BuildContextResponse, GetResponse, GetSessionNodesResponse, Node } from '../../src/gen/contextcache/v1/context_cache';
import type { Entry } from '../../src/model/entry';
import { encodeContextItems, encodeGetFound, encodeSessionNodes } from '../../src/server/encoding';
import { decodeNode, encodedNode, encodeNodes } from '../../src/wire/node';
import { entryInfo, INCLUSION, nodeFromProto, nodeToProto } from '../../src/server/mapping';
import { WireError } from '../../src/wire/protobuf';
import { session } from '../helpers/nodes';
import { startSidecar } from '../helpers/sidecar';

/** Nodes with every field shape: empty and multibyte strings, big numbers, maps, refs, old and new times. */
function variety(): NodeRecord[] {
  const base: NodeRecord = { id: 'n1', shortId: 'k3x9q', sessionId: 's', parentId: '', role: 2, content: 'hello', createdAt: 1_795_000_000_123, metadata: {}, refs: [] };
  return [
    base,
    { ...base, id: 'n2', parentId: 'n1', role: 3, content: 'ünïcødé 😀 '.repeat(100), metadata: { model: 'm', tokens: '1234', empty: '', '': 'x' }, refs: ['a', 'b-2', 'c_3'] },
    { ...base, id: 'n3', shortId: '', content: '', createdAt: 0, role: 0 },
    { ...base, id: 'n4', createdAt: 1000, content: 'x'.repeat(300) },
    { ...base, id: 'n5', createdAt: 999 },
    { ...base, id: 'n6', createdAt: -86_400_000 },
    { ...base, id: 'n7', role: 4, content: 'y'.repeat(20_000) },
    { ...base, id: 'n8', tokenCount: 0, pinned: true },
    { ...base, id: 'n9', parentId: 'n8', tokenCount: 300_000, tokenCountTokenizer: 'cl100k_base', summarizesThrough: 'n8', tokens: { o200k_base: 12 } },
    { ...base, id: 'n10', tokenCount: 5 },
    { ...base, id: 'n11', createdAt: -1_500 },
    { ...base, id: 'n12', createdAt: 8.64e15, role: 2 ** 31 - 1, tokenCount: 2 ** 32 - 1 },
  ];
}

/** A node without what the Node message does not carry (`tokens`, kept beside it in Redis). */
const withoutTokens = ({ tokens: _, ...node }: NodeRecord): NodeRecord => node;

describe('the fast node encoder', () => {
  it('writes exactly the bytes of the generated Node.encode', () => {
    const nodes = variety();
    encodeNodes(nodes);
    for (const node of nodes) {
      const expected = Buffer.from(Node.encode(nodeToProto(node)).finish());
      expect(encodedNode(node).equals(expected), node.id).toBe(true);
    }
  });

  it('frames sessions and contexts so that the generated decoder reads back what was meant', () => {
    const nodes = variety();
    const head = GetSessionNodesResponse.encode({ found: true, nodes: [], info: undefined, lease: undefined }).finish();
    const decoded = GetSessionNodesResponse.decode(encodeSessionNodes(head, nodes).toBuffer());
    expect(decoded.found).toBe(true);
    expect(decoded.nodes).toEqual(nodes.map(nodeToProto));

    const reasons = ['conversation', 'reference', 'extra-ref', 'summary'] as const;
    const items: ContextItem[] = nodes.map((node, index) => ({
      node,
      reason: reasons[index % reasons.length]!,
      referencedBy: index % 3 === 0 ? '' : index % 3 === 1 ? `by${index}` : 'ünï😀'.repeat(index * 10),
      tokens: [0, 1, 127, 128, 300_000, 2 ** 32 - 1][index % 6]!,
    }));
    const fields = {
      sessionFound: true,
      nodes: [],
      unresolvedShortIds: ['u'],
      missingSessionIds: [],
      droppedNodes: 3,
      totalChars: 10,
      sessionVersion: 7,
      source: 1,
      degraded: false,
      totalTokens: 9,
      budgetUsed: 0.5,
      needsSummary: true,
      tokenizer: 'o200k_base',
      uncutTokens: 11,
    };
    const built = BuildContextResponse.decode(encodeContextItems(BuildContextResponse.encode(fields).finish(), items).toBuffer());
    expect(built).toEqual({
      ...fields,
      nodes: items.map((item) => ({ node: nodeToProto(item.node), reason: INCLUSION[item.reason], referencedBy: item.referencedBy, tokenCount: item.tokens })),
    });
    expect(encodeContextItems(new Uint8Array(0), []).toBuffer().length).toBe(0);
  });
});

describe('the node decoder', () => {
  it('reads back every node the encoder writes, and keeps those very bytes as its encoding', () => {
    for (const node of variety()) {
      const bytes = Buffer.from(encodedNode(node));
      const decoded = decodeNode(bytes, 0, bytes.length);
      expect(decoded, node.id).toEqual(withoutTokens(nodeFromProto(nodeToProto(node), node.sessionId)));
      expect(encodedNode(decoded)).toEqual(bytes);
      expect(encodedNode(decoded).buffer).toBe(bytes.buffer);
    }
  });

  it('reads whatever the generated encoder writes as the generated decoder and the edge do (fields in any order, unknown ones skipped)', () => {
    const text = fc.string({ unit: 'binary', maxLength: 40 });
    const node = fc.record({
      id: text,
      shortId: text,
      sessionId: text,
      parentId: text,
      role: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
      content: fc.string({ unit: 'binary', maxLength: 400 }),
      createdAt: fc.option(fc.integer({ min: -8.64e15, max: 8.64e15 }).map((ms) => new Date(ms)), { nil: undefined }),
      metadata: fc.dictionary(text.filter((key) => key !== '__proto__'), text, { maxKeys: 4 }),
      refs: fc.array(text, { maxLength: 4 }),
      tokenCount: fc.integer({ min: 0, max: 2 ** 32 - 1 }),
      tokenCountTokenizer: text,
      pinned: fc.boolean(),
      summarizesThrough: text,
    });
    fc.assert(
      fc.property(node, fc.uint8Array({ maxLength: 8 }), (message, tail) => {
        // An unknown field (number 99, length-delimited) after the known ones: a newer version's.
        const bytes = Buffer.concat([Node.encode(message).finish(), Buffer.from([0x9a, 0x06, tail.length, ...tail])]);
        const decoded = decodeNode(bytes, 0, bytes.length);
        expect(decoded).toEqual(nodeFromProto(Node.decode(bytes), message.sessionId));
        // What is served is the bytes read: the generated decoder reads them as it always did.
        expect(encodedNode(decoded).equals(bytes)).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });

  it('reads long content that holds a real replacement character (valid UTF-8)', () => {
    const content = `${'x'.repeat(100)}\ufffd${'y'.repeat(10)}`;
    const bytes = Buffer.from(Node.encode(Node.fromPartial({ id: 'n', content })).finish());
    expect(decodeNode(bytes, 0, bytes.length).content).toBe(content);
  });

  it.each([
    ['a truncated node', Buffer.from([0x0a, 0x05, 0x61])],
    ['a varint past 10 bytes', Buffer.from([0x28, ...Array(11).fill(0xff)])],
    ['the id as a varint', Buffer.from([0x08, 0x01])],
    ['content that is not UTF-8', Buffer.from([0x32, 0x02, 0xff, 0xfe])],
    ['long content that is not UTF-8', Buffer.from([0x32, 0x80, 0x01, ...Array<number>(127).fill(0x61), 0xff])],
    ['a negative role', Buffer.from([0x28, ...Array(9).fill(0xff), 0x01])],
    ['a time past what a Date holds', Buffer.from(new BinaryWriter().uint32(58).fork().uint32(8).int64(10_000_000_000_000).join().finish())],
    ['a metadata key "__proto__"', Buffer.from(new BinaryWriter().uint32(66).fork().uint32(10).string('__proto__').uint32(18).string('x').join().finish())],
    ['a wire type that does not exist', Buffer.from([0x0f])],
  ])('refuses %s with a WireError', (_, bytes) => {
    expect(() => decodeNode(bytes, 0, bytes.length)).toThrow(WireError);
  });
});

describe('the fast Get encoder', () => {
  const base: Entry = { value: Buffer.from('v'.repeat(1024)), version: 7, tags: [], expiresAt: 1_795_000_000_123 };
  const entries: Entry[] = [
    base,
    { ...base, value: Buffer.alloc(0), version: 0, expiresAt: 0 },
    { ...base, tags: ['a', 'ünï/😀', 'x'.repeat(200)], expiresAt: 1000, version: Number.MAX_SAFE_INTEGER },
    { ...base, value: Buffer.alloc(200_000, 1), expiresAt: 999 },
    { ...base, expiresAt: 4_102_444_800_000 },
    // The generated encoder's cases: an expiry before 1970.
    { ...base, expiresAt: -86_400_123 },
  ];

  it('writes exactly the bytes of the generated GetResponse.encode, for every kind of read', () => {
    let compared = 0;
    for (const entry of entries) {
      for (const source of ['l1', 'l2'] as const) {
        for (const degraded of [false, true]) {
          for (const waited of [false, true]) {
            for (const notModified of [false, true]) {
              const read = { entry, source, degraded };
              const expected = Buffer.from(
                GetResponse.encode({ found: true, value: notModified ? Buffer.alloc(0) : entry.value, info: entryInfo(entry, read, waited), notModified, lease: undefined }).finish(),
              );
              const actual = encodeGetFound(read, waited, notModified);
              expect(actual.equals(expected), JSON.stringify({ expiresAt: entry.expiresAt, source, degraded, waited, notModified })).toBe(true);
              compared++;
            }
          }
        }
      }
    }
    expect(compared).toBe(entries.length * 16);
  });

  it('is read back by the generated decoder as the entry it encodes', () => {
    const entry = entries[2]!;
    const decoded = GetResponse.decode(encodeGetFound({ entry, source: 'l1', degraded: false }, false, false));
    expect(decoded.found).toBe(true);
    expect(Buffer.from(decoded.value).equals(entry.value)).toBe(true);
    expect(decoded.info).toEqual({ version: entry.version, expiresAt: new Date(entry.expiresAt), tags: entry.tags, source: 1, sizeBytes: entry.value.byteLength, waitedForFill: false, degraded: false });
  });
});

describe('responses written into the shared buffer', () => {
  it('reach every caller intact: 96 large responses of different sessions in flight at once, over HTTP/2 flow control', async () => {
    // If grpc-js ever kept the serialized message instead of copying it into its frame at once,
    // a response waiting for the window would be overwritten by the next one written: caught here.
    const sidecar = await startSidecar();
    try {
      const sessions = Array.from({ length: 8 }, (_, s) => `shared-${s}`);
      for (const [s, sessionId] of sessions.entries()) {
        await sidecar.client.putSessionNodes({ sessionId, nodes: session(sessionId, 60, (n) => ({ content: `${sessionId}:${n}:`.repeat(40 + s * 7) })) });
      }
      const calls = Array.from({ length: 96 }, async (_, i) => {
        const sessionId = sessions[i % sessions.length]!;
        const contents =
          i % 2 === 0
            ? (await sidecar.client.buildContext({ sessionId })).nodes.map((item) => item.node!.content)
            : (await sidecar.client.getSessionNodes({ sessionId })).nodes.map((node) => node.content);
        const s = sessions.indexOf(sessionId);
        expect(contents).toEqual(Array.from({ length: 60 }, (_, n) => `${sessionId}:${n}:`.repeat(40 + s * 7)));
      });
      await Promise.all(calls);
    } finally {
      await sidecar.close();
    }
  });

  it('a response is the same bytes in a buffer of its own and in the shared one, whose next response takes its place', () => {
    const nodes = variety();
    const head = GetSessionNodesResponse.encode({ found: true, nodes: [], info: undefined, lease: undefined }).finish();
    const first = encodeSessionNodes(head, nodes);
    const own = first.toBuffer();
    const shared = first.serialize();
    expect(Buffer.compare(shared, own)).toBe(0);
    const second = encodeSessionNodes(head, nodes.slice(1)).serialize();
    // The same memory: a shared response is valid only until the next one is written.
    expect(second.buffer).toBe(shared.buffer);
    expect(GetSessionNodesResponse.decode(own).nodes.map((node) => node.id)).toEqual(nodes.map((node) => node.id));
  });
});
