/**
 * A conversation node as the core keeps it: the proto's Node with plain
 * types (epoch milliseconds instead of a Timestamp), so the context code
 * knows nothing of the wire.
 */
export interface NodeRecord {
  id: string;
  shortId: string;
  sessionId: string;
  parentId: string;
  role: number;
  content: string;
  /** Epoch milliseconds; 0 when unset. */
  createdAt: number;
  metadata: Record<string, string>;
  refs: string[];
}

/** A character outside Latin-1: V8 then keeps the whole string at two bytes per UTF-16 unit. */
// eslint-disable-next-line no-control-regex
const TWO_BYTE = /[^\u0000-\u00ff]/;

/**
 * What a string costs a node in L1, in real bytes: V8's copy (one byte per
 * character for Latin-1 text, two per UTF-16 unit otherwise, plus its
 * header) and its UTF-8 bytes in the node's protobuf encoding, kept once the
 * node has been served. Emoji and CJK text cost what they cost, not what
 * their `length` suggests.
 */
export function stringBytes(value: string): number {
  if (value.length === 0) return 0;
  return 16 + (TWO_BYTE.test(value) ? 2 : 1) * value.length + Buffer.byteLength(value);
}

/** Memory of a decoded node in L1: its strings (see stringBytes), the object, its map and arrays. */
export function nodeSize(node: NodeRecord): number {
  let size = 240 + stringBytes(node.id) + stringBytes(node.shortId) + stringBytes(node.sessionId) + stringBytes(node.parentId) + stringBytes(node.content);
  for (const [key, value] of Object.entries(node.metadata)) size += 64 + stringBytes(key) + stringBytes(value);
  for (const ref of node.refs) size += 16 + stringBytes(ref);
  return size;
}
