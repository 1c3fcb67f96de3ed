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

/**
 * Rough memory of a decoded node: strings are UTF-16 in V8, plus object and
 * map overhead, plus its protobuf encoding once it has been served (about
 * one byte per character again).
 */
export function nodeSize(node: NodeRecord): number {
  let size = 300 + (node.id.length + node.shortId.length + node.sessionId.length + node.parentId.length) * 3 + node.content.length * 3;
  for (const [key, value] of Object.entries(node.metadata)) size += 64 + (key.length + value.length) * 2;
  for (const ref of node.refs) size += 32 + ref.length * 2;
  return size;
}
