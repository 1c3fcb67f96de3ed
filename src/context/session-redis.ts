import { isAscii } from 'node:buffer';
import type Redis from 'ioredis';
import { CorruptValueError, type ValueCodec } from '../cache/codec';
import type { KeySpace } from '../cache/l2';
import type { LatencyWindow } from '../ops/latency';
import { LEASE_LUA, NEXT_VERSION_LUA } from '../redis/lua';
import type { NodeRecord } from './node';

/**
 * Redis layout of a session. All keys of one session share the hash tag
 * `{<session id>}`, so every script below touches a single Redis Cluster slot.
 *
 *   cc:<ns>:s:{<sid>}     hash: v (version), x (expires at, ms), n (node count)
 *   cc:<ns>:s:{<sid>}:c   list of chunks: encoded JSON arrays of nodes; a fill
 *                         writes one (compressed) chunk, each append pushes one
 *   cc:<ns>:s:{<sid>}:l   the fill lease (a Mutex key)
 *   cc:<ns>:i:<short id>  short-ID index: the session that holds the node
 */
export class SessionKeys {
  constructor(private readonly keys: KeySpace) {}

  meta(sessionId: string): string {
    return `${this.keys.prefix}s:{${sessionId}}`;
  }

  chunks(sessionId: string): string {
    return `${this.meta(sessionId)}:c`;
  }

  lease(sessionId: string): string {
    return `${this.meta(sessionId)}:l`;
  }

  shortId(shortId: string): string {
    return `${this.keys.prefix}i:${shortId}`;
  }

  get channel(): string {
    return this.keys.channel;
  }
}


/** KEYS: meta, chunks. Returns {} for a miss, else {version, expires_at, node_count, chunk...}. */
const READ_SCRIPT = `
local meta = redis.call('HMGET', KEYS[1], 'v', 'x', 'n')
if not meta[1] then return {} end
local result = {meta[1], meta[2] or '0', meta[3] or '0'}
for _, chunk in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do result[#result + 1] = chunk end
return result
`;

/**
 * Fill (PutSessionNodes). With a lease token, refused unless the token still
 * holds the lease: any append or invalidation since the grant deleted it.
 * KEYS: meta, chunks, lease.  ARGV: chunk, ttl_ms, lease_token, channel, origin, sid, count.
 * Returns {status, version, expires_at}: 1 stored, -3 stale lease.
 */
const PUT_SCRIPT = `${NEXT_VERSION_LUA}${LEASE_LUA}
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= lease_base(ARGV[3]) then return {-3, '0', '0'} end
local version, now_ms = next_version(redis.call('HGET', KEYS[1], 'v'))
local ttl = tonumber(ARGV[2])
local expires = string.format('%.0f', now_ms + ttl)
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'v', version, 'x', expires, 'n', ARGV[7])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PUBLISH', ARGV[4], cjson.encode({o = ARGV[5], t = string.format('%.0f', now_ms), e = 's', c = 'fill', s = ARGV[6], v = version}))
return {1, version, expires}
`;

/**
 * Write-through append. Revokes outstanding fill leases first, so a fill
 * that loaded the session before this node cannot land after it; appends to
 * the cached session when there is one. The event carries the node itself
 * (live sync) and the previous version (so a sidecar can tell whether its
 * copy is exactly the predecessor).
 * KEYS: meta, chunks, lease.  ARGV: chunk, channel, origin, sid, node_json.
 * Returns {appended, version, previous_version, expires_at}.
 */
const APPEND_SCRIPT = `${NEXT_VERSION_LUA}
redis.call('DEL', KEYS[3])
local meta = redis.call('HMGET', KEYS[1], 'v', 'x')
local previous = meta[1]
local version, now_ms = next_version(previous)
local appended = 0
if previous and redis.call('EXISTS', KEYS[2]) == 0 then
  -- The chunks were evicted without the metadata: the session is gone, not appendable.
  redis.call('DEL', KEYS[1])
  previous = nil
end
if previous then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'v', version)
  redis.call('HINCRBY', KEYS[1], 'n', 1)
  appended = 1
end
local message = cjson.encode({o = ARGV[3], t = string.format('%.0f', now_ms), e = 'n', s = ARGV[4], v = version, p = previous or '0'})
redis.call('PUBLISH', ARGV[2], string.sub(message, 1, -2) .. ',"n":' .. ARGV[5] .. '}')
return {appended, version, previous or '0', meta[2] or '0'}
`;

/**
 * KEYS: meta, chunks, lease.  ARGV: channel, origin, sid.
 * Returns {existed, version}.
 */
const INVALIDATE_SCRIPT = `${NEXT_VERSION_LUA}
local previous = redis.call('HGET', KEYS[1], 'v')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local version, now_ms = next_version(previous)
redis.call('PUBLISH', ARGV[1], cjson.encode({o = ARGV[2], t = string.format('%.0f', now_ms), e = 's', c = 'inv', s = ARGV[3], v = version}))
if previous then return {1, version} end
return {0, version}
`;

/**
 * Rewrites many append chunks as one compressed chunk, only if the session
 * is still at the version that was read (the content is the same, so the
 * version does not change). KEYS: meta, chunks.  ARGV: version, chunk.
 */
const COMPACT_SCRIPT = `
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[2])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
`;

type Reply = (string | Buffer | number)[];

/** UTF-8 to string; pure ASCII (most chat text) takes the much faster latin1 path, which reads it the same. */
function text(bytes: Buffer): string {
  return isAscii(bytes) ? bytes.toString('latin1') : bytes.toString('utf8');
}

interface SessionScripts extends Redis {
  ccSessionReadBuffer(...args: (string | number)[]): Promise<Buffer[]>;
  ccSessionPut(...args: (string | number | Buffer)[]): Promise<Reply>;
  ccSessionAppend(...args: (string | number | Buffer)[]): Promise<Reply>;
  ccSessionInvalidate(...args: (string | number)[]): Promise<Reply>;
  ccSessionCompact(...args: (string | number | Buffer)[]): Promise<number>;
}

export interface StoredSession {
  nodes: NodeRecord[];
  version: number;
  expiresAt: number;
  chunks: number;
}

/** Chunks beyond this many (one per append) are compacted into one on the next read. */
const COMPACT_AFTER_CHUNKS = 16;

/** The Redis tier of sessions and the short-ID index. Throws when Redis fails; the caller degrades. */
export class SessionRedis {
  private readonly redis: SessionScripts;
  readonly counters = { corrupt: 0, compactions: 0 };

  constructor(
    redis: Redis,
    readonly keys: SessionKeys,
    private readonly codec: ValueCodec,
    private readonly origin: string,
    private readonly onCorrupt: (sessionId: string, error: CorruptValueError) => void,
    private readonly latency: LatencyWindow,
  ) {
    redis.defineCommand('ccSessionRead', { numberOfKeys: 2, lua: READ_SCRIPT, readOnly: true });
    redis.defineCommand('ccSessionPut', { numberOfKeys: 3, lua: PUT_SCRIPT });
    redis.defineCommand('ccSessionAppend', { numberOfKeys: 3, lua: APPEND_SCRIPT });
    redis.defineCommand('ccSessionInvalidate', { numberOfKeys: 3, lua: INVALIDATE_SCRIPT });
    redis.defineCommand('ccSessionCompact', { numberOfKeys: 2, lua: COMPACT_SCRIPT });
    this.redis = redis as SessionScripts;
  }

  /** Reads several sessions in one round trip (a pipeline of atomic reads). */
  async getMany(sessionIds: readonly string[]): Promise<(StoredSession | undefined)[]> {
    const pipeline = this.redis.pipeline();
    for (const id of sessionIds) (pipeline as unknown as SessionScripts).ccSessionReadBuffer(this.keys.meta(id), this.keys.chunks(id));
    const replies = (await this.latency.time(pipeline.exec())) ?? [];
    return sessionIds.map((id, index) => {
      const [error, reply] = replies[index] ?? [new Error('no reply')];
      if (error) throw error;
      return this.parse(id, reply as Buffer[]);
    });
  }

  async put(sessionId: string, nodes: readonly NodeRecord[], ttlMs: number, leaseToken: string): Promise<{ version: number; expiresAt: number } | 'stale'> {
    const chunk = this.codec.encode(Buffer.from(JSON.stringify(nodes))).bytes;
    const reply = await this.latency.time(this.redis.ccSessionPut(
      this.keys.meta(sessionId),
      this.keys.chunks(sessionId),
      this.keys.lease(sessionId),
      chunk,
      ttlMs,
      leaseToken,
      this.keys.channel,
      this.origin,
      sessionId,
      nodes.length,
    ));
    if (Number(reply[0]) === -3) return 'stale';
    return { version: Number(reply[1]), expiresAt: Number(reply[2]) };
  }

  async append(node: NodeRecord): Promise<{ appended: boolean; version: number; previousVersion: number; expiresAt: number }> {
    const json = JSON.stringify(node);
    const chunk = this.codec.encode(Buffer.from(`[${json}]`)).bytes;
    const id = node.sessionId;
    const reply = await this.latency.time(
      this.redis.ccSessionAppend(this.keys.meta(id), this.keys.chunks(id), this.keys.lease(id), chunk, this.keys.channel, this.origin, id, json),
    );
    return { appended: Number(reply[0]) === 1, version: Number(reply[1]), previousVersion: Number(reply[2]), expiresAt: Number(reply[3]) };
  }

  async invalidate(sessionId: string): Promise<{ existed: boolean; version: number }> {
    const reply = await this.latency.time(
      this.redis.ccSessionInvalidate(this.keys.meta(sessionId), this.keys.chunks(sessionId), this.keys.lease(sessionId), this.keys.channel, this.origin, sessionId),
    );
    return { existed: Number(reply[0]) === 1, version: Number(reply[1]) };
  }

  /** Points short IDs at their session, for cross-session references. */
  async indexShortIds(nodes: readonly NodeRecord[], ttlMs: number): Promise<void> {
    const pipeline = this.redis.pipeline();
    let count = 0;
    for (const node of nodes) {
      if (node.shortId === '') continue;
      pipeline.set(this.keys.shortId(node.shortId), node.sessionId, 'PX', ttlMs);
      count++;
    }
    if (count > 0) await pipeline.exec();
  }

  /** The session each short ID belongs to, as far as the index knows. */
  async lookupShortIds(shortIds: readonly string[]): Promise<(string | undefined)[]> {
    if (shortIds.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const id of shortIds) pipeline.get(this.keys.shortId(id));
    const replies = (await pipeline.exec()) ?? [];
    return replies.map(([error, value]) => {
      if (error) throw error;
      return (value as string | null) ?? undefined;
    });
  }

  /** Compacts many append chunks into one; best effort, skipped if the session changed meanwhile. */
  async compact(sessionId: string, stored: StoredSession): Promise<void> {
    const chunk = this.codec.encode(Buffer.from(JSON.stringify(stored.nodes))).bytes;
    const done = await this.redis.ccSessionCompact(this.keys.meta(sessionId), this.keys.chunks(sessionId), stored.version, chunk);
    if (done === 1) this.counters.compactions++;
  }

  needsCompaction(stored: StoredSession): boolean {
    return stored.chunks > COMPACT_AFTER_CHUNKS;
  }

  private parse(sessionId: string, reply: Buffer[]): StoredSession | undefined {
    if (reply.length === 0) return undefined;
    try {
      const version = Number(reply[0]!.toString());
      if (!Number.isSafeInteger(version) || version <= 0) throw new CorruptValueError(`session version "${reply[0]!.toString()}" is not a number`);
      const nodes: NodeRecord[] = [];
      for (const chunk of reply.slice(3)) {
        const parsed: unknown = JSON.parse(text(this.codec.decode(chunk)));
        if (!Array.isArray(parsed)) throw new CorruptValueError('a session chunk is not a list of nodes');
        for (const node of parsed as NodeRecord[]) nodes.push(node);
      }
      const expected = Number(reply[2]!.toString());
      // Metadata and chunks are two keys: an eviction can take one without the other.
      if (nodes.length !== expected) throw new CorruptValueError(`session holds ${nodes.length} nodes, its metadata says ${expected}`);
      return { nodes, version, expiresAt: Number(reply[1]!.toString()), chunks: reply.length - 3 };
    } catch (error) {
      const corrupt = error instanceof CorruptValueError ? error : new CorruptValueError(`session does not decode (${(error as Error).message})`);
      this.counters.corrupt++;
      this.onCorrupt(sessionId, corrupt);
      this.redis.del(this.keys.meta(sessionId), this.keys.chunks(sessionId)).catch(() => undefined);
      return undefined;
    }
  }
}
