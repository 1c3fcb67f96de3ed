import type { EntryWrite, EntryWriteOutcome } from '../../cache/ports';
import { PUBLISH_EVENT_LUA } from '../event-wire';
import { TAG_SEPARATOR } from '../tags';
import { LEASE_LUA, NEXT_VERSION_LUA } from './lib';
import { defineScript } from './script';

/**
 * SET of a generic entry: lease and compare-and-set checks, the write, the
 * tag index, the revocation of outstanding fill leases and the Pub/Sub
 * announcement in one atomic step, so no write can go unannounced and no
 * older fill can follow it. A fill is also refused when one of its tags was
 * invalidated after its lease was granted (the database row may have changed
 * in between). Tag sets are sorted by expiry and pruned of expired members
 * on every write.
 *
 * KEYS: entry, lease, tag sets (n), tag stamps (n) — the tag sets and stamps
 * of the entry's bucket (keys.ts), so on a Cluster they share its slot
 * ARGV: data, ttl_ms, if_version, if_absent, channel, origin, key, lease_token, tags (n)
 * Reply: {status, version, expires_at}: status 1 written, -1 exists, -2 version mismatch, -3 stale lease.
 */
const LUA = `${NEXT_VERSION_LUA}${LEASE_LUA}${PUBLISH_EVENT_LUA}
local n = #ARGV - 8
if ARGV[8] ~= '' then
  if not lease_holds(KEYS[2], ARGV[8]) then return {-3, '0', '0'} end
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
publish_event(ARGV[5], ARGV[6], now_ms, {e = 'k', c = 'set', k = {ARGV[7]}, v = {v}, g = tags})
return {1, v, expires}
`;

export const entrySet = defineScript({
  name: 'ccEntrySet',
  lua: LUA,
  args: ({ keys, origin }, key: string, data: Buffer, write: EntryWrite) => ({
    keys: [keys.entry(key), keys.lease({ kind: 'entry', id: key }), ...write.tags.map((tag) => keys.tag(tag, keys.bucket(key))), ...write.tags.map((tag) => keys.tagStamp(tag, keys.bucket(key)))],
    argv: [data, write.ttlMs, write.ifVersion, write.ifAbsent ? '1' : '0', keys.channel, origin, key, write.leaseToken, ...write.tags],
  }),
  parse: (reply): EntryWriteOutcome => {
    const [status, version, expiresAt] = (reply as unknown[]).map(Number) as [number, number, number];
    switch (status) {
      case 1:
        return { status: 'written', version, expiresAt };
      case -1:
        return { status: 'exists', version };
      case -2:
        return { status: 'version-mismatch', version };
      default:
        return { status: 'stale-lease' };
    }
  },
});
