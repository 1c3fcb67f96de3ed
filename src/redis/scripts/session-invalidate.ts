import { PUBLISH_EVENT_LUA } from '../event-wire';
import { NEXT_VERSION_LUA } from './lib';
import { defineScript } from './script';

/**
 * INVALIDATE of a session: removes it and its fill lease, and announces a
 * tombstone version.
 *
 * KEYS: meta, chunks, lease
 * ARGV: channel, origin, sid
 * Reply: {existed, version}.
 */
const LUA = `${NEXT_VERSION_LUA}${PUBLISH_EVENT_LUA}
local previous = redis.call('HGET', KEYS[1], 'v')
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local version, now_ms = next_version(previous)
publish_event(ARGV[1], ARGV[2], now_ms, {e = 's', c = 'inv', s = ARGV[3], v = version})
if previous then return {1, version} end
return {0, version}
`;

export const sessionInvalidate = defineScript({
  name: 'ccSessionInvalidate',
  lua: LUA,
  args: ({ keys, origin }, sessionId: string) => ({
    keys: [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId), keys.lease({ kind: 'session', id: sessionId })],
    argv: [keys.channel, origin, sessionId],
  }),
  parse: (reply) => {
    const [existed, version] = (reply as unknown[]).map(Number) as [number, number];
    return { existed: existed === 1, version };
  },
});
