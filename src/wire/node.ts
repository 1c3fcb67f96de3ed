import type { NodeRecord } from '../model/node';
import { MAX_CREATED_AT_MS } from '../model/node-shape';
import { fieldSize, stringPlan, timestampPlan, varintSize, WireError, WireReader, writeString, writeTimestamp, writeVarint, type StringField } from './protobuf';

/**
 * A node's protobuf bytes (`contextcache.v1.Node`), written and read by hand.
 * Responses that carry many nodes (BuildContext, GetSessionNodes) are the
 * sidecar's hot path. A node's protobuf encoding is computed once, the first
 * time it is served or stored, and kept for as long as the node object lives (it is
 * shared by every L1 state of its session); responses are then assembled by
 * concatenation into one buffer. Protobuf allows it: an embedded message is a
 * length-delimited field, and fields may come in any order.
 *
 * The encoder below writes `contextcache.v1.Node` directly (native UTF-8
 * writes into one buffer per batch), byte for byte what the generated
 * `Node.encode` writes — test/foundation/encoding.test.ts holds it to that.
 * It is several times faster than the generated one. Session chunks in
 * Redis hold these same bytes (redis/session-chunks.ts): a node read from
 * Redis keeps the bytes it was decoded from as its encoding, so a session
 * that just came from Redis is served without encoding anything.
 */
const encodedNodes = new WeakMap<NodeRecord, Buffer>();

/** Sizes computed once, then used to write: fields 1-4, 5, 6, 7, 8, 9 in the generated encoder's order. */
interface NodePlan {
  size: number;
  ids: StringField[];
  content: StringField | undefined;
  seconds: number;
  nanos: number;
  timestampBytes: number;
  metadata: (readonly [key: string, keyBytes: number, value: string, valueBytes: number, entryBytes: number])[];
  refs: StringField[];
  /** Fields 11 and 13 (token_count_tokenizer, summarizes_through), when set. */
  tokenizer: StringField | undefined;
  summarizes: StringField | undefined;
}

function plan(node: NodeRecord): NodePlan {
  const ids: StringField[] = [];
  for (const [tag, value] of [
    [10, node.id],
    [18, node.shortId],
    [26, node.sessionId],
    [34, node.parentId],
  ] as const) {
    if (value !== '') ids.push(stringPlan(tag, value));
  }
  const content = node.content === '' ? undefined : stringPlan(50, node.content);
  const refs = node.refs.map((ref) => stringPlan(74, ref));
  let size = 0;
  for (const [, , bytes] of ids) size += fieldSize(bytes);
  if (node.role !== 0) size += 1 + varintSize(node.role);
  if (content) size += fieldSize(content[2]);
  const { seconds, nanos, bytes: timestampBytes } = timestampPlan(node.createdAt);
  if (node.createdAt !== 0) size += fieldSize(timestampBytes);
  const metadata: NodePlan['metadata'] = [];
  for (const [key, value] of Object.entries(node.metadata)) {
    const keyBytes = Buffer.byteLength(key);
    const valueBytes = Buffer.byteLength(value);
    const entryBytes = (keyBytes > 0 ? fieldSize(keyBytes) : 0) + (valueBytes > 0 ? fieldSize(valueBytes) : 0);
    metadata.push([key, keyBytes, value, valueBytes, entryBytes]);
    size += fieldSize(entryBytes);
  }
  for (const [, , bytes] of refs) size += fieldSize(bytes);
  if (node.tokenCount) size += 1 + varintSize(node.tokenCount);
  const tokenizer = node.tokenCountTokenizer ? stringPlan(90, node.tokenCountTokenizer) : undefined;
  if (tokenizer) size += fieldSize(tokenizer[2]);
  if (node.pinned) size += 2;
  const summarizes = node.summarizesThrough ? stringPlan(106, node.summarizesThrough) : undefined;
  if (summarizes) size += fieldSize(summarizes[2]);
  return { size, ids, content, seconds, nanos, timestampBytes, metadata, refs, tokenizer, summarizes };
}

function write(node: NodeRecord, p: NodePlan, buffer: Buffer, offset: number): number {
  for (const field of p.ids) offset = writeString(buffer, offset, field);
  if (node.role !== 0) {
    buffer[offset++] = 40;
    offset = writeVarint(buffer, offset, node.role);
  }
  if (p.content) offset = writeString(buffer, offset, p.content);
  if (node.createdAt !== 0) offset = writeTimestamp(buffer, offset, 58, p.seconds, p.nanos, p.timestampBytes);
  for (const [key, keyBytes, value, valueBytes, entryBytes] of p.metadata) {
    buffer[offset++] = 66;
    offset = writeVarint(buffer, offset, entryBytes);
    if (keyBytes > 0) offset = writeString(buffer, offset, [10, key, keyBytes]);
    if (valueBytes > 0) offset = writeString(buffer, offset, [18, value, valueBytes]);
  }
  for (const field of p.refs) offset = writeString(buffer, offset, field);
  if (node.tokenCount) {
    buffer[offset++] = 80;
    offset = writeVarint(buffer, offset, node.tokenCount);
  }
  if (p.tokenizer) offset = writeString(buffer, offset, p.tokenizer);
  if (node.pinned) {
    buffer[offset++] = 96;
    buffer[offset++] = 1;
  }
  if (p.summarizes) offset = writeString(buffer, offset, p.summarizes);
  return offset;
}

/**
 * Encodes the nodes not encoded yet: one buffer per session (one allocation
 * per session, not per node, and no buffer shared across sessions, so an
 * evicted session's bytes are never kept alive by another's).
 */
export function encodeNodes(nodes: readonly NodeRecord[]): void {
  const bySession = new Map<string, { plans: [NodeRecord, NodePlan][]; total: number }>();
  for (const node of nodes) {
    if (encodedNodes.has(node)) continue;
    let group = bySession.get(node.sessionId);
    if (group === undefined) bySession.set(node.sessionId, (group = { plans: [], total: 0 }));
    const p = plan(node);
    group.plans.push([node, p]);
    group.total += p.size;
  }
  for (const { plans, total } of bySession.values()) {
    const buffer = Buffer.allocUnsafeSlow(total);
    let offset = 0;
    for (const [node, p] of plans) {
      const end = write(node, p, buffer, offset);
      encodedNodes.set(node, buffer.subarray(offset, end));
      offset = end;
    }
  }
}

export function encodedNode(node: NodeRecord): Buffer {
  let bytes = encodedNodes.get(node);
  if (bytes === undefined) {
    encodeNodes([node]);
    bytes = encodedNodes.get(node)!;
  }
  return bytes;
}

/**
 * What nodes without metadata or references share: most nodes have none,
 * and two fewer objects per node read is less for the young generation to
 * sweep. Frozen, so that a mutation would throw rather than leak across
 * nodes (nothing mutates a node's metadata or references).
 */
const NO_METADATA: Record<string, string> = Object.freeze({}) as Record<string, string>;
const NO_REFS: string[] = Object.freeze([]) as unknown as string[];

/** Wire types of Node's fields 1-13: varints for role, token_count and pinned; the rest length-delimited. */
const NODE_WIRE_TYPES = [-1, 2, 2, 2, 2, 0, 2, 2, 2, 2, 0, 2, 0, 2];

/**
 * The short ID and session ID of the node encoded at `buffer[start, end)`,
 * read without decoding the rest (content, metadata, references are
 * skipped over): to pick the few nodes a reference asks for out of a whole
 * session. The last occurrence of a field wins, as in decodeNode; throws
 * WireError on bytes that are not framed as a message.
 */
export function peekNodeIds(buffer: Buffer, start: number, end: number): { shortId: string; sessionId: string } {
  const reader = new WireReader(buffer, start, end);
  let shortId = '';
  let sessionId = '';
  while (reader.offset < end) {
    const tag = reader.varint();
    if (tag === 0x12) shortId = reader.string();
    else if (tag === 0x1a) sessionId = reader.string();
    else reader.skip(tag & 7);
  }
  return { shortId, sessionId };
}

/**
 * Reads a `contextcache.v1.Node` from `buffer[start, end)` into a NodeRecord
 * as the edge makes one (mapping's nodeFromProto: the optional fields
 * undefined unless set), and keeps those bytes as the node's encoding.
 * Protobuf semantics throughout — fields in any order, the last of a
 * repeated scalar wins, unknown fields skipped (and served on: a newer
 * version's) — so that the bytes served mean exactly the record the sidecar
 * reasons about. Throws WireError on bytes that are not a node: truncated,
 * a wrong wire type, a string that is not UTF-8, a role or time out of
 * range. The hot path of a session read from Redis: no allocation beyond
 * the record, its strings and its encoding's view.
 */
export function decodeNode(buffer: Buffer, start: number, end: number): NodeRecord {
  const reader = new WireReader(buffer, start, end);
  let id = '';
  let shortId = '';
  let sessionId = '';
  let parentId = '';
  let role = 0;
  let content = '';
  let seconds = 0;
  let nanos = 0;
  let metadata: Record<string, string> | undefined;
  let refs: string[] | undefined;
  let tokenCount = 0;
  let tokenCountTokenizer = '';
  let pinned = false;
  let summarizesThrough = '';
  while (reader.offset < end) {
    const tag = reader.varint();
    const field = tag >>> 3;
    const wireType = tag & 7;
    if (tag > 0x6f || field === 0) {
      reader.skip(wireType);
      continue;
    }
    if (wireType !== NODE_WIRE_TYPES[field]) throw new WireError(`node field ${field} has wire type ${wireType}`);
    switch (field) {
      case 1:
        id = reader.string();
        break;
      case 2:
        shortId = reader.string();
        break;
      case 3:
        sessionId = reader.string();
        break;
      case 4:
        parentId = reader.string();
        break;
      case 5:
        role = reader.varint();
        break;
      case 6:
        content = reader.string();
        break;
      case 7: {
        // An embedded message met twice is merged, as protobuf does.
        const timeEnd = reader.payloadEnd();
        const time = new WireReader(buffer, reader.offset, timeEnd);
        while (time.offset < timeEnd) {
          const timeTag = time.varint();
          if (timeTag === 8) seconds = time.varint();
          else if (timeTag === 16) nanos = time.varint();
          else time.skip(timeTag & 7);
        }
        reader.offset = timeEnd;
        break;
      }
      case 8: {
        const entryEnd = reader.payloadEnd();
        const entry = new WireReader(buffer, reader.offset, entryEnd);
        let key = '';
        let value = '';
        while (entry.offset < entryEnd) {
          const entryTag = entry.varint();
          if (entryTag === 10) key = entry.string();
          else if (entryTag === 18) value = entry.string();
          else entry.skip(entryTag & 7);
        }
        reader.offset = entryEnd;
        // The edge refuses this key (it would set the object's prototype); the sidecar never writes it.
        if (key === '__proto__') throw new WireError('a metadata key "__proto__"');
        (metadata ??= {})[key] = value;
        break;
      }
      case 9:
        (refs ??= []).push(reader.string());
        break;
      case 10:
        tokenCount = reader.varint();
        break;
      case 11:
        tokenCountTokenizer = reader.string();
        break;
      case 12:
        pinned = reader.varint() !== 0;
        break;
      case 13:
        summarizesThrough = reader.string();
        break;
    }
  }
  // int32 and uint32 fields keep their low 32 bits, as every protobuf reader does.
  role |= 0;
  tokenCount >>>= 0;
  if (role < 0) throw new WireError(`node role ${role}`);
  // What the generated fromTimestamp and a Date make of it: whole milliseconds.
  const createdAt = Math.trunc(seconds * 1000 + (nanos | 0) / 1_000_000);
  if (!(Math.abs(createdAt) <= MAX_CREATED_AT_MS)) throw new WireError(`node time ${seconds}s ${nanos}ns is out of range`);
  // One shape for every node read (optional fields undefined, not absent): monomorphic for what reads them.
  const node: NodeRecord = {
    id,
    shortId,
    sessionId,
    parentId,
    role,
    content,
    createdAt: createdAt === 0 ? 0 : createdAt,
    metadata: metadata ?? NO_METADATA,
    refs: refs ?? NO_REFS,
    tokenCount: tokenCount !== 0 ? tokenCount : undefined,
    tokenCountTokenizer: tokenCountTokenizer !== '' ? tokenCountTokenizer : undefined,
    pinned: pinned ? true : undefined,
    summarizesThrough: summarizesThrough !== '' ? summarizesThrough : undefined,
    tokens: undefined,
  };
  encodedNodes.set(node, buffer.subarray(start, end));
  return node;
}
