import type Redis from 'ioredis';
import { conflict } from '../errors';
import { CorruptValueError, type ValueCodec } from './codec';
import type { LatencyWindow } from '../ops/latency';
import { LEASE_LUA, NEXT_VERSION_LUA } from '../redis/lua';
import type { Entry } from './l1';

/**
 * Redis key layout of one namespace. Generic entries carry no hash tag, so a
 * Redis Cluster spreads them; everything one script touches is named in its
 * KEYS.
 */
export class KeySpace {
  readonly prefix: string;
  readonly channel: string;

  constructor(readonly namespace: string) {
    this.prefix = `cc:${namespace}:`;
    this.channel = `cc:${namespace}:events`;
  }

  entry(key: string): string {
    return `${this.prefix}e:${key}`;
  }

  /** The keys carrying a tag: a sorted set scored by their expiry. */
  tag(tag: string): string {
    return `${this.prefix}tz:${tag}`;
  }

  /** When a tag was last invalidated (Redis µs): fills under older leases that would carry it are refused. */
  tagStamp(tag: string): string {
    return `${this.prefix}ts:${tag}`;
  }

  /** The fill lease of a generic key (a Mutex key: its value is the holder's token). */
  lease(key: string): string {
    return `${this.prefix}l:${key}`;
  }

  /** A distributed lock (a Mutex key on every lock master: its value is the holder's token). */
  lock(resource: string): string {
    return `${this.prefix}lock:${resource}`;
  }

  /** The fencing counter of a lock's resource, on every lock master; kept without TTL. */
  fence(resource: string): string {
    return `${this.prefix}fence:${resource}`;
  }

  /** Written once per namespace; missing after a reconnect means Redis lost its data. */
  get epoch(): string {
    return `${this.prefix}epoch`;
  }
}

/** Separates tags in the stored tag field; tags may not contain it (validated at the edge). */
export const TAG_SEPARATOR = '\x1f';


/**
 * SET: lease and compare-and-set checks, the write, the tag index, the
 * revocation of outstanding fill leases and the Pub/Sub announcement in one
 * atomic step, so no write can go unannounced and no older fill can follow it.
 * A fill is also refused when one of its tags was invalidated after its lease
 * was granted (the database row may have changed in between).
 * Tag sets are sorted by expiry and pruned of expired members on every write.
 * KEYS: entry, lease, tag sets (n), tag stamps (n)
 * ARGV: data, ttl_ms, if_version, if_absent, channel, origin, key, lease_token, tags (n)
 * Returns {status, version, expires_at}: status 1 written, -1 exists, -2 version mismatch, -3 stale lease.
 */
const SET_SCRIPT = `${NEXT_VERSION_LUA}${LEASE_LUA}
local n = #ARGV - 8
if ARGV[8] ~= '' then
  if redis.call('GET', KEYS[2]) ~= lease_base(ARGV[8]) then return {-3, '0', '0'} end
  local granted = lease_granted_at(ARGV[8])
  for i = 1, n do
    local stamp = tonumber(redis.call('GET', KEYS[2 + n + i]) or '0') or 0
    if stamp > 0 and stamp >= granted then
      -- The lease is spent: free it, so the next reader gets a lease at once instead of waiting out its TTL.
      redis.call('DEL', KEYS[2])
      return {-3, '0', '0'}
    end
  end
end
redis.call('DEL', KEYS[2])
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[4] == '1' and current then return {-1, current, '0'} end
if ARGV[3] ~= '0' and current ~= ARGV[3] then return {-2, current or '0', '0'} end
local v, now_ms = next_version(current)
local ttl = tonumber(ARGV[2])
local expires = string.format('%.0f', now_ms + ttl)
local tags = {}
for i = 9, #ARGV do tags[#tags + 1] = ARGV[i] end
local tag_field = ''
if #tags > 0 then tag_field = '${TAG_SEPARATOR}' .. table.concat(tags, '${TAG_SEPARATOR}') .. '${TAG_SEPARATOR}' end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[1], 'x', expires, 't', tag_field)
redis.call('PEXPIRE', KEYS[1], ttl)
for i = 3, 2 + n do
  redis.call('ZADD', KEYS[i], expires, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.0f', now_ms))
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
redis.call('PUBLISH', ARGV[5], cjson.encode({o = ARGV[6], t = string.format('%.0f', now_ms), e = 'k', c = 'set', k = {ARGV[7]}, v = {v}, g = tags}))
return {1, v, expires}
`;

/**
 * DELETE: removes entries, revokes their fill leases, and announces them
 * with a tombstone version each.
 * KEYS: entries..., leases...  ARGV: channel, origin, keys...
 * Returns {existed_count, versions...}.
 */
const DELETE_SCRIPT = `${NEXT_VERSION_LUA}
local existed = 0
local versions = {}
local keys = {}
local now_ms = 0
local n = #KEYS / 2
for i = 1, n do
  local current = redis.call('HGET', KEYS[i], 'v')
  if current then existed = existed + 1 end
  redis.call('DEL', KEYS[i], KEYS[n + i])
  versions[i], now_ms = next_version(current)
  keys[i] = ARGV[i + 2]
end
redis.call('PUBLISH', ARGV[1], cjson.encode({o = ARGV[2], t = string.format('%.0f', now_ms), e = 'k', c = 'del', k = keys, v = versions}))
local result = {existed}
for i = 1, #versions do result[#result + 1] = versions[i] end
return result
`;

/**
 * INVALIDATE TAGS: deletes every entry that still carries one of the tags
 * (an entry rewritten without the tag survives), clears the tag sets, stamps
 * the tags with Redis's clock (for lease fills, see SET), and announces them.
 * KEYS: tag sets (n), tag stamps (n).  ARGV: channel, origin, entry prefix, tags (n).
 * Returns the keys removed.
 */
const INVALIDATE_TAGS_SCRIPT = `
local t = redis.call('TIME')
local now_us = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local n = #KEYS / 2
local removed = {}
local tags = {}
for i = 1, n do
  local tag = ARGV[i + 3]
  tags[i] = tag
  local needle = '${TAG_SEPARATOR}' .. tag .. '${TAG_SEPARATOR}'
  for _, key in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    local entry = ARGV[3] .. key
    local field = redis.call('HGET', entry, 't')
    if field and string.find(field, needle, 1, true) and redis.call('DEL', entry) == 1 then
      removed[#removed + 1] = key
    end
  end
  redis.call('DEL', KEYS[i])
  -- Leases live at most 10 minutes: so does the stamp.
  redis.call('SET', KEYS[n + i], now_us, 'PX', 600000)
end
redis.call('PUBLISH', ARGV[1], cjson.encode({o = ARGV[2], t = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), e = 'g', g = tags, k = removed}))
return removed
`;

type ScriptReply = (string | number | Buffer)[];

interface ScriptedRedis extends Redis {
  ccSet(...args: (string | Buffer | number)[]): Promise<ScriptReply>;
  ccDelete(...args: (string | number)[]): Promise<ScriptReply>;
  ccInvalidateTags(...args: (string | number)[]): Promise<string[]>;
}

export interface L2SetOptions {
  ttlMs: number;
  tags: readonly string[];
  ifVersion: number;
  ifAbsent: boolean;
  /** A fill under this lease; '' for a plain write. */
  leaseToken: string;
}

export interface L2Counters {
  hits: number;
  misses: number;
  corrupt: number;
}

/**
 * The Redis tier of the generic cache. Every method throws when Redis fails;
 * the caller (TieredCache) decides how to degrade.
 */
export class L2Store {
  readonly counters: L2Counters = { hits: 0, misses: 0, corrupt: 0 };
  private readonly redis: ScriptedRedis;

  constructor(
    redis: Redis,
    readonly keys: KeySpace,
    private readonly codec: ValueCodec,
    private readonly origin: string,
    private readonly onCorrupt: (key: string, error: CorruptValueError) => void,
    private readonly latency: LatencyWindow,
  ) {
    redis.defineCommand('ccSet', { lua: SET_SCRIPT });
    redis.defineCommand('ccDelete', { lua: DELETE_SCRIPT });
    redis.defineCommand('ccInvalidateTags', { lua: INVALIDATE_TAGS_SCRIPT });
    this.redis = redis as ScriptedRedis;
  }

  async get(key: string): Promise<Entry | undefined> {
    const [entry] = await this.getMany([key]);
    return entry;
  }

  /** One round trip for all keys (a pipeline of HMGETs). */
  async getMany(keys: readonly string[]): Promise<(Entry | undefined)[]> {
    const pipeline = this.redis.pipeline();
    for (const key of keys) pipeline.hmgetBuffer(this.keys.entry(key), 'v', 'd', 'x', 't');
    const replies = (await this.latency.time(pipeline.exec())) ?? [];
    return keys.map((key, index) => {
      const [error, fields] = replies[index] ?? [new Error('no reply')];
      if (error && /^WRONGTYPE/.test(error.message)) return this.discard(key, new CorruptValueError('not a context-cache entry (wrong Redis type)'));
      if (error) throw error;
      return this.parse(key, fields as (Buffer | null)[]);
    });
  }

  /** Throws E_CONFLICT for a failed condition; `staleLease` makes the error for a stale lease. */
  async set(key: string, value: Buffer, options: L2SetOptions, staleLease: () => Error): Promise<Entry> {
    const encoded = this.codec.encode(value);
    const reply = await this.latency.time(this.redis.ccSet(
      2 + options.tags.length * 2,
      this.keys.entry(key),
      this.keys.lease(key),
      ...options.tags.map((tag) => this.keys.tag(tag)),
      ...options.tags.map((tag) => this.keys.tagStamp(tag)),
      encoded.bytes,
      options.ttlMs,
      options.ifVersion,
      options.ifAbsent ? '1' : '0',
      this.keys.channel,
      this.origin,
      key,
      options.leaseToken,
      ...options.tags,
    ));
    const status = Number(reply[0]);
    const version = Number(reply[1]);
    if (status === -3) throw staleLease();
    if (status === -1) throw conflict(`key "${key}" exists (version ${version}); if_absent refused the write`);
    if (status === -2) {
      throw conflict(
        version === 0
          ? `key "${key}" does not exist; if_version ${options.ifVersion} refused the write`
          : `key "${key}" has version ${version}, not ${options.ifVersion}; if_version refused the write`,
      );
    }
    return { value, version, tags: options.tags, expiresAt: Number(reply[2]) };
  }

  /** Returns how many existed and the tombstone version of each key. */
  async delete(keys: readonly string[]): Promise<{ existed: number; versions: number[] }> {
    const reply = await this.latency.time(
      this.redis.ccDelete(
        keys.length * 2,
        ...keys.map((key) => this.keys.entry(key)),
        ...keys.map((key) => this.keys.lease(key)),
        this.keys.channel,
        this.origin,
        ...keys,
      ),
    );
    return { existed: Number(reply[0]), versions: reply.slice(1).map(Number) };
  }

  /** Redis's clock in microseconds: lease grant times are compared with tag stamps on this clock. */
  async clockUs(): Promise<number> {
    const [seconds, micros] = await this.redis.time();
    return Number(seconds) * 1_000_000 + Number(micros);
  }

  /** Returns the keys removed. */
  async invalidateTags(tags: readonly string[]): Promise<string[]> {
    return this.latency.time(this.redis.ccInvalidateTags(tags.length * 2, ...tags.map((tag) => this.keys.tag(tag)), ...tags.map((tag) => this.keys.tagStamp(tag)), this.keys.channel, this.origin, this.keys.prefix + 'e:', ...tags));
  }

  private parse(key: string, fields: (Buffer | null)[]): Entry | undefined {
    const [version, data, expiresAt, tagField] = fields;
    if (version == null || data == null) {
      this.counters.misses++;
      return undefined;
    }
    try {
      const entry: Entry = {
        value: this.codec.decode(data),
        version: Number(version.toString()),
        expiresAt: Number(expiresAt?.toString() ?? '0'),
        tags: parseTags(tagField?.toString() ?? ''),
      };
      if (!Number.isSafeInteger(entry.version) || entry.version <= 0) throw new CorruptValueError(`version "${version.toString()}" is not a number`);
      this.counters.hits++;
      return entry;
    } catch (error) {
      if (!(error instanceof CorruptValueError)) throw error;
      return this.discard(key, error);
    }
  }

  /** An unreadable value is a miss; removing it lets the next fill repair it. */
  private discard(key: string, error: CorruptValueError): undefined {
    this.counters.corrupt++;
    this.counters.misses++;
    this.onCorrupt(key, error);
    this.redis.del(this.keys.entry(key)).catch(() => undefined);
    return undefined;
  }
}

function parseTags(field: string): string[] {
  return field === '' ? [] : field.slice(1, -1).split(TAG_SEPARATOR);
}
