import type { StoredAppend } from '../../context/ports';
import { PUBLISH_EVENT_LUA } from '../event-wire';
import { NEXT_VERSION_LUA } from './lib';
import { defineScript } from './script';

/** How long an appended node stays fetchable for the sidecars that heard of it. */
export const LAST_APPENDED_TTL_MS = 60_000;

/**
 * Write-through APPEND of a node. Revokes outstanding fill leases first, so a
 * fill that loaded the session before this node cannot land after it;
 * appends to the cached session when there is one. The event names the node
 * and the previous version (so a sidecar can tell whether its copy is
 * exactly the predecessor) but does not carry it: the node is kept for a
 * minute under the session's "last appended" key, where a sidecar that needs
 * it (to append in place, or for its Watch streams) fetches it.
 *
 * KEYS: meta, chunks, lease, last appended
 * ARGV: chunk, channel, origin, sid, node_json, node_id
 * Reply: {appended, version, previous_version, expires_at}.
 */
const LUA = `${NEXT_VERSION_LUA}${PUBLISH_EVENT_LUA}
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
redis.call('SET', KEYS[4], version .. '\\n' .. ARGV[5], 'PX', ${LAST_APPENDED_TTL_MS})
publish_event(ARGV[2], ARGV[3], now_ms, {e = 'n', s = ARGV[4], i = ARGV[6], v = version, p = previous or '0'})
return {appended, version, previous or '0', meta[2] or '0'}
`;

export const sessionAppend = defineScript({
  name: 'ccSessionAppend',
  lua: LUA,
  args: ({ keys, origin }, sessionId: string, chunk: Buffer, nodeJson: string, nodeId: string) => ({
    keys: [keys.sessionMeta(sessionId), keys.sessionChunks(sessionId), keys.lease({ kind: 'session', id: sessionId }), keys.sessionLastAppended(sessionId)],
    argv: [chunk, keys.channel, origin, sessionId, nodeJson, nodeId],
  }),
  parse: (reply): StoredAppend => {
    const [appended, version, previousVersion, expiresAt] = (reply as unknown[]).map(Number) as [number, number, number, number];
    return { appended: appended === 1, version, previousVersion, expiresAt };
  },
});
