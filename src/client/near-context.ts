import { InclusionReason, type BuildContextRequest, type BuildContextResponse, type Node } from '../gen/contextcache/v1/context_cache';
import { assemble, conversationPath, pathFacts, referenceWalk, type Inclusion, type PathMemo, type PromptSession, type Resolution } from '../prompt/context-rules';

/**
 * A context built in the application's process from the sessions its near
 * cache holds, with the sidecar's own rules (src/prompt/context-rules.ts):
 * the answer the sidecar would give, without the round trip. A chat turn
 * appends a message and then builds the context that ends with it, so no
 * earlier answer can serve it; the sessions can, once the near cache holds
 * them and keeps them current (appends are added in place, see NearCache).
 */

/**
 * A session the near cache holds, indexed as a context needs it. The
 * indexes are shared by the states of one held session and only grow
 * (appendToHeld): a session only grows, and a build reads it synchronously.
 */
export interface HeldSession extends PromptSession<Node> {
  readonly pathMemo: PathMemo<Node>;
  readonly version: number;
  /** Where the sidecar read it when it was fetched (Source). */
  readonly source: number;
  readonly byId: Map<string, Node>;
  readonly byShortId: Map<string, Node>;
}

/** What a build may read: the sessions held, and which of them holds a short ID. */
export interface SessionsAtHand {
  held(sessionId: string): HeldSession | undefined;
  ownerOf(shortId: string): string | undefined;
}

/**
 * Extra refs beyond this many go to the sidecar, which checks them against
 * its own limit: a request the sidecar would refuse is never answered here.
 */
const MAX_LOCAL_EXTRA_REFS = 100;

const REASONS: Record<Inclusion, InclusionReason> = {
  conversation: InclusionReason.INCLUSION_REASON_CONVERSATION,
  reference: InclusionReason.INCLUSION_REASON_REFERENCE,
  'extra-ref': InclusionReason.INCLUSION_REASON_EXTRA_REF,
  summary: InclusionReason.INCLUSION_REASON_SUMMARY,
};

const createdMs = (node: Node): number => node.createdAt?.getTime() ?? 0;

/** Indexes a session's nodes (in order, each ID once) as the sidecar does (context/session.ts). */
export function heldSession(nodes: readonly Node[], version: number, source: number): HeldSession {
  const byId = new Map<string, Node>();
  const byShortId = new Map<string, Node>();
  const ordered: Node[] = [];
  for (const node of nodes) {
    if (byId.has(node.id)) continue;
    byId.set(node.id, node);
    if (node.shortId !== '') byShortId.set(node.shortId, node);
    ordered.push(node);
  }
  return { nodes: ordered, byId, byShortId, version, source, pathMemo: {} };
}

/**
 * The session with `node` appended, at `version`: a new list of nodes,
 * frozen (a list handed out stays as it was), the indexes added to, in O(1) but for
 * the list. A node whose ID the session has already is not added again, as
 * the sidecar keeps a session (an append retried).
 */
export function appendToHeld(held: HeldSession, node: Node, version: number): HeldSession {
  if (held.byId.has(node.id)) return { ...held, version };
  held.byId.set(node.id, node);
  if (node.shortId !== '') held.byShortId.set(node.shortId, node);
  return { ...held, nodes: Object.freeze([...held.nodes, node]), version };
}

/**
 * The context the sidecar would answer for `request`, or undefined when it
 * cannot be built here: tokens to count (the sidecar counts them), a
 * session or a referenced node not held, a head that is not in the session,
 * a request the sidecar might refuse. Then the sidecar answers.
 */
export function buildFromHeld(at: SessionsAtHand, request: BuildContextRequest): BuildContextResponse | undefined {
  if (request.maxTokens !== 0 || request.tokenizer !== '' || request.extraRefs.length > MAX_LOCAL_EXTRA_REFS) return undefined;
  if (!(request.summaryThreshold >= 0 && request.summaryThreshold <= 1)) return undefined;
  const session = at.held(request.sessionId);
  if (session === undefined) return undefined;
  const conversation = conversationPath(session, request.headNodeId);
  if (conversation === undefined) return undefined;
  const walk = referenceWalk(session, conversation, request.headNodeId, request);
  let step = walk.next();
  while (!step.done) {
    const resolution = resolveHeld(at, session, step.value);
    if (resolution === undefined) return undefined;
    step = walk.next(resolution);
  }
  const budget = { maxNodes: request.maxNodes, maxChars: request.maxChars, maxTokens: 0 };
  const built = assemble(conversation, step.value.items, budget, request.summaryThreshold, () => 0, createdMs, pathFacts(session, conversation));
  return {
    sessionFound: true,
    nodes: built.items.map((item) => ({ node: item.node, reason: REASONS[item.reason], referencedBy: item.referencedBy, tokenCount: 0 })),
    unresolvedShortIds: [],
    missingSessionIds: [],
    droppedNodes: built.droppedNodes,
    totalChars: built.totalChars,
    sessionVersion: session.version,
    source: session.source,
    degraded: false,
    totalTokens: 0,
    budgetUsed: built.budgetUsed,
    needsSummary: built.needsSummary,
    tokenizer: '',
    uncutTokens: 0,
  };
}

/**
 * Short IDs resolved as the sidecar resolves them: in the context's own
 * session first, then in the session that holds them. Undefined when any is
 * not held: the sidecar may know it (its index, Redis), or report it.
 */
function resolveHeld(at: SessionsAtHand, session: HeldSession, shortIds: readonly string[]): Resolution<Node> | undefined {
  const nodes = new Map<string, Node>();
  for (const shortId of shortIds) {
    let node = session.byShortId.get(shortId);
    if (node === undefined) {
      const owner = at.ownerOf(shortId);
      node = owner === undefined ? undefined : at.held(owner)?.byShortId.get(shortId);
    }
    if (node === undefined) return undefined;
    nodes.set(shortId, node);
  }
  return { nodes, unresolved: [], missingSessions: [], degraded: false };
}
