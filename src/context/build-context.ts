import { notFound } from '../errors';
import type { Tier } from '../model/entry';
import type { NodeRecord } from '../model/node';
import type { TokenizerName } from '../model/tokenizer';
import { assemble, conversationPath, referenceWalk, type ContextItem as RuleItem } from '../prompt/context-rules';
import type { SessionStore } from './sessions';
import { knownTokens } from './tokens';

export interface BuildContextRequest {
  sessionId: string;
  /** '' for the whole session. */
  headNodeId: string;
  /** 0: no limit. */
  maxNodes: number;
  /** 0: no limit. */
  maxChars: number;
  /** 0: no limit. Needs `tokenizer`. */
  maxTokens?: number;
  /** Counts tokens with it; undefined: no counting (then maxTokens must be 0). */
  tokenizer?: TokenizerName;
  /** needsSummary when the uncut context takes more than this share of the budget; 0: DEFAULT_SUMMARY_THRESHOLD. */
  summaryThreshold?: number;
  includeRefs: boolean;
  extraRefs: readonly string[];
  /** Levels of references of references to follow beyond the first (0: only direct references). */
  maxRefDepth: number;
}

/** A node of a context as the sidecar holds it. */
export type ContextItem = RuleItem<NodeRecord>;

export interface BuiltContext {
  sessionFound: boolean;
  items: ContextItem[];
  unresolvedShortIds: string[];
  missingSessionIds: string[];
  droppedNodes: number;
  totalChars: number;
  /** 0 when no tokenizer was asked for. */
  totalTokens: number;
  /** The items' share of the tightest budget (0 without one). */
  budgetUsed: number;
  /** The uncut context takes more than the summary threshold of the budget. */
  needsSummary: boolean;
  /** The tokenizer of the counts; undefined when nothing was counted. */
  tokenizer: TokenizerName | undefined;
  /** Tokens of the context without any cut (the newest summary standing in for what it covers). */
  uncutTokens: number;
  sessionVersion: number;
  source: Tier | undefined;
  /** Some session it was built from was served degraded (see TierRead.degraded). */
  degraded: boolean;
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
    return {
      sessionFound: false,
      items: [],
      unresolvedShortIds: [],
      missingSessionIds: [request.sessionId],
      droppedNodes: 0,
      totalChars: 0,
      totalTokens: 0,
      budgetUsed: 0,
      needsSummary: false,
      tokenizer: request.tokenizer,
      uncutTokens: 0,
      sessionVersion: 0,
      source: undefined,
      degraded: false,
    };
  }
  const conversation = conversationPath(read.session, request.headNodeId);
  if (conversation === undefined) throw notFound(`head_node_id "${request.headNodeId}" is not a node of the cached session "${request.sessionId}"`);
  const walk = referenceWalk(read.session, conversation, request.headNodeId, request);
  let step = walk.next();
  while (!step.done) step = walk.next(await store.resolveShortIds(step.value, request.sessionId, read.session));
  const references = step.value;

  const tokenizer = request.tokenizer;
  if (tokenizer !== undefined) {
    const counted = await store.tokens.ensure([...conversation, ...references.items.map((item) => item.node)], tokenizer);
    if (counted.length > 0) store.keepTokenCounts(counted);
  }
  const tokensOf = tokenizer === undefined ? () => 0 : (node: NodeRecord) => knownTokens(node, tokenizer)!;
  const budget = { maxNodes: request.maxNodes, maxChars: request.maxChars, maxTokens: request.maxTokens ?? 0 };
  const built = assemble(conversation, references.items, budget, request.summaryThreshold ?? 0, tokensOf, (node) => node.createdAt);
  return {
    sessionFound: true,
    ...built,
    unresolvedShortIds: [...references.unresolved],
    missingSessionIds: [...references.missingSessions],
    tokenizer,
    sessionVersion: read.version,
    source: read.source,
    degraded: read.degraded || references.degraded,
  };
}
