import { TOKENIZERS, type TokenizerName } from './tokenizer';

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
  /** The app's own count of the content's tokens (Node.token_count), used as given; absent (or 0): unknown. */
  tokenCount?: number;
  /** The tokenizer tokenCount was measured with; '' or absent: it holds for every tokenizer. */
  tokenCountTokenizer?: string;
  /** Kept in every context whatever the budget. */
  pinned?: boolean;
  /** A summary of the conversation up to and including this node ID (on its path). */
  summarizesThrough?: string;
  /**
   * The content's tokens per tokenizer, counted by a sidecar the first time a
   * context needed them, and kept: with the node in L1 (the one mutable
   * field of a node: a cache of a pure function of its content), and in
   * Redis's session chunks, so other sidecars need not count again.
   */
  tokens?: Partial<Record<TokenizerName, number>>;
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

/**
 * Room kept in a node's size for its token counts (`tokens`: an object and a
 * number per tokenizer), whether they are counted yet or not: they are added
 * after the node is in L1, which sized it when it was stored.
 */
const TOKEN_COUNTS_BYTES = 48 + 16 * TOKENIZERS.length;

/** Memory of a decoded node in L1: its strings (see stringBytes), the object, its map and arrays, its token counts. */
export function nodeSize(node: NodeRecord): number {
  let size = 240 + TOKEN_COUNTS_BYTES + stringBytes(node.id) + stringBytes(node.shortId) + stringBytes(node.sessionId) + stringBytes(node.parentId) + stringBytes(node.content);
  size += stringBytes(node.tokenCountTokenizer ?? '') + stringBytes(node.summarizesThrough ?? '');
  for (const [key, value] of Object.entries(node.metadata)) size += 64 + stringBytes(key) + stringBytes(value);
  for (const ref of node.refs) size += 16 + stringBytes(ref);
  return size;
}
