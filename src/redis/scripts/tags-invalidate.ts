import { PUBLISH_EVENT_LUA } from '../event-wire';
import { TAG_SEPARATOR, TAG_STAMP_TTL_MS } from '../tags';
import { defineScript } from './script';

/**
 * INVALIDATE TAGS in one bucket (keys.ts; one server has one): deletes every
 * entry of the bucket that still carries one of the tags (an entry rewritten
 * without the tag survives), clears the bucket's tag sets, stamps the tags
 * with Redis's clock (for lease fills, see entry-set.ts), and announces what
 * it removed. The first bucket always announces the tags, so every sidecar
 * drops its copies of tagged entries at once; later buckets announce only
 * when they removed keys (a sidecar may have read one back meanwhile).
 *
 * KEYS: the bucket's tag sets (n), its tag stamps (n)
 * ARGV: channel, origin, the bucket's entry key prefix, stamp ttl (ms), announce ('1' always, '0' only if keys were removed), tags (n)
 * Reply: the keys removed.
 */
const LUA = `${PUBLISH_EVENT_LUA}
local t = redis.call('TIME')
local now_us = string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2
local removed = {}
local tags = {}
for i = 1, n do
  local tag = ARGV[i + 5]
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
  redis.call('SET', KEYS[n + i], now_us, 'PX', ARGV[4])
end
if ARGV[5] == '1' or #removed > 0 then publish_event(ARGV[1], ARGV[2], now_ms, {e = 'g', g = tags, k = removed}) end
return removed
`;

export const tagsInvalidate = defineScript({
  name: 'ccTagsInvalidate',
  lua: LUA,
  args: ({ keys, origin }, tags: readonly string[], bucket: number) => ({
    keys: [...tags.map((tag) => keys.tag(tag, bucket)), ...tags.map((tag) => keys.tagStamp(tag, bucket))],
    argv: [keys.channel, origin, keys.entryPrefix(bucket), TAG_STAMP_TTL_MS, bucket === 0 ? '1' : '0', ...tags],
  }),
  parse: (reply) => (reply as unknown[]).map(String),
});
