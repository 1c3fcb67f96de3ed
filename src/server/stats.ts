import type { ValueCodec } from '../cache/codec';
import type { L1Cache } from '../cache/l1';
import type { SharedTier, TieredCache } from '../cache/tiered-cache';
import {
  LinkState,
  type GetStatsResponse,
  type TierStats,
} from '../gen/contextcache/v1/context_cache';
import type { LinkState as CoreLinkState } from '../redis/connection';
import { VERSION } from '../version';
import type { WatchCounters } from './watch';

export interface StatsSource {
  snapshot(): GetStatsResponse;
}

export function tierStats(hits: number, misses: number): TierStats {
  const total = hits + misses;
  return { hits, misses, hitRatio: total === 0 ? 0 : hits / total };
}

const LINK_STATE: Record<CoreLinkState, LinkState> = {
  connecting: LinkState.LINK_STATE_CONNECTING,
  connected: LinkState.LINK_STATE_CONNECTED,
  down: LinkState.LINK_STATE_DOWN,
};

export interface StatsParts {
  namespace: string;
  sidecarId: string;
  l1: L1Cache;
  cache: TieredCache;
  codec: ValueCodec;
  shared: (SharedTier & { subscriber: { state: CoreLinkState; stateSince: number } }) | undefined;
  watch: WatchCounters;
  /** Distributed locks (DistributedLocks.stats). */
  locks: { stats(): NonNullable<GetStatsResponse['locks']> };
}

/** Assembles GetStats from the live counters of the sidecar's parts. */
export class SidecarStats implements StatsSource {
  private readonly startedAt = Date.now();

  constructor(private readonly parts: StatsParts) {}

  snapshot(): GetStatsResponse {
    const { l1, cache, codec, shared, watch } = this.parts;
    const uptimeMs = Date.now() - this.startedAt;
    const disabledSince = new Date(this.startedAt);
    return {
      version: VERSION,
      namespace: this.parts.namespace,
      sidecarId: this.parts.sidecarId,
      uptime: { seconds: Math.floor(uptimeMs / 1000), nanos: (uptimeMs % 1000) * 1e6 },
      l1: {
        reads: tierStats(l1.counters.hits, l1.counters.misses),
        entries: l1.entries,
        bytes: l1.bytes,
        maxBytes: l1.maxBytes,
        evictions: l1.counters.evictions,
        expirations: l1.counters.expirations,
      },
      l2: {
        reads: tierStats(shared?.l2.counters.hits ?? 0, shared?.l2.counters.misses ?? 0),
        state: shared ? LINK_STATE[shared.link.state] : LinkState.LINK_STATE_DISABLED,
        stateSince: shared ? new Date(shared.link.stateSince) : disabledSince,
        latencyP50Us: shared?.link.latency.percentile(50) ?? 0,
        latencyP99Us: shared?.link.latency.percentile(99) ?? 0,
        corruptValues: shared?.l2.counters.corrupt ?? 0,
        errors: cache.counters.l2Errors,
        compressionRatio: codec.ratio,
      },
      pubsub: {
        state: shared ? LINK_STATE[shared.subscriber.state] : LinkState.LINK_STATE_DISABLED,
        stateSince: shared ? new Date(shared.subscriber.stateSince) : disabledSince,
        messagesIn: shared?.bus.counters.messagesIn ?? 0,
        messagesOut: cache.counters.published,
        resyncs: cache.counters.resyncs,
      },
      watch: { openStreams: watch.open, eventsDelivered: watch.delivered, eventsDropped: watch.dropped },
      leases: { ...cache.leases.counters },
      locks: this.parts.locks.stats(),
    };
  }
}
