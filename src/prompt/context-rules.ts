/**
 * What goes into a prompt's context — the path to the head, the nodes it
 * references across sessions, what fits the budget — as pure rules over
 * nodes. The sidecar's BuildContext (src/context/build-context.ts) builds
 * with these functions, and so can the client in the application's process:
 * a context built there is then the context the sidecar would have answered.
 * Nothing here knows where the nodes come from; it imports nothing.
 */

/** What the rules read of a node: the sidecar's NodeRecord and the client's Node both are one. */
export interface PromptNode {
  readonly id: string;
  readonly shortId: string;
  readonly parentId: string;
  readonly content: string;
  readonly refs: readonly string[];
  readonly pinned?: boolean;
  /** A summary node: the ID of the last node on its path that it covers. */
  readonly summarizesThrough?: string;
}

/** A session as the rules read it: its nodes in order, and by ID. */
export interface PromptSession<N extends PromptNode> {
  readonly nodes: readonly N[];
  readonly byId: ReadonlyMap<string, N>;
  /**
   * Where conversationPath keeps the last whole path it walked (opt-in: a
   * session that is read again and again as it grows, as the near cache's
   * are). A chat's next head is two nodes below the last one: only those
   * two are walked.
   */
  readonly pathMemo?: PathMemo<N>;
}

/** The last path walked to a root (a node with no parent): it cannot change, since nodes and their parent links do not. */
export interface PathMemo<N extends PromptNode> {
  head?: N;
  path?: readonly N[];
  /** What a context reads of `path`'s nodes, once a build asked (kept as the path grows). */
  facts?: PathFacts;
}

/** A reference a conversation node makes. */
interface Ref {
  readonly shortId: string;
  readonly reason: Inclusion;
  readonly referencedBy: string;
}

/**
 * What the budget and the reference walk read of each node of a path, by
 * position, kept apart from the nodes: dense arrays a build reads without
 * touching every node (on a long path, memory latency, not arithmetic, is
 * what a build costs). Never changed once made: a longer path gets new ones.
 */
export interface PathFacts {
  /** The content length of each node. */
  readonly chars: readonly number[];
  /** Positions of pinned nodes. */
  readonly pinned: readonly number[];
  /** Positions of the nodes that may be summaries (summarizes_through set, not pinned). */
  readonly summaryCandidates: readonly number[];
  /** The references of each node that makes some, oldest node first, each node's in its order. */
  readonly refs: readonly (readonly Ref[])[];
}

/** The facts of `path`, those of its first `from` nodes being `before`. */
function factsOf<N extends PromptNode>(path: readonly N[], before?: PathFacts, from = 0): PathFacts {
  const chars = before === undefined ? [] : before.chars.slice();
  const pinned = before === undefined ? [] : before.pinned.slice();
  const summaryCandidates = before === undefined ? [] : before.summaryCandidates.slice();
  const refs = before === undefined ? [] : before.refs.slice();
  for (let at = from; at < path.length; at++) {
    const node = path[at]!;
    chars.push(node.content.length);
    if (node.pinned) pinned.push(at);
    else if (node.summarizesThrough) summaryCandidates.push(at);
    if (node.refs.length > 0) refs.push(node.refs.map((shortId) => ({ shortId, reason: 'reference' as const, referencedBy: node.shortId })));
  }
  return { chars, pinned, summaryCandidates, refs };
}

/** The facts of a conversation path: remembered with the session's path when it is the one remembered. */
export function pathFacts<N extends PromptNode>(session: PromptSession<N>, conversation: readonly N[]): PathFacts {
  const memo = session.pathMemo;
  return memo !== undefined && memo.path === conversation ? (memo.facts ??= factsOf(conversation)) : factsOf(conversation);
}

export type Inclusion = 'conversation' | 'reference' | 'extra-ref' | 'summary';

export interface ContextItem<N extends PromptNode> {
  node: N;
  reason: Inclusion;
  /** For references: the short ID of the node that first referenced it. */
  referencedBy: string;
  /** Tokens of the node's content under the context's tokenizer; 0 when none was counted. */
  tokens: number;
}

/** The share of the budget past which a context needs a summary: the convention of the memory stores (agent-memory-server summarizes at 70 % of the window). */
export const DEFAULT_SUMMARY_THRESHOLD = 0.7;

/** References looked for along the conversation one by one before a set of its IDs is built. */
const SCANS_BEFORE_SET = 4;

/** Follows at most this many levels of references, whatever the request says. */
const MAX_REF_LEVELS = 8;

/**
 * The conversation for a prompt: the path from the root to the head node
 * (parent links; a branching conversation has several), or the whole
 * session in order (the session's own array: read, never changed).
 * Undefined when the head is not a node of the session.
 */
export function conversationPath<N extends PromptNode>(session: PromptSession<N>, headNodeId: string): readonly N[] | undefined {
  if (headNodeId === '') return session.nodes;
  const head = session.byId.get(headNodeId);
  if (head === undefined) return undefined;
  const memo = session.pathMemo;
  if (memo?.head === head) return memo.path;
  // A path without a cycle has at most as many nodes as the session: only one with a cycle
  // (parent links written out of order) walks further, and is walked again, stopping at the repeat.
  const path: N[] = [];
  const longest = session.nodes.length;
  let prefix: readonly N[] | undefined;
  for (let node: N | undefined = head; node !== undefined; node = session.byId.get(node.parentId)) {
    // The rest of the way is the remembered path (it ends at a root, so its length bounds no cycle).
    if (node === memo?.head) {
      prefix = memo.path;
      break;
    }
    if (path.length === longest) return pathBeforeRepeat(session, head);
    path.push(node);
  }
  path.reverse();
  const whole = prefix === undefined ? path : prefix.concat(path);
  if (memo !== undefined && whole[0]!.parentId === '') {
    const facts = prefix !== undefined && memo.facts !== undefined ? factsOf(whole, memo.facts, prefix.length) : undefined;
    memo.head = head;
    memo.path = whole;
    memo.facts = facts;
  }
  return whole;
}

/** The path from `head` through its parents up to (not including) the first node met twice. */
function pathBeforeRepeat<N extends PromptNode>(session: PromptSession<N>, head: N): N[] {
  const path: N[] = [];
  const seen = new Set<string>();
  for (let node: N | undefined = head; node !== undefined && !seen.has(node.id); node = session.byId.get(node.parentId)) {
    seen.add(node.id);
    path.push(node);
  }
  return path.reverse();
}

/** What the references of a context need to know of the request. */
export interface ReferenceRequest {
  /** Follow the references of the conversation (and of what they reference, `maxRefDepth` levels more). */
  includeRefs: boolean;
  /** Short IDs to include whatever the conversation references. */
  extraRefs: readonly string[];
  /** Levels of references of references to follow beyond the first (0: only direct references). */
  maxRefDepth: number;
}

/** What a resolver found for some short IDs. */
export interface Resolution<N extends PromptNode> {
  nodes: ReadonlyMap<string, N>;
  unresolved: readonly string[];
  /** Sessions that hold some of the unresolved short IDs but are not at hand. */
  missingSessions: readonly string[];
  /** Some session read was served degraded. */
  degraded: boolean;
}

export interface References<N extends PromptNode> {
  /** In the order they count for the budget: extra refs, then the conversation's from the newest node, then deeper levels. */
  items: ContextItem<N>[];
  unresolved: Set<string>;
  missingSessions: Set<string>;
  degraded: boolean;
}

/**
 * The nodes a conversation references, deduplicated and cycle-safe: extra
 * refs, the references of the conversation (newest node first: they matter
 * most), then up to `maxRefDepth` levels of references of references. A node
 * already on the conversation path is not referenced again.
 *
 * A generator, so that one walk serves a caller that resolves short IDs
 * from Redis (the sidecar: it awaits each level) and one that resolves them
 * from memory (the near cache: synchronously). It yields the short IDs of a
 * level and is given back what they resolve to; it returns the references.
 */
export function* referenceWalk<N extends PromptNode>(
  session: PromptSession<N>,
  conversation: readonly N[],
  headNodeId: string,
  request: ReferenceRequest,
): Generator<string[], References<N>, Resolution<N>> {
  // Whether a node is already in the context, by ID: asked only of resolved references. Only
  // this session's node of that ID can be on the path (the path is made of them): the first
  // few are looked for along it by identity (a prompt names a reference or two, and the
  // nodes themselves are not read); past them a set of the path's IDs is built once.
  let pathIds: Set<string> | undefined;
  let lookups = 0;
  const onPath = (id: string): boolean => {
    if (headNodeId === '') return session.byId.has(id);
    if (pathIds === undefined && ++lookups <= SCANS_BEFORE_SET) {
      const own = session.byId.get(id);
      return own !== undefined && conversation.includes(own);
    }
    return (pathIds ??= new Set(conversation.map((node) => node.id))).has(id);
  };
  const referencedIds = new Set<string>();
  const found: References<N> = { items: [], unresolved: new Set(), missingSessions: new Set(), degraded: false };
  const visitedShortIds = new Set<string>();

  let frontier: Ref[] = request.extraRefs.map((shortId) => ({ shortId, reason: 'extra-ref' as const, referencedBy: '' }));
  if (request.includeRefs) {
    // The conversation's references, from its newest node.
    const groups = pathFacts(session, conversation).refs;
    for (let group = groups.length - 1; group >= 0; group--) for (const ref of groups[group]!) frontier.push(ref);
  }
  const levels = Math.min(MAX_REF_LEVELS, request.maxRefDepth + 1);
  for (let level = 0; level < levels && frontier.length > 0; level++) {
    const fresh = frontier.filter((ref) => {
      if (visitedShortIds.has(ref.shortId)) return false;
      visitedShortIds.add(ref.shortId);
      return true;
    });
    if (fresh.length === 0) break;
    const resolution = yield fresh.map((ref) => ref.shortId);
    if (resolution.degraded) found.degraded = true;
    for (const id of resolution.unresolved) found.unresolved.add(id);
    for (const id of resolution.missingSessions) found.missingSessions.add(id);
    const next: typeof frontier = [];
    for (const ref of fresh) {
      const node = resolution.nodes.get(ref.shortId);
      if (node === undefined || referencedIds.has(node.id) || onPath(node.id)) continue;
      referencedIds.add(node.id);
      found.items.push({ node, reason: ref.reason, referencedBy: ref.referencedBy, tokens: 0 });
      if (request.includeRefs) for (const shortId of node.refs) next.push({ shortId, reason: 'reference', referencedBy: node.shortId });
    }
    frontier = next;
  }
  return found;
}

/** Limits of a context; 0 for no limit. */
export interface Budget {
  maxNodes: number;
  maxChars: number;
  maxTokens: number;
}

/** What a set of nodes costs in each dimension of a budget. */
interface Cost {
  nodes: number;
  chars: number;
  tokens: number;
}

export interface Selection<N extends PromptNode> {
  /** The conversation in prompt order: pinned and kept nodes in path order, the stand-in summary (if any) where the dropped nodes were. */
  conversation: ContextItem<N>[];
  /** The references kept, in the order given, with their tokens. */
  references: ContextItem<N>[];
  /** Conversation nodes and references left out for the budget (a summary may stand in for some); unused summaries are not counted. */
  dropped: number;
  /** What the selection costs. */
  used: Cost;
  /** What the context costs without any cut: the newest summary in place of what it covers. */
  uncut: Cost;
}

/** A summary on the path: `through` is the position of the last node it covers, `at` its own. */
interface Summary<N extends PromptNode> {
  node: N;
  at: number;
  through: number;
}

/**
 * Summaries of the conversation: nodes whose summarizes_through names a node
 * before them on this path. One that names anything else (it was written
 * while its session was not cached, so it could not be checked) cannot
 * stand in for anything here and counts as an ordinary node.
 */
function summariesOf<N extends PromptNode>(conversation: readonly N[], candidates: readonly number[]): Summary<N>[] {
  let position: Map<string, number> | undefined;
  const summaries: Summary<N>[] = [];
  for (const at of candidates) {
    const node = conversation[at]!;
    position ??= new Map(conversation.map((n, index) => [n.id, index]));
    const through = position.get(node.summarizesThrough!);
    if (through !== undefined && through < at) summaries.push({ node, at, through });
  }
  return summaries;
}

/**
 * Chooses what fits the budget — nodes, characters and tokens, the tightest
 * wins — in this order of precedence:
 *  1. pinned nodes (conversation or reference), always, even past the budget;
 *  2. the newest ordinary conversation node (the head);
 *  3. referenced nodes, if at all possible (the conversation names them);
 *  4. the conversation from newest to oldest while it fits, so what is
 *     dropped is the oldest part;
 *  5. when conversation nodes are dropped, the newest summary covering them
 *     stands in their place, older kept nodes giving way to it if needed.
 * Summaries are otherwise left out: a context never holds both a summary
 * and everything it covers. When everything fits, nothing is cut.
 */
export function applyBudget<N extends PromptNode>(
  conversation: readonly N[],
  references: readonly ContextItem<N>[],
  budget: Budget,
  tokensOf: (node: N) => number,
  facts: PathFacts = factsOf(conversation),
): Selection<N> {
  const limit: Cost = { nodes: budget.maxNodes || Infinity, chars: budget.maxChars || Infinity, tokens: budget.maxTokens || Infinity };
  const used: Cost = { nodes: 0, chars: 0, tokens: 0 };
  // Each node's tokens, asked once: conversation positions, then references (this loop is the hot path of a cached context).
  const tokens = conversation.map(tokensOf);
  const refTokens = references.map((item) => tokensOf(item.node));
  const fits = (chars: number, count: number) => used.nodes + 1 <= limit.nodes && used.chars + chars <= limit.chars && used.tokens + count <= limit.tokens;
  const add = (chars: number, count: number, sign: number) => {
    used.nodes += sign;
    used.chars += sign * chars;
    used.tokens += sign * count;
  };
  const chars = facts.chars;
  const fitsAt = (at: number) => fits(chars[at]!, tokens[at]!);
  const addAt = (at: number, sign = 1) => add(chars[at]!, tokens[at]!, sign);
  const addReference = (r: number) => add(references[r]!.node.content.length, refTokens[r]!, 1);

  const summaries = summariesOf(conversation, facts.summaryCandidates);
  const isSummary = summaries.length === 0 ? undefined : new Set(summaries.map((summary) => summary.at));
  const isPinned = facts.pinned.length === 0 ? undefined : new Set(facts.pinned);
  // Positions on the path of the ordinary conversation nodes: neither pinned nor summaries.
  const ordinary: number[] = [];
  for (let at = 0; at < conversation.length; at++) if (!isPinned?.has(at) && !isSummary?.has(at)) ordinary.push(at);

  // The uncut context: pinned nodes, references, and the conversation with the newest summary in place of what it covers.
  const newest = summaries.at(-1);
  for (const at of facts.pinned) addAt(at);
  if (newest !== undefined) addAt(newest.at);
  for (const at of ordinary) if (newest === undefined || at > newest.through) addAt(at);
  for (let r = 0; r < references.length; r++) addReference(r);
  const uncut: Cost = { ...used };

  // Everything as it is, if it fits: no cut, no summary.
  if (newest !== undefined) {
    addAt(newest.at, -1);
    for (const at of ordinary) if (at <= newest.through) addAt(at);
  }
  const withTokens = (at: number, reason: 'conversation' | 'summary'): ContextItem<N> => ({ node: conversation[at]!, reason, referencedBy: '', tokens: tokens[at]! });
  const referencesWithTokens = (kept: (r: number) => boolean) => references.flatMap((item, r) => (kept(r) ? [{ ...item, tokens: refTokens[r]! }] : []));
  if (used.nodes <= limit.nodes && used.chars <= limit.chars && used.tokens <= limit.tokens) {
    const everything: ContextItem<N>[] = [];
    for (let at = 0; at < conversation.length; at++) if (!isSummary?.has(at)) everything.push(withTokens(at, 'conversation'));
    return { conversation: everything, references: referencesWithTokens(() => true), dropped: 0, used, uncut };
  }

  used.nodes = used.chars = used.tokens = 0;
  for (const at of facts.pinned) addAt(at);
  const keptReference = references.map((item) => item.node.pinned === true);
  for (let r = 0; r < references.length; r++) if (keptReference[r]) addReference(r);
  let first = ordinary.length - 1; // the oldest ordinary node kept
  if (first >= 0) addAt(ordinary[first]!);
  for (let r = 0; r < references.length; r++) {
    if (keptReference[r] || !fits(references[r]!.node.content.length, refTokens[r]!)) continue;
    addReference(r);
    keptReference[r] = true;
  }
  while (first > 0 && fitsAt(ordinary[first - 1]!)) addAt(ordinary[--first]!);

  // A stand-in for the dropped ordinary nodes (0 .. first-1): if none fits even after the oldest kept nodes give way, the cut stays as it was.
  let standIn: Summary<N> | undefined;
  if (first > 0 && summaries.length > 0) {
    let trial = first;
    for (;;) {
      const candidate = coveringSummary(summaries, ordinary[0]!, ordinary[trial - 1]!);
      if (candidate === undefined) break;
      if (fitsAt(candidate.at)) {
        standIn = candidate;
        addAt(candidate.at);
        first = trial;
        break;
      }
      if (trial >= ordinary.length - 1) break; // only the head is left: it stays
      addAt(ordinary[trial++]!, -1);
    }
    if (standIn === undefined) for (let index = first; index < trial; index++) addAt(ordinary[index]!);
  }

  const keptFrom = first >= 0 ? ordinary[first]! : conversation.length;
  const lastDropped = first > 0 ? ordinary[first - 1]! : -1;
  const selected: ContextItem<N>[] = [];
  for (let at = 0; at < conversation.length; at++) {
    if (isPinned?.has(at) || (at >= keptFrom && !isSummary?.has(at))) selected.push(withTokens(at, 'conversation'));
    if (at === lastDropped && standIn !== undefined) selected.push(withTokens(standIn.at, 'summary'));
  }
  const keptReferences = referencesWithTokens((r) => keptReference[r]!);
  const dropped = Math.max(0, first) + (references.length - keptReferences.length);
  return { conversation: selected, references: keptReferences, dropped, used, uncut };
}

/**
 * The summary to stand in for the dropped positions firstDropped..lastDropped:
 * the newest that covers them all; failing that, the one covering most of
 * them (the newest of those); none when no summary covers any.
 */
function coveringSummary<N extends PromptNode>(summaries: readonly Summary<N>[], firstDropped: number, lastDropped: number): Summary<N> | undefined {
  let best: Summary<N> | undefined;
  for (const summary of summaries) {
    if (summary.through < firstDropped) continue;
    const complete = summary.through >= lastDropped;
    const bestComplete = best !== undefined && best.through >= lastDropped;
    if (best === undefined || (complete && (!bestComplete || summary.at > best.at)) || (!complete && !bestComplete && (summary.through > best.through || (summary.through === best.through && summary.at > best.at)))) best = summary;
  }
  return best;
}

/** The items' share of the tightest budget, and whether the uncut context passes the threshold of any budget. */
export function budgetShares(budget: Budget, used: Cost, uncut: Cost, threshold: number): { budgetUsed: number; needsSummary: boolean } {
  let budgetUsed = 0;
  let needsSummary = false;
  for (const [limit, spent, whole] of [
    [budget.maxNodes, used.nodes, uncut.nodes],
    [budget.maxChars, used.chars, uncut.chars],
    [budget.maxTokens, used.tokens, uncut.tokens],
  ] as const) {
    if (limit === 0) continue;
    budgetUsed = Math.max(budgetUsed, spent / limit);
    if (whole > threshold * limit) needsSummary = true;
  }
  return { budgetUsed, needsSummary };
}


/** A context within its budget, in prompt order, and what it costs. */
export interface Assembled<N extends PromptNode> {
  /** References first, oldest first; then the conversation from its root. */
  items: ContextItem<N>[];
  droppedNodes: number;
  totalChars: number;
  totalTokens: number;
  uncutTokens: number;
  budgetUsed: number;
  needsSummary: boolean;
}

/**
 * The budget applied (applyBudget), the shares of it computed
 * (budgetShares), and the items put in prompt order: references first,
 * oldest first (`timeOf`: a node's creation time), then the conversation.
 */
export function assemble<N extends PromptNode>(
  conversation: readonly N[],
  references: readonly ContextItem<N>[],
  budget: Budget,
  summaryThreshold: number,
  tokensOf: (node: N) => number,
  timeOf: (node: N) => number,
  /** The conversation's facts, when the caller has them (pathFacts). */
  facts?: PathFacts,
): Assembled<N> {
  const kept = applyBudget(conversation, references, budget, tokensOf, facts);
  const shares = budgetShares(budget, kept.used, kept.uncut, summaryThreshold || DEFAULT_SUMMARY_THRESHOLD);
  const orderedReferences = kept.references.sort((x, y) => timeOf(x.node) - timeOf(y.node));
  return {
    items: orderedReferences.length === 0 ? kept.conversation : [...orderedReferences, ...kept.conversation],
    droppedNodes: kept.dropped,
    totalChars: kept.used.chars,
    totalTokens: kept.used.tokens,
    uncutTokens: kept.uncut.tokens,
    budgetUsed: shares.budgetUsed,
    needsSummary: shares.needsSummary,
  };
}
