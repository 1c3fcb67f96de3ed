import type { SessionRead, SessionStore } from '../context/session-store';
import { buildContext, type Inclusion } from '../context/build-context';
import type { NodeRecord } from '../context/node';
import { invalidArgument } from '../errors';
import {
  BuildContextResponse,
  GetSessionNodesResponse,
  InclusionReason,
  Role,
  Source,
  type ContextCacheServer,
  type EntryInfo,
  type Node,
} from '../gen/contextcache/v1/context_cache';
import { encodedNode, encodeNodes, lengthPrefix, stringField, varintField, withRepeated } from './encoding';
import type { CallTracker } from './calls';
import { leaseToProto, SCOPE, SOURCE } from './context-cache-service';
import type { RequestValidator } from './validation';
import { nodeToProto } from './watch';

export type ContextHandlers = Pick<
  ContextCacheServer,
  'getSessionNodes' | 'putSessionNodes' | 'appendNode' | 'invalidateSession' | 'resolveShortIds' | 'buildContext'
>;

const SHORT_ID = /^[A-Za-z0-9_-]{1,32}$/;
const MAX_ID_BYTES = 256;
const MAX_REFS = 256;
const MAX_METADATA_ENTRIES = 64;
const MAX_METADATA_VALUE_BYTES = 4096;
const MAX_NODES_PER_PUT = 100_000;

const INCLUSION: Record<Inclusion, InclusionReason> = {
  conversation: InclusionReason.INCLUSION_REASON_CONVERSATION,
  reference: InclusionReason.INCLUSION_REASON_REFERENCE,
  'extra-ref': InclusionReason.INCLUSION_REASON_EXTRA_REF,
};

/** ContextNode.reason (field 2), encoded once. */
const REASON_FIELDS = Object.fromEntries(Object.entries(INCLUSION).map(([inclusion, reason]) => [inclusion, varintField(2, reason)])) as Record<Inclusion, Buffer>;

/** Checks the identifiers and sizes of the context API. */
export class ContextValidator {
  constructor(private readonly validate: RequestValidator) {}

  id(value: string, field: string, optional = false): string {
    if (value === '' && optional) return value;
    if (value === '') throw invalidArgument(`${field} is empty; use 1 to ${MAX_ID_BYTES} bytes`);
    const bytes = Buffer.byteLength(value);
    if (bytes > MAX_ID_BYTES) throw invalidArgument(`${field} is ${bytes} bytes; the limit is ${MAX_ID_BYTES}`);
    // eslint-disable-next-line no-control-regex
    if (/[\x00-\x1f]/.test(value)) throw invalidArgument(`${field} contains a control character`);
    return value;
  }

  shortId(value: string, field: string): string {
    if (!SHORT_ID.test(value)) {
      throw invalidArgument(`${field} "${value.slice(0, 40)}" is not a short ID; use 1 to 32 characters of A-Z a-z 0-9 _ -`);
    }
    return value;
  }

  shortIds(values: readonly string[], field: string, max: number): string[] {
    if (values.length > max) throw invalidArgument(`${field} has ${values.length} entries; the limit is ${max}`);
    return values.map((value, index) => this.shortId(value, `${field}[${index}]`));
  }

  node(node: Node | undefined, field: string, sessionId?: string): NodeRecord {
    if (node === undefined) throw invalidArgument(`${field} is missing`);
    const session = node.sessionId === '' && sessionId !== undefined ? sessionId : this.id(node.sessionId, `${field}.session_id`);
    if (sessionId !== undefined && session !== sessionId) {
      throw invalidArgument(`${field}.session_id "${node.sessionId}" differs from session_id "${sessionId}"`);
    }
    const role = this.validate.enumValue<Role>(node.role, Role, `${field}.role`);
    const metadata = Object.entries(node.metadata);
    if (metadata.length > MAX_METADATA_ENTRIES) throw invalidArgument(`${field}.metadata has ${metadata.length} entries; the limit is ${MAX_METADATA_ENTRIES}`);
    for (const [key, value] of metadata) {
      this.id(key, `${field}.metadata key`);
      if (Buffer.byteLength(value) > MAX_METADATA_VALUE_BYTES) throw invalidArgument(`${field}.metadata["${key}"] is over ${MAX_METADATA_VALUE_BYTES} bytes`);
    }
    this.validate.value(Buffer.from(node.content), `${field}.content`);
    const createdAt = node.createdAt?.getTime() ?? 0;
    if (!Number.isSafeInteger(createdAt)) {
      throw invalidArgument(`${field}.created_at is out of range; use a time between years 0001 and 9999`);
    }
    return {
      id: this.id(node.id, `${field}.id`),
      shortId: node.shortId === '' ? '' : this.shortId(node.shortId, `${field}.short_id`),
      sessionId: session,
      parentId: this.id(node.parentId, `${field}.parent_id`, true),
      role,
      content: node.content,
      createdAt,
      metadata: { ...node.metadata },
      refs: this.shortIds(node.refs, `${field}.refs`, MAX_REFS),
    };
  }
}

function sessionInfo(read: SessionRead, waited: boolean): EntryInfo {
  return {
    version: read.version,
    expiresAt: read.expiresAt === 0 ? undefined : new Date(read.expiresAt),
    tags: [],
    source: SOURCE[read.source],
    sizeBytes: read.session.sizeBytes,
    waitedForFill: waited,
  };
}

/** The conversation-context RPCs: translate, validate, delegate to the SessionStore. */
export function contextHandlers(deps: { sessions: SessionStore; validate: RequestValidator; calls: CallTracker; maxKeysPerCall: number }): ContextHandlers {
  const { sessions, validate, calls } = deps;
  const check = new ContextValidator(validate);

  return {
    getSessionNodes: calls.unary('GetSessionNodes', async (request, call) => {
      const sessionId = check.id(request.sessionId, 'session_id');
      const { read, lease, waited } = request.leaseOnMiss
        ? await sessions.getOrLease(sessionId, validate.leaseRequest(request.leaseTtl, request.leaseWait, call.getDeadline()))
        : { read: await sessions.get(sessionId), lease: undefined, waited: false };
      if (read === undefined) return { found: false, nodes: [], info: undefined, lease: lease && leaseToProto(lease) };
      // Pre-encoded: the service definition passes Buffers through (encoding.ts).
      const head = GetSessionNodesResponse.encode({ found: true, nodes: [], info: sessionInfo(read, waited), lease: undefined }).finish();
      encodeNodes(read.session.nodes);
      return withRepeated(head, 2, read.session.nodes.map((node) => [encodedNode(node)])) as unknown as GetSessionNodesResponse;
    }),

    putSessionNodes: calls.unary('PutSessionNodes', async (request) => {
      const sessionId = check.id(request.sessionId, 'session_id');
      if (request.nodes.length > MAX_NODES_PER_PUT) throw invalidArgument(`nodes has ${request.nodes.length} entries; the limit is ${MAX_NODES_PER_PUT}`);
      const nodes = request.nodes.map((node, index) => check.node(node, `nodes[${index}]`, sessionId));
      const ttlMs = validate.ttl(request.ttl);
      const stored = await sessions.put(sessionId, nodes, request.leaseToken, ttlMs);
      return {
        info: { version: stored.version, expiresAt: new Date(stored.expiresAt), tags: [], source: Source.SOURCE_UNSPECIFIED, sizeBytes: 0, waitedForFill: false },
        scope: SCOPE[stored.scope],
      };
    }),

    appendNode: calls.unary('AppendNode', async (request) => {
      const node = check.node(request.node, 'node');
      const result = await sessions.append(node);
      return { appendedToCachedSession: result.appended, sessionVersion: result.version, scope: SCOPE[result.scope] };
    }),

    invalidateSession: calls.unary('InvalidateSession', async (request) => {
      const result = await sessions.invalidate(check.id(request.sessionId, 'session_id'));
      return { existed: result.existed, scope: SCOPE[result.scope] };
    }),

    resolveShortIds: calls.unary('ResolveShortIds', async (request) => {
      if (request.shortIds.length === 0) throw invalidArgument('short_ids is empty; send at least one');
      const shortIds = check.shortIds(request.shortIds, 'short_ids', deps.maxKeysPerCall);
      const sessionId = check.id(request.sessionId, 'session_id', true);
      const resolution = await sessions.resolveShortIds(shortIds, sessionId || undefined);
      return {
        nodes: shortIds.filter((id, index) => shortIds.indexOf(id) === index && resolution.nodes.has(id)).map((id) => nodeToProto(resolution.nodes.get(id)!)),
        unresolvedShortIds: resolution.unresolved,
      };
    }),

    buildContext: calls.unary('BuildContext', async (request) => {
      const built = await buildContext(sessions, {
        sessionId: check.id(request.sessionId, 'session_id'),
        headNodeId: check.id(request.headNodeId, 'head_node_id', true),
        maxNodes: request.maxNodes,
        maxChars: request.maxChars,
        includeRefs: request.includeRefs,
        extraRefs: check.shortIds(request.extraRefs, 'extra_refs', deps.maxKeysPerCall),
        maxRefDepth: request.maxRefDepth,
      });
      const head = BuildContextResponse.encode({
        sessionFound: built.sessionFound,
        nodes: [],
        unresolvedShortIds: built.unresolvedShortIds,
        missingSessionIds: built.missingSessionIds,
        droppedNodes: built.droppedNodes,
        totalChars: built.totalChars,
        sessionVersion: built.sessionVersion,
        source: built.source === undefined ? Source.SOURCE_UNSPECIFIED : SOURCE[built.source],
      }).finish();
      // repeated ContextNode nodes = 2 { Node node = 1; InclusionReason reason = 2; string referenced_by = 3; }
      encodeNodes(built.items.map((item) => item.node));
      const items = built.items.map((item) => {
        const node = encodedNode(item.node);
        return [lengthPrefix(1, node.length), node, REASON_FIELDS[item.reason], stringField(3, item.referencedBy)];
      });
      // Pre-encoded: the service definition passes Buffers through (encoding.ts).
      return withRepeated(head, 2, items) as unknown as BuildContextResponse;
    }),
  };
}
