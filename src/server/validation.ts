import { MAX_LEASE_TTL_MS, type LeaseRequest } from '../cache/leases';
import type { Config } from '../config';
import { invalidArgument, tooLarge } from '../errors';
import { Role, type Node } from '../gen/contextcache/v1/context_cache';
import type { Duration } from '../gen/google/protobuf/duration';
import type { SessionState } from '../context/session';
import type { NodeRecord } from '../model/node';
import { isTokenizer, TOKENIZERS, type TokenizerName } from '../model/tokenizer';
import type { CallContext } from './calls';
import { nodeFromProto } from './mapping';

/**
 * Every limit of the API that is not a setting, named once. The configured
 * ones (key, value and message sizes, keys per call, tags per entry) are in
 * `Config`.
 */
export const LIMITS = {
  /** Entry TTLs. */
  maxTtlMs: 365 * 24 * 3_600_000,
  /** lease_ttl and lease_wait. */
  maxLeaseMs: MAX_LEASE_TTL_MS,
  /** Session, node and parent IDs, metadata keys. */
  maxIdBytes: 256,
  shortId: /^[A-Za-z0-9_-]{1,32}$/,
  maxRefsPerNode: 256,
  maxMetadataEntries: 64,
  maxMetadataValueBytes: 4096,
  maxNodesPerPut: 100_000,
  /**
   * max_tokens and Node.token_count: ten million, five times the largest
   * context windows of 2026; more is a unit mistake (bytes, not tokens).
   */
  maxTokens: 10_000_000,
  /** Lock TTLs: 100 ms to 1 h. */
  minLockTtlMs: 100,
  maxLockTtlMs: 3_600_000,
  maxLockWaitMs: 3_600_000,
  /** HoldLockRequest.ttl when unset. */
  holdDefaultTtlMs: 10_000,
  maxLockTokenBytes: 256,
  /** Entries in each filter list of a Watch, and bytes of all of them together. */
  maxWatchFilters: 1000,
  maxWatchFilterBytes: 64 * 1024,
} as const;

// eslint-disable-next-line no-control-regex
const CONTROL_CHARACTER = /[\x00-\x1f]/;

/** How long a lock acquisition may keep trying. */
export interface LockWait {
  /** wait_timeout, cut short by the call's deadline. */
  ms: number;
  /** Whether the deadline, not wait_timeout, set `ms`: giving up is then DEADLINE_EXCEEDED, not ABORTED. */
  cutByDeadline: boolean;
}

/**
 * Checks what arrives over the wire against the documented limits, naming
 * the field and the rule in the message so that the caller can fix the
 * request without reading our code. Each check returns the value as the
 * core takes it.
 */
export class RequestValidator {
  constructor(private readonly config: Pick<Config, 'maxKeyBytes' | 'maxKeysPerCall' | 'maxValueBytes' | 'maxTagsPerEntry' | 'defaultTtlMs' | 'leaseTtlMs' | 'maxMessageBytes'>) {}

  /**
   * A session is refused at write time when reading it back would exceed
   * the message limit (CONTEXT_CACHE_MAX_MESSAGE_BYTES): stored, it could
   * never be served. `bytes`: its encoded size as GetSessionNodes sends it.
   */
  servable(bytes: number, what: string): void {
    const limit = this.config.maxMessageBytes - 1024;
    if (bytes > limit) throw tooLarge(`${what} encodes to ${bytes} bytes; reading it back must fit in a message of ${this.config.maxMessageBytes} bytes (CONTEXT_CACHE_MAX_MESSAGE_BYTES) with room for the rest of the response, so at most ${limit}`);
  }

  get maxKeysPerCall(): number {
    return this.config.maxKeysPerCall;
  }

  key(key: string, field = 'key'): string {
    if (key.length === 0) throw invalidArgument(`${field} is empty; keys are 1 to ${this.config.maxKeyBytes} bytes of UTF-8`);
    const bytes = Buffer.byteLength(key);
    if (bytes > this.config.maxKeyBytes) {
      throw invalidArgument(`${field} is ${bytes} bytes; the limit is ${this.config.maxKeyBytes} bytes`);
    }
    return key;
  }

  keys(keys: readonly string[], field = 'keys'): string[] {
    if (keys.length === 0) throw invalidArgument(`${field} is empty; send 1 to ${this.config.maxKeysPerCall} keys`);
    if (keys.length > this.config.maxKeysPerCall) {
      throw invalidArgument(`${field} has ${keys.length} entries; the limit is ${this.config.maxKeysPerCall} per call`);
    }
    return keys.map((key, index) => this.key(key, `${field}[${index}]`));
  }

  value(value: Buffer, field = 'value'): Buffer {
    if (value.byteLength > this.config.maxValueBytes) {
      throw invalidArgument(`${field} is ${value.byteLength} bytes; the limit is ${this.config.maxValueBytes} bytes`);
    }
    return value;
  }

  tags(tags: readonly string[], field = 'tags', min = 0): string[] {
    const max = this.config.maxTagsPerEntry;
    if (tags.length < min || tags.length > max) {
      throw invalidArgument(`${field} has ${tags.length} entries; send ${min} to ${max}`);
    }
    return [
      ...new Set(
        tags.map((tag, index) => {
          if (CONTROL_CHARACTER.test(tag)) throw invalidArgument(`${field}[${index}] contains a control character; tags are printable text`);
          return this.key(tag, `${field}[${index}]`);
        }),
      ),
    ];
  }

  /** A TTL in milliseconds; unset or zero means the configured default. */
  ttl(ttl: Duration | undefined, field = 'ttl'): number {
    const ms = this.duration(ttl, field, LIMITS.maxTtlMs);
    return ms === 0 ? this.config.defaultTtlMs : ms;
  }

  /**
   * What a caller asks for with lease_on_miss: the lease's lifetime, and how
   * long to wait for another caller's fill — bounded by the call's deadline
   * and by the lease lifetime.
   */
  leaseRequest(leaseTtl: Duration | undefined, leaseWait: Duration | undefined, call: CallContext): LeaseRequest {
    const ttlMs = this.duration(leaseTtl, 'lease_ttl', LIMITS.maxLeaseMs) || this.config.leaseTtlMs;
    const waitMs = this.duration(leaseWait, 'lease_wait', LIMITS.maxLeaseMs) || ttlMs;
    return { ttlMs, waitUntil: Math.min(Date.now() + waitMs, call.answerBy), callDeadline: call.deadline };
  }

  /** A lock TTL: 100 ms to 1 h; required unless there is a default. */
  lockTtl(duration: Duration | undefined, fallbackMs?: number): number {
    const ms = this.duration(duration, 'ttl', LIMITS.maxLockTtlMs);
    if (ms === 0) {
      if (fallbackMs !== undefined) return fallbackMs;
      throw invalidArgument('ttl is required: how long the lock lasts unless extended, 100 ms to 1 h');
    }
    if (ms < LIMITS.minLockTtlMs) throw invalidArgument(`ttl is ${ms} ms; locks last 100 ms to 1 h`);
    return ms;
  }

  /** wait_timeout of a lock acquisition, cut short by the call's deadline. */
  lockWait(duration: Duration | undefined, call: CallContext): LockWait {
    const requested = this.duration(duration, 'wait_timeout', LIMITS.maxLockWaitMs);
    const left = Math.max(0, call.answerBy - Date.now());
    return { ms: Math.min(requested, left), cutByDeadline: left < requested };
  }

  lockToken(value: string): string {
    if (value === '') throw invalidArgument('token is empty; pass the token that AcquireLock returned');
    if (Buffer.byteLength(value) > LIMITS.maxLockTokenBytes) throw invalidArgument(`token is longer than ${LIMITS.maxLockTokenBytes} bytes; pass the token that AcquireLock returned`);
    return value;
  }

  /** An optional duration in milliseconds, 0 when unset, within [0, maxMs]. */
  duration(duration: Duration | undefined, field: string, maxMs: number): number {
    const ms = durationMs(duration, field);
    if (ms > maxMs) throw invalidArgument(`${field} is ${ms} ms; the limit is ${maxMs} ms`);
    return ms;
  }

  /** A proto enum value that this version knows; 0 (unspecified) only when allowed. */
  enumValue<E extends number>(value: number, known: Record<string, string | number>, field: string, allowUnspecified = false): E {
    const name = known[value];
    if (typeof name !== 'string' || (value === 0 && !allowUnspecified) || value < 0) {
      const allowed = Object.entries(known)
        .filter(([, v]) => typeof v === 'number' && (v !== 0 || allowUnspecified) && v >= 0)
        .map(([k, v]) => `${k} (${v})`)
        .join(', ');
      throw invalidArgument(`${field} ${value} is not a known value; use one of ${allowed}`);
    }
    return value as E;
  }

  /** A session, node or parent ID (or a metadata key): 1 to 256 bytes, no control characters. */
  id(value: string, field: string, optional = false): string {
    if (value === '' && optional) return value;
    if (value === '') throw invalidArgument(`${field} is empty; use 1 to ${LIMITS.maxIdBytes} bytes`);
    const bytes = Buffer.byteLength(value);
    if (bytes > LIMITS.maxIdBytes) throw invalidArgument(`${field} is ${bytes} bytes; the limit is ${LIMITS.maxIdBytes}`);
    if (CONTROL_CHARACTER.test(value)) throw invalidArgument(`${field} contains a control character`);
    return value;
  }

  shortId(value: string, field: string): string {
    if (!LIMITS.shortId.test(value)) {
      throw invalidArgument(`${field} "${value.slice(0, 40)}" is not a short ID; use 1 to 32 characters of A-Z a-z 0-9 _ -`);
    }
    return value;
  }

  shortIds(values: readonly string[], field: string, max: number): string[] {
    if (values.length > max) throw invalidArgument(`${field} has ${values.length} entries; the limit is ${max}`);
    return values.map((value, index) => this.shortId(value, `${field}[${index}]`));
  }

  /** A node of a request; `sessionId`, when given, is the session it must belong to (and fills an empty node.session_id). */
  node(node: Node | undefined, field: string, sessionId?: string): NodeRecord {
    if (node === undefined) throw invalidArgument(`${field} is missing`);
    const session = node.sessionId === '' && sessionId !== undefined ? sessionId : this.id(node.sessionId, `${field}.session_id`);
    if (sessionId !== undefined && session !== sessionId) {
      throw invalidArgument(`${field}.session_id "${node.sessionId}" differs from session_id "${sessionId}"`);
    }
    this.enumValue<Role>(node.role, Role, `${field}.role`);
    const metadata = Object.entries(node.metadata);
    if (metadata.length > LIMITS.maxMetadataEntries) throw invalidArgument(`${field}.metadata has ${metadata.length} entries; the limit is ${LIMITS.maxMetadataEntries}`);
    for (const [key, value] of metadata) {
      this.id(key, `${field}.metadata key`);
      if (Buffer.byteLength(value) > LIMITS.maxMetadataValueBytes) throw invalidArgument(`${field}.metadata["${key}"] is over ${LIMITS.maxMetadataValueBytes} bytes`);
    }
    this.value(Buffer.from(node.content), `${field}.content`);
    const createdAt = node.createdAt?.getTime() ?? 0;
    if (!Number.isSafeInteger(createdAt)) {
      throw invalidArgument(`${field}.created_at is out of range; use a time between years 0001 and 9999`);
    }
    this.id(node.id, `${field}.id`);
    if (node.shortId !== '') this.shortId(node.shortId, `${field}.short_id`);
    this.id(node.parentId, `${field}.parent_id`, true);
    this.shortIds(node.refs, `${field}.refs`, LIMITS.maxRefsPerNode);
    if (node.tokenCount > LIMITS.maxTokens) {
      throw invalidArgument(`${field}.token_count is ${node.tokenCount}; the limit is ${LIMITS.maxTokens} tokens`);
    }
    if (node.tokenCountTokenizer !== '') this.tokenizer(node.tokenCountTokenizer, `${field}.token_count_tokenizer`);
    if (node.summarizesThrough !== '') {
      this.id(node.summarizesThrough, `${field}.summarizes_through`);
      if (node.summarizesThrough === node.id) throw invalidArgument(`${field}.summarizes_through names the node itself; a summary covers nodes before it on its path`);
      if (node.pinned) throw invalidArgument(`${field} is both pinned and a summary (summarizes_through); a node is one or the other`);
    }
    return nodeFromProto(node, session);
  }

  /** A tokenizer name this version counts with. */
  tokenizer(name: string, field: string): TokenizerName {
    if (!isTokenizer(name)) throw invalidArgument(`${field} "${name.slice(0, 40)}" is not a known tokenizer; use one of ${TOKENIZERS.join(', ')}`);
    return name;
  }

  /**
   * BuildContext's token budget: max_tokens within the sanity cap, the
   * tokenizer (the default when unnamed; undefined when no tokens are
   * wanted: neither max_tokens nor tokenizer set) and the summary threshold.
   */
  tokenBudget(request: { maxTokens: number; tokenizer: string; summaryThreshold: number }, defaultTokenizer: TokenizerName): { maxTokens: number; tokenizer: TokenizerName | undefined; summaryThreshold: number } {
    if (request.maxTokens > LIMITS.maxTokens) throw invalidArgument(`max_tokens is ${request.maxTokens}; the limit is ${LIMITS.maxTokens}`);
    const named = request.tokenizer === '' ? undefined : this.tokenizer(request.tokenizer, 'tokenizer');
    const threshold = request.summaryThreshold;
    if (!(threshold >= 0 && threshold <= 1)) throw invalidArgument(`summary_threshold is ${threshold}; use a share of the budget above 0 and at most 1, or 0 for the default (0.7)`);
    const counting = request.maxTokens > 0 || named !== undefined;
    return { maxTokens: request.maxTokens, tokenizer: counting ? (named ?? defaultTokenizer) : undefined, summaryThreshold: threshold };
  }

  /**
   * An appended node's summarizes_through, checked against the session when
   * this sidecar holds it (the node's parent chain in it, or for a node
   * without a parent, any node of it); without the session it cannot be
   * checked, and BuildContext treats a summary it cannot place as an
   * ordinary node.
   */
  appendedSummary(node: NodeRecord, session: SessionState | undefined): void {
    if (!node.summarizesThrough || session === undefined) return;
    const onPath = node.parentId === '' ? session.byId.has(node.summarizesThrough) : ancestorsInclude(session.byId, node.parentId, node.summarizesThrough);
    if (!onPath) throw notOnPath('node', node);
  }

  /** A Watch's filters: each a valid key, at most maxWatchFilters per list and maxWatchFilterBytes in all. */
  watchFilters(keyPrefixes: readonly string[], tags: readonly string[], sessionIds: readonly string[]): [string[], string[], string[]] {
    let bytes = 0;
    const list = (values: readonly string[], field: string) => {
      if (values.length > LIMITS.maxWatchFilters) throw invalidArgument(`${field} has ${values.length} entries; the limit is ${LIMITS.maxWatchFilters}`);
      return values.map((value, i) => {
        bytes += Buffer.byteLength(value);
        return this.key(value, `${field}[${i}]`);
      });
    };
    const filters: [string[], string[], string[]] = [list(keyPrefixes, 'key_prefixes'), list(tags, 'tags'), list(sessionIds, 'session_ids')];
    if (bytes > LIMITS.maxWatchFilterBytes) throw invalidArgument(`the filters hold ${bytes} bytes; the limit is ${LIMITS.maxWatchFilterBytes} in all`);
    return filters;
  }

  /** PutSessionNodes' nodes. */
  nodes(nodes: readonly Node[], sessionId: string): NodeRecord[] {
    if (nodes.length > LIMITS.maxNodesPerPut) throw invalidArgument(`nodes has ${nodes.length} entries; the limit is ${LIMITS.maxNodesPerPut}`);
    const first = new Map<string, number>();
    const records = nodes.map((node, index) => {
      const record = this.node(node, `nodes[${index}]`, sessionId);
      const seen = first.get(record.id);
      if (seen !== undefined) throw invalidArgument(`nodes[${index}].id "${record.id.slice(0, 80)}" repeats nodes[${seen}].id; node IDs are unique within a session`);
      first.set(record.id, index);
      return record;
    });
    let byId: Map<string, NodeRecord> | undefined;
    records.forEach((record, index) => {
      if (!record.summarizesThrough) return;
      byId ??= new Map(records.map((r) => [r.id, r]));
      const before = first.get(record.summarizesThrough);
      const onPath = record.parentId === '' ? before !== undefined && before < index : ancestorsInclude(byId, record.parentId, record.summarizesThrough);
      if (!onPath) throw notOnPath(`nodes[${index}]`, record);
    });
    return records;
  }
}

/** Whether the chain of parents from `parentId` (that node included) reaches `wanted`; safe against cycles. */
function ancestorsInclude(byId: ReadonlyMap<string, NodeRecord>, parentId: string, wanted: string): boolean {
  const seen = new Set<string>();
  for (let node = byId.get(parentId); node !== undefined && !seen.has(node.id); node = byId.get(node.parentId)) {
    if (node.id === wanted) return true;
    seen.add(node.id);
  }
  return false;
}

function notOnPath(field: string, node: NodeRecord) {
  const where = node.parentId === '' ? 'is not one of the nodes before it in the session (it has no parent_id)' : 'is not on its path (the chain of its parent_id)';
  return invalidArgument(`${field}.summarizes_through "${node.summarizesThrough!.slice(0, 80)}" ${where}; a summary covers the conversation up to a node before it`);
}

function durationMs(duration: Duration | undefined, field: string): number {
  if (duration === undefined) return 0;
  const { seconds, nanos } = duration;
  if (seconds < 0 || nanos < 0) throw invalidArgument(`${field} is negative; use a positive duration or leave it unset for the default`);
  if (nanos > 999_999_999) throw invalidArgument(`${field}.nanos ${nanos} is out of range 0 to 999999999`);
  return seconds * 1000 + Math.ceil(nanos / 1e6);
}
