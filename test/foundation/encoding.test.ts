import { describe, expect, it } from 'vitest';
import type { NodeRecord } from '../../src/model/node';
import { BuildContextResponse, GetResponse, GetSessionNodesResponse, InclusionReason, Node } from '../../src/gen/contextcache/v1/context_cache';
import type { Entry } from '../../src/model/entry';
import { encodedNode, encodeGetFound, encodeNodes, lengthPrefix, stringField, varintField, withRepeated } from '../../src/server/encoding';
import { entryInfo, nodeToProto } from '../../src/server/mapping';

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
    { ...base, id: 'n10', tokenCount: 5, tokenCountTokenizer: '', pinned: false, summarizesThrough: '' },
  ];
}

describe('the fast node encoder', () => {
  it('writes exactly the bytes of the generated Node.encode', () => {
    const nodes = variety();
    encodeNodes(nodes);
    for (const node of nodes) {
      const expected = Buffer.from(Node.encode(nodeToProto(node)).finish());
      expect(encodedNode(node).equals(expected), node.id).toBe(true);
    }
  });

  it('frames repeated fields that the generated decoder reads back', () => {
    const nodes = variety();
    const head = GetSessionNodesResponse.encode({ found: true, nodes: [], info: undefined, lease: undefined }).finish();
    const decoded = GetSessionNodesResponse.decode(withRepeated(head, 2, nodes.map((node) => [encodedNode(node)])));
    expect(decoded.found).toBe(true);
    expect(decoded.nodes).toEqual(nodes.map(nodeToProto));

    const items = nodes.map((node, index) => {
      const bytes = encodedNode(node);
      return [lengthPrefix(1, bytes.length), bytes, varintField(2, InclusionReason.INCLUSION_REASON_REFERENCE), stringField(3, index % 2 === 0 ? '' : `by${index}`), varintField(4, index * 1000)];
    });
    const built = BuildContextResponse.decode(
      withRepeated(BuildContextResponse.encode({
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
      }).finish(), 2, items),
    );
    expect(built.droppedNodes).toBe(3);
    expect(built.unresolvedShortIds).toEqual(['u']);
    expect(built.nodes.map((n) => n.node)).toEqual(nodes.map(nodeToProto));
    expect(built.nodes.map((n) => n.referencedBy)).toEqual(nodes.map((_, index) => (index % 2 === 0 ? '' : `by${index}`)));
    expect(built.nodes.every((n) => n.reason === InclusionReason.INCLUSION_REASON_REFERENCE)).toBe(true);
    expect(built.nodes.map((n) => n.tokenCount)).toEqual(nodes.map((_, index) => index * 1000));
    expect([built.totalTokens, built.budgetUsed, built.needsSummary, built.tokenizer, built.uncutTokens]).toEqual([9, 0.5, true, 'o200k_base', 11]);
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
