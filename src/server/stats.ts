import type { L1Cache } from '../cache/l1';
import {
  LinkState,
  type GetStatsResponse,
  type TierStats,
} from '../gen/contextcache/v1/context_cache';
import { VERSION } from '../version';
import type { CallTracker } from './calls';

export interface StatsSource {
  snapshot(): GetStatsResponse;
}

export function tierStats(hits: number, misses: number): TierStats {
  const total = hits + misses;
  return { hits, misses, hitRatio: total === 0 ? 0 : hits / total };
}

/** Assembles GetStats from the live counters of the sidecar's parts. */
export class SidecarStats implements StatsSource {
  private readonly startedAt = Date.now();

  constructor(
    private readonly parts: { namespace: string; sidecarId: string; l1: L1Cache; calls: CallTracker },
  ) {}

  snapshot(): GetStatsResponse {
    const { l1, calls } = this.parts;
    const uptimeMs = Date.now() - this.startedAt;
    const since = new Date(this.startedAt);
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
        reads: tierStats(0, 0),
        state: LinkState.LINK_STATE_DISABLED,
        stateSince: since,
        latencyP50Us: 0,
        latencyP99Us: 0,
        corruptValues: 0,
        errors: 0,
        compressionRatio: 1,
      },
      pubsub: { state: LinkState.LINK_STATE_DISABLED, stateSince: since, messagesIn: 0, messagesOut: 0, resyncs: 0 },
      watch: { openStreams: calls.openStreams, eventsDelivered: 0, eventsDropped: 0 },
      leases: { granted: 0, waits: 0, staleFillsRefused: 0 },
      locks: { acquired: 0, busy: 0, held: 0 },
    };
  }
}
