import { PUBLISH_EVENT_LUA } from '../event-wire';
import { TAG_SEPARATOR, TAG_STAMP_TTL_MS } from '../tags';
import { defineScript } from './script';

/**
 * INVALIDATE TAGS: deletes every entry that still carries one of the tags
 * (an entry rewritten without the tag survives), clears the tag sets, stamps
 * the tags with Redis's clock (for lease fills, see entry-set.ts), and
 * announces them.
 *
 * KEYS: tag sets (n), tag stamps (n)
 * ARGV: channel, origin, entry key prefix, stamp ttl (ms), tags (n)
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
  local tag = ARGV[i + 4]
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
publish_event(ARGV[1], ARGV[2], now_ms, {e = 'g', g = tags, k = removed})
return removed
`;

export const tagsInvalidate = defineScript({
  name: 'ccTagsInvalidate',
  lua: LUA,
  args: ({ keys, origin }, tags: readonly string[]) => ({
    keys: [...tags.map((tag) => keys.tag(tag)), ...tags.map((tag) => keys.tagStamp(tag))],
    argv: [keys.channel, origin, keys.entryPrefix, TAG_STAMP_TTL_MS, ...tags],
  }),
  parse: (reply) => (reply as unknown[]).map(String),
});
