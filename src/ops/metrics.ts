import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EventHub } from '../cache/event-hub';
import { LinkState, RedisNodeRole, type GetStatsResponse } from '../gen/contextcache/v1/context_cache';

const PREFIX = 'context_cache_';

/**
 * Process and runtime metrics (CPU, memory, event loop lag, GC) belong to
 * the process, not to a sidecar: collected once, in a registry of their own
 * — their collectors (an event-loop monitor, a GC observer) cannot be
 * stopped, so one per Sidecar would pile up where several run in one
 * process (tests).
 */
let processRegistry: Registry | undefined;

function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/** A counter mirrored from a monotonic value we already keep: increments by the difference at each scrape. */
class MirroredCounter<L extends string> {
  private readonly last = new Map<string, number>();
  readonly counter: Counter<L>;

  constructor(registry: Registry, name: string, help: string, labelNames: readonly L[] = []) {
    this.counter = new Counter({ name: PREFIX + name, help, labelNames, registers: [registry] });
  }

  set(value: number, labels: Partial<Record<L, string>> = {}): void {
    const key = JSON.stringify(labels);
    const previous = this.last.get(key) ?? 0;
    if (value > previous) this.counter.inc(labels, value - previous);
    this.last.set(key, value);
  }
}

/**
 * Prometheus metrics of one sidecar, in a registry of its own. Counters and
 * gauges are read from the same live counters GetStats reports, at scrape
 * time (no second bookkeeping that could drift); only durations are
 * observed as they happen.
 */
export class Metrics {
  readonly registry = new Registry();
  readonly rpcDuration: Histogram<'method' | 'code'>;
  readonly redisDuration: Histogram<never>;
  readonly propagation: Histogram<never>;
  private latest: GetStatsResponse | undefined;
  /** The histogram's child per method and code: prom-client hashes a labels object on every observe otherwise. */
  private readonly rpcChildren = new Map<string, { observe(seconds: number): void }>();
  /** Takes a fresh snapshot and brings the mirrored counters up to it. */
  private readonly refresh: () => GetStatsResponse;

  /** One finished unary call (or one refused before its handler ran). Methods and codes are few: the children stay few. */
  observeRpc(method: string, code: number, seconds: number): void {
    const key = `${method} ${code}`;
    let child = this.rpcChildren.get(key);
    if (child === undefined) this.rpcChildren.set(key, (child = this.rpcDuration.labels({ method, code: String(code) })));
    child.observe(seconds);
  }

  constructor(snapshot: () => GetStatsResponse, events: EventHub, sidecarId: string, health: () => Record<string, string>) {
    const registry = this.registry;
    processMetrics();
    this.rpcDuration = new Histogram({
      name: PREFIX + 'rpc_duration_seconds',
      help: 'Unary RPC latency by method and gRPC status code.',
      labelNames: ['method', 'code'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers: [registry],
    });
    this.redisDuration = new Histogram({
      name: PREFIX + 'redis_command_duration_seconds',
      help: 'Round trip of Redis operations (scripts and pipelines) on the command link.',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1],
      registers: [registry],
    });
    this.propagation = new Histogram({
      name: PREFIX + 'pubsub_propagation_seconds',
      help: "Lag from another sidecar's write (Redis clock) to its event arriving here.",
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1],
      registers: [registry],
    });
    events.subscribe((envelope) => {
      const lag = Date.now() - envelope.time;
      if (envelope.origin !== sidecarId && envelope.event.kind !== 'resync' && Number.isFinite(lag)) this.propagation.observe(Math.max(0, lag) / 1000);
    });

    const reads = new MirroredCounter(registry, 'reads_total', 'Reads by tier and result.', ['tier', 'result']);
    const evictions = new MirroredCounter(registry, 'l1_evictions_total', 'Entries evicted from L1 to stay within its byte bound.');
    const expirations = new MirroredCounter(registry, 'l1_expirations_total', 'Entries dropped from L1 because their TTL ran out.');
    const redisErrors = new MirroredCounter(registry, 'redis_errors_total', 'Operations that failed because Redis was away (served from L1 instead).');
    const corrupt = new MirroredCounter(registry, 'corrupt_values_total', 'Unreadable values found in Redis (deleted, treated as misses).');
    const pubsub = new MirroredCounter(registry, 'pubsub_messages_total', 'Pub/Sub events received from other sidecars and published by this one.', ['direction']);
    const malformed = new MirroredCounter(registry, 'pubsub_malformed_total', 'Pub/Sub messages refused: not of the format, or with a version implausibly far ahead of Redis\'s clock.');
    const resyncs = new MirroredCounter(registry, 'resyncs_total', 'L1 flushes with a Resync to every watcher (lost events or lost Redis data).');
    const watchEvents = new MirroredCounter(registry, 'watch_events_total', 'Watch events delivered to streams, and dropped for streams that fell behind.', ['result']);
    const leases = new MirroredCounter(registry, 'leases_total', 'Fill leases granted, reads that waited for a fill, stale fills refused.', ['outcome']);
    const locks = new MirroredCounter(registry, 'locks_total', 'Distributed lock acquisitions, and acquisitions that stayed busy.', ['outcome']);
    const replayed = new MirroredCounter(registry, 'invalidations_replayed_total', 'Invalidations of writes that stayed local (Redis away), replayed into Redis once it was back.');
    const namespaceFlushes = new MirroredCounter(registry, 'namespace_flushes_total', 'Namespace-wide invalidations: more writes stayed local than this sidecar keeps track of.');
    const recoveryFlushes = new MirroredCounter(registry, 'recovery_flushes_total', 'Namespace flushes in Redis this sidecar made after Redis lost data or a primary was replaced (a failover, a restart).');

    const gauge = (name: string, help: string, labelNames: string[], collect: (g: Gauge<string>, s: GetStatsResponse) => void) =>
      new Gauge({
        name: PREFIX + name,
        help,
        labelNames,
        registers: [registry],
        collect() {
          collect(this, current());
        },
      });

    // One snapshot per scrape (taken in render), shared by every collector of that scrape.
    const current = (): GetStatsResponse => this.latest ?? this.refresh();
    this.refresh = (): GetStatsResponse => {
      const s = snapshot();
      this.latest = s;
      reads.set(s.l1!.reads!.hits, { tier: 'l1', result: 'hit' });
      reads.set(s.l1!.reads!.misses, { tier: 'l1', result: 'miss' });
      reads.set(s.l2!.reads!.hits, { tier: 'l2', result: 'hit' });
      reads.set(s.l2!.reads!.misses, { tier: 'l2', result: 'miss' });
      evictions.set(s.l1!.evictions);
      expirations.set(s.l1!.expirations);
      redisErrors.set(s.l2!.errors);
      corrupt.set(s.l2!.corruptValues);
      pubsub.set(s.pubsub!.messagesIn, { direction: 'in' });
      pubsub.set(s.pubsub!.messagesOut, { direction: 'out' });
      resyncs.set(s.pubsub!.resyncs);
      malformed.set(s.pubsub!.malformedMessages);
      watchEvents.set(s.watch!.eventsDelivered, { result: 'delivered' });
      watchEvents.set(s.watch!.eventsDropped, { result: 'dropped' });
      leases.set(s.leases!.granted, { outcome: 'granted' });
      leases.set(s.leases!.waits, { outcome: 'waited' });
      leases.set(s.leases!.staleFillsRefused, { outcome: 'stale_fill_refused' });
      locks.set(s.locks!.acquired, { outcome: 'acquired' });
      locks.set(s.locks!.busy, { outcome: 'busy' });
      replayed.set(s.l2!.replayedInvalidations);
      namespaceFlushes.set(s.l2!.namespaceFlushes);
      recoveryFlushes.set(s.l2!.recoveryFlushes);
      return s;
    };
    gauge('l1_entries', 'Entries in L1 now.', [], (g, s) => g.set(s.l1!.entries));
    gauge('l1_bytes', 'Bytes held by L1 now (keys, values, bookkeeping).', [], (g, s) => g.set(s.l1!.bytes));
    gauge('l1_max_bytes', 'The configured bound of L1.', [], (g, s) => g.set(s.l1!.maxBytes));
    gauge('redis_up', '1 when the Redis link is connected (commands) or subscribed (subscriber); -1 when Redis is not configured.', ['link'], (g, s) => {
      const up = (state: LinkState) => (state === LinkState.LINK_STATE_DISABLED ? -1 : state === LinkState.LINK_STATE_CONNECTED ? 1 : 0);
      g.set({ link: 'commands' }, up(s.l2!.state));
      g.set({ link: 'subscriber' }, up(s.pubsub!.state));
    });
    gauge('redis_node_up', '1 for each Redis server the sidecar reaches now, 0 for one it knows and does not reach (every Cluster node; the one server or Sentinel-named primary).', ['address', 'role'], (g, s) => {
      // Nodes come and go with failovers: only the current ones are reported.
      g.reset();
      for (const node of s.l2!.topology?.nodes ?? []) g.set({ address: node.address, role: node.role === RedisNodeRole.REDIS_NODE_ROLE_REPLICA ? 'replica' : 'primary' }, node.reachable ? 1 : 0);
    });
    gauge('redis_slots_served', 'Cluster hash slots whose primary the sidecar reaches now (16384 when all are served; 0 off a Cluster).', [], (g, s) => {
      const nodes = s.l2!.topology?.nodes ?? [];
      g.set(nodes.reduce((sum, node) => sum + (node.reachable ? node.slots : 0), 0));
    });
    gauge('pending_invalidations', 'Writes that stayed local and wait to be invalidated in Redis (writes answer LOCAL until 0).', [], (g, s) => g.set(s.l2!.pendingInvalidations));
    gauge('compression_ratio', 'Stored bytes per raw byte of values written to Redis (lower is better).', [], (g, s) => g.set(s.l2!.compressionRatio));
    gauge('watch_streams', 'Open Watch streams.', [], (g, s) => g.set(s.watch!.openStreams));
    gauge('locks_held', 'Locks acquired through this sidecar and not released.', [], (g, s) => g.set(s.locks!.held));
    gauge('health_serving', '1 when a health service name reports SERVING.', ['service'], (g) => {
      for (const [service, status] of Object.entries(health())) g.set({ service: service === '' ? 'overall' : service }, status === 'SERVING' ? 1 : 0);
    });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    this.refresh();
    const merged = Registry.merge([processMetrics(), this.registry]);
    return { contentType: this.registry.contentType, body: await merged.metrics() };
  }
}
