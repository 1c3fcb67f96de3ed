import type { SizedValue } from '../model/entry';
import { nodeSize, type NodeRecord } from '../model/node';

/**
 * A cached session, decoded once and kept in L1 as it is: the nodes in
 * conversation order and the indexes BuildContext needs. Immutable — an
 * append makes a new state — so a reader never sees half an update.
 */
export interface SessionState extends SizedValue {
  readonly sessionId: string;
  readonly nodes: readonly NodeRecord[];
  readonly byId: ReadonlyMap<string, NodeRecord>;
  readonly byShortId: ReadonlyMap<string, NodeRecord>;
}

/** What a node costs the state beyond itself: its slots in the list and the two indexes. */
const NODE_BOOKKEEPING_BYTES = 100;

/**
 * Builds the state from nodes in order. A node ID seen twice (an AppendNode
 * the app retried) keeps its first position.
 */
export function buildSession(sessionId: string, nodes: readonly NodeRecord[]): SessionState {
  const byId = new Map<string, NodeRecord>();
  const byShortId = new Map<string, NodeRecord>();
  const ordered: NodeRecord[] = [];
  let sizeBytes = 200 + sessionId.length * 2;
  for (const node of nodes) {
    if (byId.has(node.id)) continue;
    byId.set(node.id, node);
    if (node.shortId !== '') byShortId.set(node.shortId, node);
    ordered.push(node);
    sizeBytes += nodeSize(node) + NODE_BOOKKEEPING_BYTES;
  }
  return { sessionId, nodes: ordered, byId, byShortId, sizeBytes };
}

/**
 * The state with `node` appended: the indexes copied (a reader of the older
 * state keeps what it read) and added to, the size added to — not
 * recomputed node by node, which made each append cost as much as reading
 * the whole session again.
 */
export function appendToSession(state: SessionState, node: NodeRecord): SessionState {
  if (state.byId.has(node.id)) return state;
  const byId = new Map(state.byId).set(node.id, node);
  const byShortId = node.shortId === '' ? state.byShortId : new Map(state.byShortId).set(node.shortId, node);
  return { sessionId: state.sessionId, nodes: [...state.nodes, node], byId, byShortId, sizeBytes: state.sizeBytes + nodeSize(node) + NODE_BOOKKEEPING_BYTES };
}
