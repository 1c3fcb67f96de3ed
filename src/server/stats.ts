import type { L1Cache } from '../cache/l1';
import type { Tiers } from '../cache/tiers';
import type { GetStatsResponse, TierStats } from '../gen/contextcache/v1/context_cache';
import type { DistributedLocks } from '../locks/distributed-locks';
import type { ValueCodec } from '../redis/codec';
import type { RedisTier } from '../redis/shared';
import { VERSION } from '../version';
import { linkStateToProto, topologyToProto } from './mapping';
import type { WatchCounters } from './watch';

export function tierStats(hits: number, misses: number): TierStats {
  const total = hits + misses;
  return { hits, misses, hitRatio: total === 0 ? 0 : hits / total };
}

export interface StatsParts {
  namespace: string;
  sidecarId: string;
  l1: L1Cache;
  tiers: Tiers;
  codec: ValueCodec;
  redis: RedisTier | undefined;
  watch: WatchCounters;
  locks: DistributedLocks;
}

/** Assembles GetStats from the live counters of the sidecar's parts. */
export class SidecarStats {
  private readonly startedAt = Date.now();

  constructor(private readonly parts: StatsParts) {}

  snapshot(): GetStatsResponse {
    const { l1, tiers, codec, redis, watch } = this.parts;
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
        reads: tierStats(redis?.entries.counters.hits ?? 0, redis?.entries.counters.misses ?? 0),
        state: linkStateToProto(redis?.link.state),
        stateSince: redis ? new Date(redis.link.stateSince) : disabledSince,
        latencyP50Us: redis?.link.latency.percentile(50) ?? 0,
        latencyP99Us: redis?.link.latency.percentile(99) ?? 0,
        corruptValues: (redis?.entries.counters.corrupt ?? 0) + (redis?.sessions.counters.corrupt ?? 0) + (redis?.leases.counters.corrupt ?? 0),
        errors: tiers.counters.l2Errors,
        compressionRatio: codec.ratio,
        pendingInvalidations: tiers.pending.size + (tiers.pending.overflowed ? 1 : 0),
        replayedInvalidations: tiers.counters.replayed,
        namespaceFlushes: tiers.counters.namespaceFlushes,
        topology: topologyToProto(redis?.topology()),
        recoveryFlushes: redis?.recoveries.flushed ?? 0,
      },
      pubsub: {
        state: linkStateToProto(redis?.subscriber.state),
        stateSince: redis ? new Date(redis.subscriber.stateSince) : disabledSince,
        messagesIn: redis?.bus.counters.messagesIn ?? 0,
        messagesOut: tiers.counters.published,
        resyncs: tiers.counters.resyncs,
        malformedMessages: (redis?.bus.counters.malformed ?? 0) + tiers.implausibleEvents,
      },
      watch: { openStreams: watch.open, eventsDelivered: watch.delivered, eventsDropped: watch.dropped },
      leases: { ...tiers.leases.counters },
      locks: this.parts.locks.stats(),
    };
  }
}
