import { PUBLISH_EVENT_LUA } from '../event-wire';
import { defineScript } from './script';

/**
 * Announces that the namespace was invalidated as a whole (its keys were
 * deleted by SCAN before this runs): every sidecar that hears it flushes its
 * L1 and resyncs its watchers; one that was not subscribed does the same
 * when it re-subscribes.
 *
 * KEYS: none
 * ARGV: channel, origin
 * Reply: 1.
 */
const LUA = `${PUBLISH_EVENT_LUA}
local t = redis.call('TIME')
publish_event(ARGV[1], ARGV[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), {e = 'f'})
return 1
`;

export const namespaceFlushed = defineScript({
  name: 'ccNamespaceFlushed',
  lua: LUA,
  args: ({ keys, origin }) => ({ keys: [], argv: [keys.channel, origin] }),
  parse: () => undefined,
});
