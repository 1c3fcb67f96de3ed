import { CorruptValueError } from '../errors';
import type { NodeRecord } from '../model/node';
import { isNodeRecord } from '../model/node-shape';
import { decodeNode, encodedNode, encodeNodes, peekNodeIds } from '../wire/node';
import { fieldSize, stringPlan, utf8, varintSize, WireError, WireReader, writeString, writeVarint } from '../wire/protobuf';

/**
 * The one writer and the one reader of a session chunk: the payload of one
 * element of a session's chunk list in Redis (before the value codec's
 * header and compression, codec.ts).
 *
 * A chunk is protobuf, the encoding of
 *
 *     message Chunk { repeated StoredNode nodes = 1; }
 *     message StoredNode {
 *       contextcache.v1.Node node = 1;      // the bytes the API serves
 *       repeated TokenCount tokens = 2;     // NodeRecord.tokens
 *     }
 *     message TokenCount { string tokenizer = 1; uint32 count = 2; }
 *
 * so a node read from Redis is served with the very bytes it was stored as
 * (wire/node.ts), and decoding it is a walk over its fields, not a parse
 * of JSON and a check of its shape. Chunks written before this format are
 * JSON arrays of NodeRecords; they are read still (a JSON chunk begins with
 * `[`, a protobuf one with its first field's tag, 0x0a, or is empty) and
 * replaced by the next compaction or fill. Sidecars of earlier versions
 * read a protobuf chunk as corrupt: a miss, which the next fill repairs.
 */

const NODE_FIELD = 0x0a; // Chunk.nodes, StoredNode.node: field 1, length-delimited
const TOKENS_FIELD = 0x12; // StoredNode.tokens: field 2, length-delimited
const JSON_ARRAY = 0x5b; // '['

/** The chunk of `nodes`, in order. */
export function encodeChunk(nodes: readonly NodeRecord[]): Buffer {
  encodeNodes(nodes);
  const entries = nodes.map((node) => {
    const bytes = encodedNode(node);
    const tokens = Object.entries(node.tokens ?? {}).map(([tokenizer, count]) => {
      const name = stringPlan(0x0a, tokenizer);
      return { name, count: count!, size: fieldSize(name[2]) + (count ? 1 + varintSize(count) : 0) };
    });
    let size = fieldSize(bytes.length);
    for (const token of tokens) size += fieldSize(token.size);
    return { bytes, tokens, size };
  });
  const buffer = Buffer.allocUnsafe(entries.reduce((total, entry) => total + fieldSize(entry.size), 0));
  let offset = 0;
  for (const { bytes, tokens, size } of entries) {
    buffer[offset++] = NODE_FIELD;
    offset = writeVarint(buffer, offset, size);
    buffer[offset++] = NODE_FIELD;
    offset = writeVarint(buffer, offset, bytes.length);
    buffer.set(bytes, offset);
    offset += bytes.length;
    for (const token of tokens) {
      buffer[offset++] = TOKENS_FIELD;
      offset = writeVarint(buffer, offset, token.size);
      offset = writeString(buffer, offset, token.name);
      if (token.count !== 0) {
        buffer[offset++] = 0x10;
        offset = writeVarint(buffer, offset, token.count);
      }
    }
  }
  return buffer;
}

/**
 * The nodes of a chunk of session `sessionId` (its payload, decoded by the
 * codec), appended to `into`; with `wanted`, only the nodes whose short IDs
 * it holds are decoded and appended (the others are walked over: framing
 * and session checked, content never read). Returns how many nodes the
 * chunk holds. Throws CorruptValueError on anything that is not a chunk of
 * nodes of that session.
 */
export function decodeChunk(payload: Buffer, sessionId: string, into: NodeRecord[], chunkIndex: number, wanted?: ReadonlySet<string>): number {
  if (payload.length > 0 && payload[0] === JSON_ARRAY) return decodeJsonChunk(payload, sessionId, into, chunkIndex, wanted);
  let count = 0;
  try {
    const chunk = new WireReader(payload, 0, payload.length);
    while (chunk.offset < payload.length) {
      const tag = chunk.varint();
      if (tag !== NODE_FIELD) {
        chunk.skip(tag & 7);
        continue;
      }
      const storedEnd = chunk.payloadEnd();
      const stored = new WireReader(payload, chunk.offset, storedEnd);
      chunk.offset = storedEnd;
      count++;
      let node: NodeRecord | undefined;
      let skipped = false;
      let tokens: Record<string, number> | undefined;
      while (stored.offset < storedEnd) {
        const storedTag = stored.varint();
        if (storedTag === NODE_FIELD) {
          const end = stored.payloadEnd();
          if (wanted !== undefined) {
            const ids = peekNodeIds(payload, stored.offset, end);
            if (ids.sessionId !== sessionId) throw new CorruptValueError(`session chunk ${chunkIndex} holds a node of another session`);
            skipped = !wanted.has(ids.shortId);
          }
          // As in a whole read, an entry's last node field is its node.
          node = skipped ? undefined : decodeNode(payload, stored.offset, end);
          stored.offset = end;
        } else if (storedTag === TOKENS_FIELD && !skipped) {
          const end = stored.payloadEnd();
          const [tokenizer, count] = tokenCount(payload, stored.offset, end);
          stored.offset = end;
          (tokens ??= {})[tokenizer] = count;
        } else stored.skip(storedTag & 7);
      }
      if (skipped) continue;
      if (node === undefined) throw new CorruptValueError(`session chunk ${chunkIndex} holds an entry without a node`);
      if (node.sessionId !== sessionId) throw new CorruptValueError(`session chunk ${chunkIndex} holds a node of another session`);
      if (tokens !== undefined) node.tokens = tokens;
      into.push(node);
    }
  } catch (error) {
    if (error instanceof WireError) throw new CorruptValueError(`session chunk ${chunkIndex} does not decode (${error.message})`);
    throw error;
  }
  return count;
}

function tokenCount(buffer: Buffer, start: number, end: number): [string, number] {
  const reader = new WireReader(buffer, start, end);
  let tokenizer = '';
  let count = 0;
  while (reader.offset < end) {
    const tag = reader.varint();
    if (tag === 0x0a) tokenizer = reader.string();
    else if (tag === 0x10) count = reader.varint() >>> 0;
    else reader.skip(tag & 7);
  }
  if (tokenizer === '__proto__') throw new WireError('a tokenizer named "__proto__"');
  return [tokenizer, count];
}

/** A chunk of the earlier format: a JSON array of NodeRecords, each checked for its shape. */
function decodeJsonChunk(payload: Buffer, sessionId: string, into: NodeRecord[], chunkIndex: number, wanted: ReadonlySet<string> | undefined): number {
  let parsed: unknown;
  try {
    parsed = JSON.parse(utf8(payload, 0, payload.length));
  } catch (error) {
    throw new CorruptValueError(`session chunk ${chunkIndex} does not decode (${(error as Error).message})`);
  }
  if (!Array.isArray(parsed)) throw new CorruptValueError(`session chunk ${chunkIndex} is not a list of nodes`);
  for (const node of parsed as unknown[]) {
    if (!isNodeRecord(node)) throw new CorruptValueError(`session chunk ${chunkIndex} holds something that is not a node`);
    if (node.sessionId !== sessionId) throw new CorruptValueError(`session chunk ${chunkIndex} holds a node of another session`);
    if (wanted === undefined || wanted.has(node.shortId)) into.push(node);
  }
  return parsed.length;
}
