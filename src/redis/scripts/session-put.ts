import { PUBLISH_EVENT_LUA } from '../event-wire';
import { LEASE_LUA, NEXT_VERSION_LUA } from './lib';
import { defineScript } from './script';

/**
 * FILL of a session (PutSessionNodes): replaces it with one chunk. With a
 * lease token, refused unless the token still holds the lease: any append or
 * invalidation since the grant deleted it.
 *
 * KEYS: meta, chunks, lease
 * ARGV: chunk, ttl_ms, lease_token, channel, origin, sid, node_count
 * Reply: {status, version, expires_at}: 1 stored, -3 stale lease.
 */
const LUA = `${NEXT_VERSION_LUA}${LEASE_LUA}${PUBLISH_EVENT_LUA}
if ARGV[3] ~= '' and not lease_holds(KEYS[3], ARGV[3]) then return {-3, '0', '0'} end
local version, now_ms = next_version(redis.call('HGET', KEYS[1], 'v'))
local ttl = tonumber(ARGV[2])
local expires = string.format('%.0f', now_ms + ttl)
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'v', version, 'x', expires, 'n', ARGV[7])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
publish_event(ARGV[4], ARGV[5], now_ms, {e = 's', c = 'fill', s = ARGV[6], v = version})
return {1, version, expires}
`;

export const sessionPut = defineScript({
  name: 'ccSessionPut',
  lua: LUA,
  args: ({ keys, origin }, sessionId: string, chunk: Buffer, nodeCount: number, ttlMs: number, leaseToken: string) => ({
    keys: [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId), keys.lease({ kind: 'session', id: sessionId })],
    argv: [chunk, ttlMs, leaseToken, keys.channel, origin, sessionId, nodeCount],
  }),
  parse: (reply): { version: number; expiresAt: number } | 'stale' => {
    const [status, version, expiresAt] = (reply as unknown[]).map(Number) as [number, number, number];
    return status === -3 ? 'stale' : { version, expiresAt };
  },
});
