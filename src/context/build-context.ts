import { notFound } from '../errors';
import type { Tier } from '../model/entry';
import type { NodeRecord } from '../model/node';
import type { SessionState } from './session';
import type { SessionStore, ShortIdResolution } from './sessions';

export interface BuildContextRequest {
  sessionId: string;
  /** '' for the whole session. */
  headNodeId: string;
  /** 0: no limit. */
  maxNodes: number;
  /** 0: no limit. */
  maxChars: number;
  includeRefs: boolean;
  extraRefs: readonly string[];
  /** Levels of references of references to follow beyond the first (0: only direct references). */
  maxRefDepth: number;
}

export type Inclusion = 'conversation' | 'reference' | 'extra-ref';

export interface ContextItem {
  node: NodeRecord;
  reason: Inclusion;
  /** For references: the short ID of the node that first referenced it. */
  referencedBy: string;
}

export interface BuiltContext {
  sessionFound: boolean;
  items: ContextItem[];
  unresolvedShortIds: string[];
  missingSessionIds: string[];
  droppedNodes: number;
  totalChars: number;
  sessionVersion: number;
  source: Tier | undefined;
  /** Some session it was built from was served degraded (see TierRead.degraded). */
  degraded: boolean;
}

/** Follows at most this many levels of references, whatever the request says. */
const MAX_REF_LEVELS = 8;

/**
 * The conversation for a prompt: the path from the root to the head node
 * (parent links; a branching conversation has several), or the whole
 * session in order.
 */
export function conversationPath(session: SessionState, headNodeId: string): NodeRecord[] {
  if (headNodeId === '') return [...session.nodes];
  const head = session.byId.get(headNodeId);
  if (head === undefined) {
    throw notFound(`head_node_id "${headNodeId}" is not a node of the cached session "${session.sessionId}"`);
  }
  const path: NodeRecord[] = [];
  const seen = new Set<string>();
  for (let node: NodeRecord | undefined = head; node !== undefined && !seen.has(node.id); node = session.byId.get(node.parentId)) {
    seen.add(node.id);
    path.push(node);
  }
  return path.reverse();
}

/**
 * Chooses what fits the budget. Referenced nodes are kept if at all possible
 * (the conversation names them, so they matter); the newest conversation
 * node (the head) is always kept; then the conversation from newest to
 * oldest while it fits, so what is dropped is the oldest part.
 */
export function applyBudget(conversation: NodeRecord[], references: ContextItem[], maxNodes: number, maxChars: number): { conversation: NodeRecord[]; references: ContextItem[] } {
  const nodeLimit = maxNodes === 0 ? Infinity : maxNodes;
  const charLimit = maxChars === 0 ? Infinity : maxChars;
  let nodes = 0;
  let chars = 0;
  const fits = (node: NodeRecord) => nodes + 1 <= nodeLimit && chars + node.content.length <= charLimit;
  const add = (node: NodeRecord) => {
    nodes++;
    chars += node.content.length;
  };

  const head = conversation.at(-1);
  if (head !== undefined) add(head);
  const keptReferences = references.filter((item) => {
    if (!fits(item.node)) return false;
    add(item.node);
    return true;
  });
  let start = conversation.length - 1;
  while (start > 0 && fits(conversation[start - 1]!)) {
    add(conversation[start - 1]!);
    start--;
  }
  return { conversation: conversation.slice(Math.max(0, start)), references: keptReferences };
}

/**
 * BuildContext: the conversation plus the nodes it references (across
 * sessions, deduplicated, cycle-safe), within the budget. Whatever cannot be
 * resolved from the cache is reported so the app can load it, fill, and ask
 * again.
 */
export async function buildContext(store: SessionStore, request: BuildContextRequest): Promise<BuiltContext> {
  const read = await store.get(request.sessionId);
  if (read === undefined) {
    return { sessionFound: false, items: [], unresolvedShortIds: [], missingSessionIds: [request.sessionId], droppedNodes: 0, totalChars: 0, sessionVersion: 0, source: undefined, degraded: false };
  }
  const conversation = conversationPath(read.session, request.headNodeId);
  const included = new Set(conversation.map((node) => node.id));
  const references: ContextItem[] = [];
  const unresolved = new Set<string>();
  const missingSessions = new Set<string>();
  const visitedShortIds = new Set<string>();
  let degraded = read.degraded;

  // Level 0: extra refs, and the references of the conversation (newest first: they matter most).
  let frontier: { shortId: string; reason: Inclusion; referencedBy: string }[] = request.extraRefs.map((shortId) => ({ shortId, reason: 'extra-ref' as const, referencedBy: '' }));
  if (request.includeRefs) {
    for (const node of [...conversation].reverse()) {
      for (const shortId of node.refs) frontier.push({ shortId, reason: 'reference', referencedBy: node.shortId });
    }
  }
  const levels = Math.min(MAX_REF_LEVELS, request.maxRefDepth + 1);
  for (let level = 0; level < levels && frontier.length > 0; level++) {
    const fresh = frontier.filter((ref) => {
      if (visitedShortIds.has(ref.shortId)) return false;
      visitedShortIds.add(ref.shortId);
      return true;
    });
    if (fresh.length === 0) break;
    const resolution: ShortIdResolution = await store.resolveShortIds(
      fresh.map((ref) => ref.shortId),
      request.sessionId,
      read.session,
    );
    if (resolution.degraded) degraded = true;
    for (const id of resolution.unresolved) unresolved.add(id);
    for (const id of resolution.missingSessions) missingSessions.add(id);
    const next: typeof frontier = [];
    for (const ref of fresh) {
      const node = resolution.nodes.get(ref.shortId);
      if (node === undefined || included.has(node.id)) continue;
      included.add(node.id);
      references.push({ node, reason: ref.reason, referencedBy: ref.referencedBy });
      if (request.includeRefs) for (const shortId of node.refs) next.push({ shortId, reason: 'reference', referencedBy: node.shortId });
    }
    frontier = next;
  }

  const total = conversation.length + references.length;
  const kept = applyBudget(conversation, references, request.maxNodes, request.maxChars);
  // Prompt order: references first, oldest first, then the conversation from its root.
  const orderedReferences = [...kept.references].sort((x, y) => x.node.createdAt - y.node.createdAt);
  const items: ContextItem[] = [...orderedReferences, ...kept.conversation.map((node) => ({ node, reason: 'conversation' as const, referencedBy: '' }))];
  return {
    sessionFound: true,
    items,
    unresolvedShortIds: [...unresolved],
    missingSessionIds: [...missingSessions],
    droppedNodes: total - items.length,
    totalChars: items.reduce((sum, item) => sum + item.node.content.length, 0),
    sessionVersion: read.version,
    source: read.source,
    degraded,
  };
}
