/**
 * What happened in the cache, as the core reports it: to this sidecar's Watch
 * streams, whether it happened here or on another sidecar. Events name keys,
 * tags and sessions with versions; the only payload they carry is an
 * appended node, because live sync is what that event is for.
 */
import type { NodeRecord } from './node';

export type ResyncReason = 'subscription-restored' | 'redis-data-lost' | 'stream-overflow' | 'namespace-flushed' | 'resume-gap';

export type CacheEvent =
  | { kind: 'key'; key: string; change: 'set' | 'deleted'; version: number; tags: readonly string[] }
  | { kind: 'tags'; tags: readonly string[]; keys: readonly string[] }
  | { kind: 'session'; sessionId: string; change: 'invalidated' | 'filled'; version: number }
  | { kind: 'node'; node: NodeRecord; sessionVersion: number; previousVersion: number }
  | { kind: 'resync'; reason: ResyncReason };

export interface EventEnvelope {
  event: CacheEvent;
  /** The sidecar where it happened. */
  origin: string;
  /** Epoch milliseconds on the origin's clock. */
  time: number;
}

/**
 * Another sidecar appended a node: the bus says which (never the node
 * itself: events carry no values). The receiver fetches the node from Redis
 * when it needs it, and turns the hint into a `node` event — or, when it
 * cannot confirm the node, into a `session` invalidation.
 */
export interface AppendedHint {
  kind: 'appended';
  sessionId: string;
  nodeId: string;
  sessionVersion: number;
  previousVersion: number;
}

/** What arrives from other sidecars: untrusted hints, resolved by the core before anyone sees them. */
export type RemoteEvent = Exclude<CacheEvent, { kind: 'node' }> | AppendedHint;

export interface RemoteEnvelope {
  event: RemoteEvent;
  origin: string;
  time: number;
}
