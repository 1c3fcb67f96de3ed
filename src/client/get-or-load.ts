import type {
  DeepPartial,
  GetRequest,
  GetResponse,
  GetSessionNodesRequest,
  GetSessionNodesResponse,
  Node,
  PutSessionNodesRequest,
  PutSessionNodesResponse,
  SetRequest,
  SetResponse,
} from '../gen/contextcache/v1/context_cache';
import { Node as NodeMessage } from '../gen/contextcache/v1/context_cache';
import { Status, toContextCacheError } from './errors';

/**
 * Cache-aside with stampede protection, the lease protocol written once:
 * a Get with lease_on_miss either answers the value (another caller's fill
 * included: the sidecar makes waiters wait for it), or grants this caller
 * the lease; only then does the loader run, and its value is filled with
 * the lease token. A fill refused as stale (the key was written or
 * invalidated after the lease was granted) returns the loaded value without
 * caching it: the newer state stays. A miss without a lease (a wait that
 * ran out) runs the loader and caches nothing: without a lease, a fill
 * could overwrite a newer value.
 */

export interface LoadOptions {
  /** The entry's TTL in ms (default: the sidecar's CONTEXT_CACHE_DEFAULT_TTL). */
  ttlMs?: number;
  /** Tags of the entry. */
  tags?: string[];
  /** How long the fill lease lasts (default: the sidecar's CONTEXT_CACHE_LEASE_TTL, 10 s): waiters wait at most this long for a loader that died. */
  leaseTtlMs?: number;
  /** How long to wait for another caller's fill before loading without caching (default: the lease TTL or the deadline). */
  leaseWaitMs?: number;
  /** Deadline of each call, absolute or ms from now (default: the client's lease deadline). */
  deadline?: Date | number;
  /**
   * Times to read, load and fill again when a fill is refused as stale
   * (default 0: the loaded value is returned, uncached). For a caller that
   * loads to warm the cache rather than to answer: the write that refused
   * the fill has landed by the next try, which usually fills.
   */
  staleRetries?: number;
}

/** What the helpers need of the client. */
export interface LoadingPort {
  get(request: DeepPartial<GetRequest>, options?: { deadline?: Date | number }): Promise<GetResponse>;
  set(request: DeepPartial<SetRequest>, options?: { deadline?: Date | number }): Promise<SetResponse>;
  getSessionNodes(request: DeepPartial<GetSessionNodesRequest>, options?: { deadline?: Date | number }): Promise<GetSessionNodesResponse>;
  putSessionNodes(request: DeepPartial<PutSessionNodesRequest>, options?: { deadline?: Date | number }): Promise<PutSessionNodesResponse>;
  /** Told of a fill that failed for another reason than a stale lease (the loaded value is returned all the same). */
  onFillError(error: unknown): void;
}

export interface LoadCounters {
  /** Loader runs under a lease whose fill was stored. */
  filled: number;
  /** Loader runs whose fill was refused as stale (the value was returned, not cached). */
  staleFills: number;
  /** Loader runs without a lease (a wait for another caller's fill ran out): returned, not cached. */
  uncached: number;
}

const duration = (ms: number | undefined) => (ms === undefined ? undefined : { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });

function isStale(error: unknown): boolean {
  return toContextCacheError(error).code === Status.ABORTED;
}

/** One read, load and fill, and whether its fill was refused as stale. */
type Attempt<T> = () => Promise<{ value: T; stale: boolean }>;

/** Runs `attempt` again while its fill is refused as stale, up to `staleRetries` more times. */
async function retryingStale<T>(staleRetries: number | undefined, attempt: Attempt<T>): Promise<T> {
  for (let retries = staleRetries ?? 0; ; retries--) {
    const { value, stale } = await attempt();
    if (!stale || retries <= 0) return value;
  }
}

/** Stores a loaded value under its lease; true when refused as stale. */
async function fill(port: LoadingPort, counters: LoadCounters, write: () => Promise<unknown>): Promise<boolean> {
  try {
    await write();
    counters.filled++;
    return false;
  } catch (error) {
    if (isStale(error)) {
      counters.staleFills++;
      return true;
    }
    port.onFillError(error);
    return false;
  }
}

export function getOrLoadEntry(
  port: LoadingPort,
  counters: LoadCounters,
  key: string,
  loader: () => Promise<Buffer | Uint8Array | string>,
  options: LoadOptions,
): Promise<Buffer> {
  return retryingStale(options.staleRetries, () => loadEntryOnce(port, counters, key, loader, options));
}

async function loadEntryOnce(
  port: LoadingPort,
  counters: LoadCounters,
  key: string,
  loader: () => Promise<Buffer | Uint8Array | string>,
  options: LoadOptions,
): Promise<{ value: Buffer; stale: boolean }> {
  const call = { deadline: options.deadline };
  const read = await port.get({ key, leaseOnMiss: true, leaseTtl: duration(options.leaseTtlMs), leaseWait: duration(options.leaseWaitMs) }, call);
  if (read.found) return { value: read.value, stale: false };
  const loaded = await loader();
  const value = typeof loaded === 'string' ? Buffer.from(loaded) : Buffer.isBuffer(loaded) ? loaded : Buffer.from(loaded.buffer, loaded.byteOffset, loaded.byteLength);
  if (read.lease === undefined) {
    counters.uncached++;
    return { value, stale: false };
  }
  const token = read.lease.token;
  const stale = await fill(port, counters, () => port.set({ key, value, ttl: duration(options.ttlMs), tags: options.tags ?? [], leaseToken: token }, call));
  return { value, stale };
}

export function getOrLoadSessionNodes(
  port: LoadingPort,
  counters: LoadCounters,
  sessionId: string,
  loader: () => Promise<DeepPartial<Node>[]>,
  options: Omit<LoadOptions, 'tags'>,
): Promise<Node[]> {
  return retryingStale(options.staleRetries, () => loadSessionOnce(port, counters, sessionId, loader, options));
}

async function loadSessionOnce(
  port: LoadingPort,
  counters: LoadCounters,
  sessionId: string,
  loader: () => Promise<DeepPartial<Node>[]>,
  options: Omit<LoadOptions, 'tags'>,
): Promise<{ value: Node[]; stale: boolean }> {
  const call = { deadline: options.deadline };
  const read = await port.getSessionNodes({ sessionId, leaseOnMiss: true, leaseTtl: duration(options.leaseTtlMs), leaseWait: duration(options.leaseWaitMs) }, call);
  if (read.found) return { value: read.nodes, stale: false };
  const nodes = await loader();
  const full = nodes.map((node) => fullNode(node, sessionId));
  if (read.lease === undefined) {
    counters.uncached++;
    return { value: full, stale: false };
  }
  const token = read.lease.token;
  const stale = await fill(port, counters, () => port.putSessionNodes({ sessionId, nodes: full, ttl: duration(options.ttlMs), leaseToken: token }, call));
  return { value: full, stale };
}

/** A loaded node as the sidecar returns it: every field set (the proto's defaults), session_id filled in. */
function fullNode(node: DeepPartial<Node>, sessionId: string): Node {
  return NodeMessage.fromPartial({ ...node, sessionId: node.sessionId || sessionId });
}
