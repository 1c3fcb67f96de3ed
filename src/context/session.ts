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
    sizeBytes += nodeSize(node) + 100;
  }
  return { sessionId, nodes: ordered, byId, byShortId, sizeBytes };
}

export function appendToSession(state: SessionState, node: NodeRecord): SessionState {
  if (state.byId.has(node.id)) return state;
  return buildSession(state.sessionId, [...state.nodes, node]);
}
