import { buildContext } from '../context/build-context';
import type { SessionStore } from '../context/sessions';
import type { TokenizerName } from '../model/tokenizer';
import { invalidArgument } from '../errors';
import { BuildContextResponse, GetSessionNodesResponse, type ContextCacheServer } from '../gen/contextcache/v1/context_cache';
import type { CallTracker } from './calls';
import { encodedNode, encodeNodes } from '../wire/node';
import { encodeContextItems, encodeSessionNodes } from './encoding';
import { builtContextHead, leaseToProto, nodeToProto, scopeToProto, sessionInfo, storedSessionInfo } from './mapping';
import type { RequestValidator } from './validation';

export type ContextHandlers = Pick<
  ContextCacheServer,
  'getSessionNodes' | 'putSessionNodes' | 'appendNode' | 'invalidateSession' | 'resolveShortIds' | 'buildContext'
>;

/** The conversation-context RPCs: validate, delegate to the SessionStore, translate. */
export function contextHandlers({
  sessions,
  validate,
  calls,
  defaultTokenizer,
}: {
  sessions: SessionStore;
  validate: RequestValidator;
  calls: CallTracker;
  /** CONTEXT_CACHE_TOKENIZER. */
  defaultTokenizer: TokenizerName;
}): ContextHandlers {
  return {
    getSessionNodes: calls.unary(
      'GetSessionNodes',
      async (request, call) => {
        const sessionId = validate.id(request.sessionId, 'session_id');
        const { read, lease, waited } = request.leaseOnMiss
          ? await sessions.getOrLease(sessionId, validate.leaseRequest(request.leaseTtl, request.leaseWait, call))
          : { read: await sessions.get(sessionId), lease: undefined, waited: false };
        call.annotate?.({
          'context_cache.hit': read !== undefined,
          'context_cache.tier': read?.source ?? 'none',
          'context_cache.node_count': read?.session.nodes.length ?? 0,
          ...(request.leaseOnMiss ? { 'context_cache.lease': lease ? 'granted' : waited ? 'waited' : 'none' } : {}),
        });
        if (read === undefined) return { found: false, nodes: [], info: undefined, lease: lease && leaseToProto(lease) };
        const head = GetSessionNodesResponse.encode({ found: true, nodes: [], info: sessionInfo(read, waited), lease: undefined }).finish();
        return encodeSessionNodes(head, read.session.nodes) as unknown as GetSessionNodesResponse;
      },
      { preEncoded: true },
    ),

    putSessionNodes: calls.unary('PutSessionNodes', async (request) => {
      const sessionId = validate.id(request.sessionId, 'session_id');
      const nodes = validate.nodes(request.nodes, sessionId);
      encodeNodes(nodes);
      validate.servable(
        nodes.reduce((sum, node) => sum + 6 + encodedNode(node).length, 0),
        `the session (${nodes.length} nodes)`,
      );
      const ttlMs = validate.ttl(request.ttl);
      const stored = await sessions.put(sessionId, nodes, request.leaseToken, ttlMs);
      return { info: storedSessionInfo(stored), scope: scopeToProto(stored.scope) };
    }),

    appendNode: calls.unary('AppendNode', async (request) => {
      const node = validate.node(request.node, 'node');
      validate.appendedSummary(node, sessions.cached(node.sessionId));
      const result = await sessions.append(node);
      return { appendedToCachedSession: result.appended, sessionVersion: result.version, scope: scopeToProto(result.scope), previousSessionVersion: result.previousVersion };
    }),

    invalidateSession: calls.unary('InvalidateSession', async (request) => {
      const result = await sessions.invalidate(validate.id(request.sessionId, 'session_id'));
      return { existed: result.existed, scope: scopeToProto(result.scope) };
    }),

    resolveShortIds: calls.unary('ResolveShortIds', async (request) => {
      if (request.shortIds.length === 0) throw invalidArgument('short_ids is empty; send at least one');
      const shortIds = validate.shortIds(request.shortIds, 'short_ids', validate.maxKeysPerCall);
      const sessionId = validate.id(request.sessionId, 'session_id', true);
      const resolution = await sessions.resolveShortIds(shortIds, sessionId || undefined);
      return {
        nodes: shortIds.filter((id, index) => shortIds.indexOf(id) === index && resolution.nodes.has(id)).map((id) => nodeToProto(resolution.nodes.get(id)!)),
        unresolvedShortIds: resolution.unresolved,
      };
    }),

    buildContext: calls.unary(
      'BuildContext',
      async (request, call) => {
        const built = await buildContext(sessions, {
          sessionId: validate.id(request.sessionId, 'session_id'),
          headNodeId: validate.id(request.headNodeId, 'head_node_id', true),
          maxNodes: request.maxNodes,
          maxChars: request.maxChars,
          ...validate.tokenBudget(request, defaultTokenizer),
          includeRefs: request.includeRefs,
          extraRefs: validate.shortIds(request.extraRefs, 'extra_refs', validate.maxKeysPerCall),
          maxRefDepth: request.maxRefDepth,
        });
        call.annotate?.({ 'context_cache.hit': built.sessionFound, 'context_cache.tier': built.source ?? 'none', 'context_cache.node_count': built.items.length, 'context_cache.sessions_missing': built.missingSessionIds.length });
        const head = BuildContextResponse.encode(builtContextHead(built)).finish();
        return encodeContextItems(head, built.items) as unknown as BuildContextResponse;
      },
      { preEncoded: true },
    ),
  };
}
