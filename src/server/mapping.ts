import type { LeaseGrant } from '../cache/leases';
import type { BuiltContext } from '../context/build-context';
import type { Inclusion } from '../prompt/context-rules';
import type { SessionRead } from '../context/sessions';
import {
  InclusionReason,
  KeyChange,
  LinkState,
  RedisMode,
  RedisNodeRole,
  type RedisTopology,
  ResyncReason as ProtoResyncReason,
  SessionChange,
  Source,
  WriteScope as ProtoWriteScope,
  type AcquireLockResponse,
  type BuildContextResponse,
  type EntryInfo,
  type Lease,
  type Node,
  type WatchResponse,
} from '../gen/contextcache/v1/context_cache';
import type { LockGrant } from '../locks/hold';
import type { Entry, Tier, WriteScope } from '../model/entry';
import type { CacheEvent, ResyncReason } from '../model/events';
import type { NodeRecord } from '../model/node';
import type { LinkState as CoreLinkState } from '../redis/connection';
import type { TopologyView } from '../redis/shared';

/**
 * Every conversion between the core's plain types and the proto's messages,
 * in both directions: the one place where the wire's shapes (Timestamps,
 * enums, oneofs) meet the core's (epoch milliseconds, string unions).
 */

const SOURCE: Record<Tier, Source> = { l1: Source.SOURCE_L1, l2: Source.SOURCE_L2 };

export function sourceToProto(source: Tier | undefined): Source {
  return source === undefined ? Source.SOURCE_UNSPECIFIED : SOURCE[source];
}

const SCOPE: Record<WriteScope, ProtoWriteScope> = { local: ProtoWriteScope.WRITE_SCOPE_LOCAL, shared: ProtoWriteScope.WRITE_SCOPE_SHARED };

export function scopeToProto(scope: WriteScope): ProtoWriteScope {
  return SCOPE[scope];
}

const timestamp = (epochMs: number): Date | undefined => (epochMs === 0 ? undefined : new Date(epochMs));

/** A read's info; `read` undefined for a write's answer (nothing was read). */
export function entryInfo(entry: Entry, read?: { source: Tier; degraded: boolean }, waitedForFill = false): EntryInfo {
  return {
    version: entry.version,
    expiresAt: timestamp(entry.expiresAt),
    tags: [...entry.tags],
    source: sourceToProto(read?.source),
    sizeBytes: entry.value.byteLength,
    waitedForFill,
    degraded: read?.degraded ?? false,
  };
}

export function sessionInfo(read: SessionRead, waitedForFill: boolean): EntryInfo {
  return {
    version: read.version,
    expiresAt: timestamp(read.expiresAt),
    tags: [],
    source: sourceToProto(read.source),
    sizeBytes: read.session.sizeBytes,
    waitedForFill,
    degraded: read.degraded,
  };
}

/** PutSessionNodes' info: what was stored (no source: nothing was read). */
export function storedSessionInfo(stored: { version: number; expiresAt: number }): EntryInfo {
  return { version: stored.version, expiresAt: new Date(stored.expiresAt), tags: [], source: Source.SOURCE_UNSPECIFIED, sizeBytes: 0, waitedForFill: false, degraded: false };
}

export function leaseToProto(lease: LeaseGrant): Lease {
  return { token: lease.token, expiresAt: new Date(lease.expiresAt) };
}

export function nodeToProto(node: NodeRecord): Node {
  return {
    id: node.id,
    shortId: node.shortId,
    sessionId: node.sessionId,
    parentId: node.parentId,
    role: node.role,
    content: node.content,
    createdAt: timestamp(node.createdAt),
    metadata: { ...node.metadata },
    refs: [...node.refs],
    tokenCount: node.tokenCount ?? 0,
    tokenCountTokenizer: node.tokenCountTokenizer ?? '',
    pinned: node.pinned ?? false,
    summarizesThrough: node.summarizesThrough ?? '',
  };
}

/** A validated proto Node as the core keeps it; `sessionId` fills an empty node.session_id. */
export function nodeFromProto(node: Node, sessionId: string): NodeRecord {
  return {
    id: node.id,
    shortId: node.shortId,
    sessionId,
    parentId: node.parentId,
    role: node.role,
    content: node.content,
    createdAt: node.createdAt?.getTime() ?? 0,
    metadata: { ...node.metadata },
    refs: [...node.refs],
    // Absent unless set, so that JSON in Redis carries only what the app gave.
    ...(node.tokenCount !== 0 && { tokenCount: node.tokenCount }),
    ...(node.tokenCountTokenizer !== '' && { tokenCountTokenizer: node.tokenCountTokenizer }),
    ...(node.pinned && { pinned: true }),
    ...(node.summarizesThrough !== '' && { summarizesThrough: node.summarizesThrough }),
  };
}

export const INCLUSION: Record<Inclusion, InclusionReason> = {
  conversation: InclusionReason.INCLUSION_REASON_CONVERSATION,
  reference: InclusionReason.INCLUSION_REASON_REFERENCE,
  'extra-ref': InclusionReason.INCLUSION_REASON_EXTRA_REF,
  summary: InclusionReason.INCLUSION_REASON_SUMMARY,
};

/** BuildContextResponse without its nodes (they are appended pre-encoded). */
export function builtContextHead(built: BuiltContext): BuildContextResponse {
  return {
    sessionFound: built.sessionFound,
    nodes: [],
    unresolvedShortIds: built.unresolvedShortIds,
    missingSessionIds: built.missingSessionIds,
    droppedNodes: built.droppedNodes,
    totalChars: built.totalChars,
    sessionVersion: built.sessionVersion,
    source: sourceToProto(built.source),
    degraded: built.degraded,
    totalTokens: built.totalTokens,
    budgetUsed: built.budgetUsed,
    needsSummary: built.needsSummary,
    tokenizer: built.tokenizer ?? '',
    uncutTokens: built.uncutTokens,
  };
}

export function lockToProto(grant: LockGrant): AcquireLockResponse {
  return { token: grant.token, fencingToken: grant.fence, expiresAt: new Date(grant.expiresAt) };
}

const RESYNC_REASON: Record<ResyncReason, ProtoResyncReason> = {
  'subscription-restored': ProtoResyncReason.RESYNC_REASON_SUBSCRIPTION_RESTORED,
  'redis-data-lost': ProtoResyncReason.RESYNC_REASON_REDIS_DATA_LOST,
  'stream-overflow': ProtoResyncReason.RESYNC_REASON_STREAM_OVERFLOW,
  'namespace-flushed': ProtoResyncReason.RESYNC_REASON_NAMESPACE_FLUSHED,
  'resume-gap': ProtoResyncReason.RESYNC_REASON_RESUME_GAP,
};

/** A core event as WatchResponse's `event` oneof. */
export function eventToProto(event: CacheEvent): WatchResponse['event'] {
  switch (event.kind) {
    case 'key':
      return {
        $case: 'keyInvalidated',
        value: { key: event.key, change: event.change === 'set' ? KeyChange.KEY_CHANGE_SET : KeyChange.KEY_CHANGE_DELETED, version: event.version, tags: [...event.tags] },
      };
    case 'tags':
      return { $case: 'tagsInvalidated', value: { tags: [...event.tags], keys: [...event.keys] } };
    case 'session':
      return {
        $case: 'sessionInvalidated',
        value: {
          sessionId: event.sessionId,
          change: event.change === 'filled' ? SessionChange.SESSION_CHANGE_FILLED : SessionChange.SESSION_CHANGE_INVALIDATED,
          version: event.version,
        },
      };
    case 'node':
      return { $case: 'nodeAppended', value: { node: nodeToProto(event.node), sessionVersion: event.sessionVersion, previousSessionVersion: event.previousVersion } };
    case 'resync':
      return { $case: 'resync', value: { reason: RESYNC_REASON[event.reason] } };
  }
}

const LINK_STATE: Record<CoreLinkState, LinkState> = {
  connecting: LinkState.LINK_STATE_CONNECTING,
  connected: LinkState.LINK_STATE_CONNECTED,
  down: LinkState.LINK_STATE_DOWN,
};

/** A Redis link's state; DISABLED when Redis is not configured. */
export function linkStateToProto(state: CoreLinkState | undefined): LinkState {
  return state === undefined ? LinkState.LINK_STATE_DISABLED : LINK_STATE[state];
}

const REDIS_MODE = { single: RedisMode.REDIS_MODE_SINGLE, cluster: RedisMode.REDIS_MODE_CLUSTER, sentinel: RedisMode.REDIS_MODE_SENTINEL } as const;

/** The Redis deployment as the sidecar sees it; undefined (L1-only): mode unspecified, no nodes. */
export function topologyToProto(view: TopologyView | undefined): RedisTopology {
  if (view === undefined) return { mode: RedisMode.REDIS_MODE_UNSPECIFIED, nodes: [], allSlotsServed: false };
  return {
    mode: REDIS_MODE[view.mode],
    nodes: view.nodes.map((node) => ({
      address: node.address,
      role: node.role === 'primary' ? RedisNodeRole.REDIS_NODE_ROLE_PRIMARY : RedisNodeRole.REDIS_NODE_ROLE_REPLICA,
      reachable: node.reachable,
      slots: node.slots,
    })),
    allSlotsServed: view.allSlotsServed,
  };
}
