/*
 * The public surface of `context-cache/client`, named on purpose: what an
 * application needs to call the sidecar. Everything else (generated codecs,
 * the service definition, the near cache's internals) stays internal and
 * may change without notice. Nothing here imports the sidecar's own code.
 */

export { ContextCacheClient } from './client';
export type { BuildContextOptions, ClientCallOptions, ClientOptions, EventStream, NearCacheView } from './client';
export { ContextCacheError, Status } from './errors';
export type { LoadCounters, LoadOptions } from './get-or-load';
export type { NearCacheOptions, NearCacheStats, NearContextResponse, NearGetResponse, NearSessionResponse } from './near-cache';
export type { RetryOptions } from './retry';
export { ResumingWatch } from './watch-stream';
export type { ResumingWatchCounters, ResumingWatchOptions, WatchState } from './watch-stream';

// Enums of the API (values and types).
export {
  InclusionReason,
  KeyChange,
  LinkState,
  RedisMode,
  RedisNodeRole,
  ResyncReason,
  Role,
  SessionChange,
  Source,
  WriteScope,
} from '../gen/contextcache/v1/context_cache';

// Messages: requests, responses and what they carry.
export type {
  AcquireLockRequest,
  AcquireLockResponse,
  AppendNodeRequest,
  AppendNodeResponse,
  BuildContextRequest,
  BuildContextResponse,
  CoherenceChanged,
  ContextNode,
  DeepPartial,
  DeleteRequest,
  DeleteResponse,
  EntryInfo,
  ExtendLockRequest,
  ExtendLockResponse,
  GetManyRequest,
  GetManyResponse,
  GetManyResult,
  GetRequest,
  GetResponse,
  GetSessionNodesRequest,
  GetSessionNodesResponse,
  GetStatsResponse,
  HoldLockRequest,
  HoldLockResponse,
  InvalidateSessionRequest,
  InvalidateSessionResponse,
  InvalidateTagsRequest,
  InvalidateTagsResponse,
  KeyInvalidated,
  L1Stats,
  L2Stats,
  Lease,
  LeaseStats,
  LockStats,
  Node,
  NodeAppended,
  PubSubStats,
  RedisNode,
  RedisTopology,
  PutSessionNodesRequest,
  PutSessionNodesResponse,
  ReleaseLockRequest,
  ReleaseLockResponse,
  ResolveShortIdsRequest,
  ResolveShortIdsResponse,
  Resync,
  SessionInvalidated,
  SetRequest,
  SetResponse,
  TagsInvalidated,
  TierStats,
  WatchRequest,
  WatchResponse,
  WatchResumeToken,
  WatchStarted,
  WatchStats,
} from '../gen/contextcache/v1/context_cache';
