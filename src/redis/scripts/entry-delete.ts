import { PUBLISH_EVENT_LUA } from '../event-wire';
import { NEXT_VERSION_LUA } from './lib';
import { defineScript } from './script';

/**
 * DELETE of generic entries: removes them, revokes their fill leases, and
 * announces them with a tombstone version each.
 *
 * KEYS: entries (n), leases (n)
 * ARGV: channel, origin, keys (n)
 * Reply: {existed_count, versions (n)}.
 */
const LUA = `${NEXT_VERSION_LUA}${PUBLISH_EVENT_LUA}
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
publish_event(ARGV[1], ARGV[2], now_ms, {e = 'k', c = 'del', k = keys, v = versions})
local result = {existed}
for i = 1, #versions do result[#result + 1] = versions[i] end
return result
`;

export const entryDelete = defineScript({
  name: 'ccEntryDelete',
  lua: LUA,
  args: ({ keys, origin }, names: readonly string[]) => ({
    keys: [...names.map((key) => keys.entry(key)), ...names.map((key) => keys.lease({ kind: 'entry', id: key }))],
    argv: [keys.channel, origin, ...names],
  }),
  parse: (reply) => {
    const numbers = (reply as unknown[]).map(Number);
    return { existed: numbers[0]!, versions: numbers.slice(1) };
  },
});
